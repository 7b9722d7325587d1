"""Which world model is wrong where? Every run's world model scored on every run's policy episodes.

    python -m pwm.experiments.crosscheck \\
        runs/study/runs/reacher-easy/default/{baseline,flow-K4-uniform}/seed1/checkpoint.pt \\
        --data runs/study/data/reacher-easy

Rows: the episodes of each run's deterministic policy (the same reset seeds for every run) and, with
``--data``, held-out windows of a dataset (its last ``--heldout-fraction`` of episodes, the A/B's
split). Columns: each run's world model, scored with
:func:`~pwm.algorithms.diagnostics.world_model_quality` on ``--windows`` seeded windows of those episodes
(open-loop under the real actions): the normalised latent error after 1 and H steps and the
correlation of predicted and real rewards along the rollout.

How to read it. A policy that failed while its own model predicts its episodes badly, but well on the
data, went where its model is wrong: it exploited the model or never saw those states. If the other
run's model is wrong there too, those states are simply outside the data; if only its own model is,
that model generalises worse. A failed policy whose model is accurate on its episodes failed for
another reason (its critic, its optimisation). One caveat: the errors are normalised by the spread of
the target latents across the windows, so a policy that holds the system still has a small spread and
looks worse than it is (NaN when every window's latents are the same: a reacher parked on its target).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from pwm.algorithms.diagnostics import world_model_quality
from pwm.data.buffer import WindowBatch
from pwm.data.tdmpc2_format import load_dataset
from pwm.envs.rollout import EVAL_SEED_OFFSET, Episode, run_episode
from pwm.training.evaluation import TrainedAgent, agent_policy, episode_diagnostics, load_agent
from pwm.utils.common import atomic_write_text

METRICS = ("latent_nmse_1", "latent_nmse_H", "reward_corr_rollout")


def policy_episodes(trained: TrainedAgent, episodes: int, seed: int) -> list[Episode]:
    """``episodes`` deterministic-policy episodes of ``trained``, reset seeds ``seed + i``."""
    env = trained.make_env(seed)
    policy = agent_policy(trained.agent, trained.task_id, deterministic=True)
    try:
        return [run_episode(env, policy, seed=seed + i) for i in range(episodes)]
    finally:
        env.close()


def score(trained: TrainedAgent, source: list[Episode] | WindowBatch, windows: int, seed: int) -> dict[str, float]:
    """:func:`world_model_quality` of ``trained``'s world model on ``windows`` windows of episodes, or
    on a ready batch of windows (``obs [H + 1, B, obs_dim]``)."""
    if isinstance(source, WindowBatch):
        agent = trained.agent  # the batch's own task ids, as pretraining's held-out evaluation passes them
        metrics = world_model_quality(agent.wm, source.obs, source.action, source.reward,
                                      source.task if agent.wm.multitask else None, gamma=agent.gamma)
    else:
        # another run's policy made these episodes: the closed-loop gap would compare two policies
        metrics = episode_diagnostics(trained.agent, source, windows, seed, trained.task_id, deterministic_policy=False)
    return {name: metrics.get(f"wm_eval/{name}", float("nan")) for name in METRICS}


def crosscheck(models: dict[str, TrainedAgent], sources: dict[str, list[Episode] | WindowBatch], windows: int,
               seed: int) -> pd.DataFrame:
    """One row per (episode source, model): the model's :data:`METRICS` on the source's windows."""
    rows = []
    with torch.no_grad():
        for source_name, source in sources.items():
            for model_name, trained in models.items():
                rows.append({"episodes": source_name, "model": model_name, **score(trained, source, windows, seed)})
    return pd.DataFrame(rows)


def _labels(runs: list[TrainedAgent]) -> list[str]:
    labels = [f"{r.variant} seed {r.seed}" for r in runs]
    if len(set(labels)) < len(labels):  # the same variant and seed twice: tell them apart by position
        labels = [f"{i}: {label}" for i, label in enumerate(labels)]
    return labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint.pt of policy runs on one task")
    parser.add_argument("--data", default=None, help="dataset folder whose held-out windows get a row too")
    parser.add_argument("--heldout-fraction", type=float, default=0.1, help="held-out share of --data's episodes")
    parser.add_argument("--episodes", type=int, default=5, help="policy episodes per run")
    parser.add_argument("--windows", type=int, default=512, help="windows scored per episode source")
    parser.add_argument("--seed", type=int, default=100, help="first reset seed (after the evaluation offset)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the table as CSV here")
    cli = parser.parse_args(argv)
    if min(cli.episodes, cli.windows, cli.threads) < 1:
        parser.error("--episodes, --windows and --threads must be >= 1")
    if not 0.0 < cli.heldout_fraction < 1.0:
        parser.error(f"--heldout-fraction must be in (0, 1), got {cli.heldout_fraction}")
    torch.set_num_threads(cli.threads)
    runs = [load_agent(path, device="cpu") for path in cli.checkpoints]
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        raise ValueError(f"the checkpoints are of different tasks {sorted(tasks)}: cross-checking needs one task")
    horizons = {r.agent.horizon for r in runs}
    if len(horizons) > 1:
        raise ValueError(f"the runs have different horizons {sorted(horizons)}: their windows would differ")
    (horizon,) = horizons
    models = dict(zip(_labels(runs), runs))
    sources: dict[str, list[Episode] | WindowBatch] = {}
    for label, trained in models.items():
        episodes = policy_episodes(trained, cli.episodes, EVAL_SEED_OFFSET + cli.seed)
        mean_return = sum(float(e.reward[1:].sum()) for e in episodes) / len(episodes)
        sources[f"{label} policy (return {mean_return:.1f})"] = episodes
    if cli.data is not None:
        task_id = runs[0].task_id  # a multi-task dataset: only this task's episodes
        buffer = load_dataset(cli.data, horizon, tasks=None if task_id is None else [task_id],
                              heldout_fraction=cli.heldout_fraction)
        if buffer.num_heldout_windows == 0:
            raise ValueError(f"{cli.data}: no held-out windows at --heldout-fraction {cli.heldout_fraction}")
        sources["held-out data"] = buffer.sample(cli.windows, torch.Generator().manual_seed(cli.seed), split="heldout")
    table = crosscheck(models, sources, cli.windows, cli.seed)
    print(f"{runs[0].task}: each column's world model on each row's episodes (open loop, H = {horizon}; "
          "latent errors normalised, 0 = exact, 1 = the windows' mean)")
    wide = table.pivot(index="episodes", columns="model", values=list(METRICS)).reindex(list(sources))
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.3f}".format):
        print(wide.to_string())
    if cli.out:
        atomic_write_text(table.to_csv(index=False), Path(cli.out))


if __name__ == "__main__":
    main()
