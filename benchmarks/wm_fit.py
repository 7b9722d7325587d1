"""World models alone on one fixed replay: which dynamics objective keeps a latent space it can predict?

    python benchmarks/wm_fit.py <checkpoint.pt>                    # every variant, 3,000 updates each
    python benchmarks/wm_fit.py <checkpoint.pt> --variants baseline flow --iterations 500
    python benchmarks/wm_fit.py <checkpoint.pt> --variants flow-normalized --set wm_normalized_dynamics_coef=0.2,1,20

The replay is the episode buffer stored in a ``train_singletask.py`` checkpoint (an online run's own
data). Every 10th episode is held out. Each variant trains only its world model (no actor, no critic)
on the same replay, from the same seed, with one torch thread in its own process (``--jobs`` at
once), and is scored every ``--eval-every`` updates on the same 1,024 held-out windows by
:func:`pwm.algorithms.diagnostics.world_model_quality`, plus one figure of its own:

* ``one_step_vs_copy``: mean ``|next(z_s, a) - z_t|`` over mean ``|z_t - z_s|`` on held-out transitions.
  Below 1 the dynamics predicts the next latent better than "nothing moves" does; the normalised
  errors alone can look good in a latent space where nothing moves.

``--set KEY=V1,V2`` adds an alg override to every variant; each of its values is a run of its own,
named ``<variant> KEY=V``.

``--lr-schedule constant linear`` runs every variant under each world-model learning-rate schedule of
pretraining (``pretrain.lr_schedule``; ``linear`` decays the rate to ``--lr-final`` over ``--iterations``);
rows under ``linear`` are named ``<variant> lr=linear``.

``--frozen-encoder`` starts every variant from the checkpoint's own encoder (and task embedding) and
keeps it fixed: only the dynamics and the reward head train, so the variants' dynamics are compared on
one latent space that does not adapt to their objective (the checkpoint's world model must have the
size ``--alg`` gives). Rows are named ``<variant> frozen-encoder``.

Writes ``wm_fit.csv`` (one row per variant and evaluation), ``wm_fit.md`` (the last evaluation of
each variant, then ``wm_fit_notes.md`` from ``--out`` if there is one) and ``wm_fit.png`` (curves) to
``--out``. Policy learning
is not measured here: ``learning.py`` does that.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pwm.utils.common import atomic_savefig, die_with_parent

REPO = Path(__file__).resolve().parent.parent
CFG_DIR = REPO / "scripts" / "cfg" / "alg"
NORMALIZED = "world_model_config.normalize_dynamics_loss=true"
SPEC_DYNAMICS_LOSS = "world_model_config.normalize_dynamics_loss=false"  # the configs' default is the normalised one
#: name -> (alg config, overrides of it). ``flow-detached``: no gradient into z_s through the FM target;
#: ``flow-fieldonly-normalized``: the FM loss trains the field alone (``detach_flow_matching_latents``).
VARIANTS = {
    "baseline": ("{alg}", [SPEC_DYNAMICS_LOSS]),
    "flow": ("{alg}_flow", [SPEC_DYNAMICS_LOSS]),
    "flow-detached": ("{alg}_flow", [SPEC_DYNAMICS_LOSS, "world_model_config.detach_velocity_target=true"]),
    "baseline-normalized": ("{alg}", [NORMALIZED]),
    "flow-normalized": ("{alg}_flow", [NORMALIZED]),
    "flow-fieldonly-normalized": ("{alg}_flow", [NORMALIZED, "world_model_config.detach_flow_matching_latents=true"]),
}
COLUMNS = ["variant", "iteration", "seconds", "heldout_error", "latent_spread", "latent_nmse_1", "latent_nmse_H", "one_step_vs_copy",
           "reward_corr_1", "reward_corr_rollout", "reward_nmse_rollout"]
HELDOUT_FRACTION = 0.1
EVAL_WINDOWS = 1024


def replay_buffer(checkpoint: str | Path, horizon: int):
    """The checkpoint's episodes in a fresh :class:`~pwm.data.buffer.EpisodeBuffer` of ``horizon``, every
    10th episode held out."""
    from pwm.data.buffer import EpisodeBuffer
    from pwm.data.tdmpc2_format import heldout_mask
    from pwm.utils.common import load_checkpoint

    state = load_checkpoint(checkpoint)
    if "buffer" not in state:
        raise ValueError(f"{checkpoint} holds no replay buffer (keys: {sorted(state)}); pass a train_singletask checkpoint")
    stored = state["buffer"]
    steps, episodes = stored["obs"].shape[0], int(stored["num_episodes"])
    if episodes < 2 or steps % episodes:
        raise ValueError(f"{checkpoint}: {steps} stored steps do not split into {episodes} equal episodes")
    length = steps // episodes
    buffer = EpisodeBuffer(stored["obs"].shape[1], stored["action"].shape[1], horizon, capacity=steps)
    buffer.add_episodes(stored["obs"].view(episodes, length, -1), stored["action"].view(episodes, length, -1),
                        stored["reward"].view(episodes, length), stored["task"].view(episodes, length)[:, 0].long(),
                        heldout=heldout_mask(0, episodes, HELDOUT_FRACTION))
    return buffer


def sweep_settings(settings: list[str]) -> list[list[str]]:
    """``["a=1,2", "b=3"]`` -> ``[["a=1", "b=3"], ["a=2", "b=3"]]``: every combination of the values."""
    import itertools

    choices = []
    for setting in settings:
        key, sep, values = setting.partition("=")
        if not sep or not key or not values or "" in values.split(","):
            raise ValueError(f"--set {setting!r}: expected KEY=VALUE or KEY=V1,V2,...")
        choices.append([f"{key}={value}" for value in values.split(",")])
    return [list(combination) for combination in itertools.product(*choices)]


def variant_config(variant: str, alg: str, extra_overrides: list[str] = ()):
    """The alg config of ``variant`` at size ``alg`` with ``extra_overrides`` on top."""
    from hydra import compose, initialize_config_dir

    alg_name, overrides = VARIANTS[variant]
    with initialize_config_dir(config_dir=str(CFG_DIR), version_base="1.3"):
        return compose(alg_name.format(alg=alg), overrides=[*overrides, *extra_overrides])


#: The world-model parts ``--frozen-encoder`` takes from the checkpoint and keeps fixed.
FROZEN_MODULES = ("_encoder", "_task_emb")


def freeze_encoder(wm, checkpoint: str | Path) -> None:
    """Load the checkpoint's encoder (and task embedding) into ``wm`` and stop them training."""
    from pwm.utils.common import load_checkpoint

    stored = load_checkpoint(checkpoint).get("agent", {}).get("world_model")
    if stored is None:
        raise ValueError(f"--frozen-encoder: {checkpoint} holds no world model (agent.world_model)")
    for name in FROZEN_MODULES:
        if not hasattr(wm, name):
            continue
        module = getattr(wm, name)
        prefix = f"{name}."
        weights = {key[len(prefix):]: value for key, value in stored.items() if key.startswith(prefix)}
        try:
            module.load_state_dict(weights)
        except RuntimeError as error:
            raise ValueError(f"--frozen-encoder: {checkpoint}'s {name} does not fit this --alg's world model: {error}") from None
        module.requires_grad_(False)


def fit(checkpoint: str, variant: str, alg: str, iterations: int, eval_every: int, seed: int,
        extra_overrides: list[str] = (), frozen_encoder: bool = False, lr_schedule: str = "constant",
        lr_final: float = 1.0e-5) -> list[dict]:
    """Train one variant's world model on the replay; its evaluations as rows of :data:`COLUMNS`.

    ``extra_overrides`` are alg overrides applied after the variant's own; they name the row's variant.
    ``frozen_encoder``: see :func:`freeze_encoder`. ``lr_schedule``/``lr_final``: as ``pretrain.lr_schedule``
    and ``pretrain.lr_final``, over ``iterations``."""
    import torch

    from pwm.algorithms.build import build_pwm
    from pwm.algorithms.diagnostics import world_model_quality

    torch.set_num_threads(1)
    cfg = variant_config(variant, alg, extra_overrides)
    label = " ".join([variant, *extra_overrides, *(["frozen-encoder"] if frozen_encoder else []),
                      *([f"lr={lr_schedule}"] if lr_schedule != "constant" else [])])
    buffer = replay_buffer(checkpoint, int(cfg.horizon))
    torch.manual_seed(seed)
    agent = build_pwm(cfg, buffer.obs_dim, buffer.act_dim, device="cpu")
    if frozen_encoder:
        freeze_encoder(agent.wm, checkpoint)
    heldout = buffer.sample(EVAL_WINDOWS, torch.Generator().manual_seed(seed + 1), split="heldout")
    sampler = torch.Generator().manual_seed(seed)
    rows, start = [], time.perf_counter()
    for iteration in range(iterations + 1):
        if iteration % eval_every == 0 or iteration == iterations:
            quality = world_model_quality(agent.wm, heldout.obs, heldout.action, heldout.reward)
            row = {key: quality[f"wm_eval/{key}"] for key in COLUMNS if f"wm_eval/{key}" in quality}
            rows.append({"variant": label, "iteration": iteration, "seconds": time.perf_counter() - start,
                         **row, "one_step_vs_copy": quality["wm_eval/latent_vs_copy_1"]})
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                  flush=True)
        if iteration < iterations:
            if lr_schedule == "linear":
                agent.set_pretraining_progress(iteration / iterations, lr_final)
            batch = buffer.sample(int(cfg.batch_size), sampler)
            agent.update_world_model(batch.obs, batch.action, batch.reward)
    return rows


def render_markdown(frame, command: str, commit: str, notes: str = "") -> str:
    last = frame.sort_values("iteration", kind="stable").groupby("variant", sort=False).tail(1)
    lines = [
        "# World models alone on one replay", "",
        f"Command: `{command}` at commit `{commit}`.", "",
        "Only the world model trains (no actor, no critic), one torch thread, same replay, seed and batches "
        "for every variant; scores on held-out windows (every 10th episode). `spread`: mean std of the "
        "encoder's latents across states; `nmse`: latent error over the latents' variance after 1 and H "
        "open-loop steps; `step/copy`: one-step error over the distance between consecutive latents (below "
        "1: better than predicting no motion); reward columns: along H-step open-loop rollouts; `held-out`: "
        "the error pretraining's plateau rule watches (`wm_eval/heldout_error`).", "",
        "| variant | updates | minutes | held-out | spread | nmse 1 | nmse H | step/copy | reward corr | reward nmse |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in last.iterrows():
        lines.append(f"| {row.variant} | {row.iteration:,} | {row.seconds / 60:.1f} | {row.heldout_error:.4f} | "
                     f"{row.latent_spread:.4f} | "
                     f"{row.latent_nmse_1:.3f} | {row.latent_nmse_H:.3f} | {row.one_step_vs_copy:.3f} | "
                     f"{row.reward_corr_rollout:.3f} | {row.reward_nmse_rollout:.3f} |")
    if notes.strip():
        lines += ["", notes.strip()]
    lines += ["", "![held-out error and one-step error over copying's, per variant](wm_fit.png)"]
    return "\n".join(lines) + "\n"


def plot(frame, path: Path) -> None:
    """Held-out error (log scale) and one-step error over copying's against updates, one line per variant;
    written to a temporary file, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for variant, rows in frame.groupby("variant", sort=False):
        left.plot(rows.iteration, rows.heldout_error, label=variant)
        right.plot(rows.iteration, rows.one_step_vs_copy, label=variant)
    left.set_yscale("log")
    left.set_ylabel("held-out error (wm_eval/heldout_error)")
    right.set_ylabel("one-step error / copying's")
    for ax in (left, right):
        ax.set_xlabel("world-model updates")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def main() -> None:
    import pandas as pd

    from pwm.training.settings import PRETRAIN_LR_SCHEDULES
    from pwm.utils.common import atomic_write_text, git_commit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a train_singletask.py checkpoint whose replay buffer is the data")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--alg", default="pwm_small", help="world-model size (the flow twin is <alg>_flow)")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=V1,V2",
                        help="alg overrides for every variant; comma-separated values are swept")
    parser.add_argument("--frozen-encoder", action="store_true",
                        help="keep the checkpoint's encoder fixed; only dynamics and reward head train")
    parser.add_argument("--lr-schedule", nargs="+", default=["constant"], choices=PRETRAIN_LR_SCHEDULES,
                        help="world-model learning-rate schedules (each a run of every variant)")
    parser.add_argument("--lr-final", type=float, default=1.0e-5, help="the rate at the last update under linear")
    parser.add_argument("--jobs", type=int, default=2, help="variants at once (one torch thread each)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "wm_fit"))
    args = parser.parse_args()
    if args.iterations < 1 or args.eval_every < 1:
        parser.error("--iterations and --eval-every must be >= 1")
    if not args.lr_final > 0:
        parser.error(f"--lr-final must be > 0, got {args.lr_final}")
    try:
        settings = sweep_settings(args.set)
    except ValueError as error:
        parser.error(str(error))
    # a bad checkpoint, override or encoder fails here, before any process starts
    buffer = replay_buffer(args.checkpoint, 1)
    for variant in args.variants:
        for setting in settings:
            cfg = variant_config(variant, args.alg, setting)
        if args.frozen_encoder:
            from pwm.algorithms.build import build_pwm

            freeze_encoder(build_pwm(cfg, buffer.obs_dim, buffer.act_dim, device="cpu").wm, args.checkpoint)
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=die_with_parent) as pool:
        futures = [pool.submit(fit, args.checkpoint, variant, args.alg, args.iterations, args.eval_every, args.seed,
                               setting, args.frozen_encoder, schedule, args.lr_final)
                   for variant in args.variants for setting in settings for schedule in args.lr_schedule]
        frame = pd.DataFrame([row for future in futures for row in future.result()], columns=COLUMNS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(frame.to_csv(index=False), out / "wm_fit.csv")
    command = "python benchmarks/wm_fit.py " + " ".join(sys.argv[1:])
    notes = out / "wm_fit_notes.md"  # hand-written reading of the numbers, kept across reruns
    markdown = render_markdown(frame, command, git_commit(REPO) or "unknown", notes.read_text() if notes.exists() else "")
    plot(frame, out / "wm_fit.png")
    atomic_write_text(markdown, out / "wm_fit.md")
    print(markdown)


if __name__ == "__main__":
    main()
