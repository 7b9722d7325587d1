"""One job of the A/B protocol (design spec sections 7-8): a (task, seed, variant) run.

Every job of a task reads the same offline dataset (collected once, under a file lock), builds its
agent after seeding with the job seed (identical encoder, reward head, actor and critic initialisation
across variants), pretrains the world model on identically ordered batches, then extracts a policy
with identical batches and evaluates it on identical initial states. Only the dynamics differ.
With ``train.policy_seeds`` = N > 1 it extracts N - 1 further policies from the same world model, each with
its own seed, into ``<run>/policy<k>``, evaluated on the first one's initial states; the report averages them.

Run directory: ``<root>/runs/<task>/<setting>/<variant>/seed<seed>`` where ``setting`` names the
shared overrides of a sweep (e.g. ``alg.horizon=10``; ``default`` when none) and ``variant`` is
``baseline`` or ``flow-K<integrate_steps>-<fm_tau_sampling>[-<latent_projection>][-detached]``. Flow-only
knobs are not part of the setting, so the baseline of a flow sweep is run once per seed and shared by every flow setting.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from pwm.algorithms.build import alg_changes, build_pwm, is_flow_config, variant_name
from pwm.data.buffer import EpisodeBuffer
from pwm.data.collect import CollectConfig, collect_dataset, collect_portably, numerics_name
from pwm.data.tdmpc2_format import dataset_fingerprint, load_dataset
from pwm.envs.rollout import EVAL_SEED_OFFSET, evaluate_policy, random_policy
from pwm.envs.tasks import make_env
from pwm.envs.wrappers import TaskEnv
from pwm.experiments.runs import POLICY_FOLDER, model_size
from pwm.experiments.status import JobStatus, complete_summary, job_status, measured_rates
from pwm.training.loops import check_offline_agent, pretrain_world_model, train_offline, world_model_meta
from pwm.training.settings import OfflineSettings, PretrainSettings
from pwm.utils.common import (atomic_write_text, cpu_model, file_lock, git_commit, seed_everything,
                              set_matmul_precision, set_threads)
from pwm.utils.extras import check_optional_extras

FLOW_KNOBS = ("integrate_steps", "fm_tau_sampling", "latent_projection", "detach_velocity_target", "endpoint_loss_coef",
              "detach_flow_matching_latents")
#: Reset seeds of the random-policy reference episodes: those of the evaluations (EVAL_SEED_OFFSET + seed + i).
RANDOM_REFERENCE_SEED = EVAL_SEED_OFFSET


def variant_alg(alg_cfg: DictConfig, flow_knobs: DictConfig | dict) -> DictConfig:
    """The job's alg config: ``flow_knobs`` (non-null ones) applied to a flow world model, ignored otherwise."""
    alg = OmegaConf.create(OmegaConf.to_container(alg_cfg, resolve=True))
    if is_flow_config(alg):
        for key in FLOW_KNOBS:
            if flow_knobs.get(key) is not None:
                alg.world_model_config[key] = flow_knobs[key]
    return alg


def variant_label(alg_cfg: DictConfig) -> str:
    """``baseline`` or ``flow-K<integrate_steps>-<fm_tau_sampling>``, plus ``-<latent_projection>``,
    ``-detached`` (``detach_velocity_target``), ``-fieldonly`` (``detach_flow_matching_latents``) and
    ``-endpoint<coef>`` (``endpoint_loss_coef``) when set (run folders of the spec's flow keep their names)."""
    if variant_name(alg_cfg) == "baseline":
        return "baseline"
    wm = alg_cfg.world_model_config
    label = f"flow-K{wm.get('integrate_steps', 4)}-{wm.get('fm_tau_sampling', 'uniform')}"
    projection = wm.get("latent_projection", "none")
    label = label if projection == "none" else f"{label}-{projection}"
    label = f"{label}-detached" if wm.get("detach_velocity_target", False) else label
    label = f"{label}-fieldonly" if wm.get("detach_flow_matching_latents", False) else label
    endpoint = float(wm.get("endpoint_loss_coef", 0.0))
    return f"{label}-endpoint{endpoint:g}" if endpoint else label


def ensure_dataset(cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
    """Collect the task's shared dataset once (``cfg.data``), whoever asks first, and measure the
    random policy's evaluation reward on the task (the bar a learned policy must clear).

    Returns the dataset folder and the facts a run records about it, all kept in the folder: the
    random-policy reference (``random_reward``, ``random_reward_std``, ``random_success``, ``episodes``)
    and ``data_sha256``, the :func:`~pwm.data.tdmpc2_format.dataset_fingerprint` (runs compared with each
    other must have read the same data). A folder collected with other ``cfg.data`` settings is an error
    rather than silently reused. With ``cfg.data.portable_numerics`` the collection runs in a fresh process
    under :data:`~pwm.data.collect.NUMERICS_ENVS` (``true``: ``vendor_neutral``, the same data whatever the CPU).
    """
    data_dir = Path(cfg.data.dir)
    recipe = {"task": cfg.task, "policy": cfg.data.policy, "seed": int(cfg.data.seed),
              **({"sac_steps": int(cfg.data.sac_steps)} if cfg.data.policy == "sac" else
                 {"episodes": int(cfg.data.episodes)})}
    extras = {key: int(cfg.data.get(key) or 0) if cfg.data.policy == "sac" else 0
              for key in ("sac_final_policy_episodes", "random_mix_episodes")}
    stop_return = cfg.data.get("sac_stop_return") if cfg.data.policy == "sac" else None
    # recorded only when used, so datasets collected before these options still match
    recipe.update({key: episodes for key, episodes in extras.items() if episodes})
    if stop_return is not None:
        recipe["sac_stop_return"] = float(stop_return)
    numerics = numerics_name(cfg.data.get("portable_numerics", False))
    if numerics is not None:  # intel_avx2 records true: its datasets were collected before the numerics had names
        recipe["portable_numerics"] = True if numerics == "intel_avx2" else numerics
    with file_lock(data_dir.parent / f".{data_dir.name}.lock"):
        recipe_path, reference_path = data_dir / "collect.json", data_dir / "random_policy.json"
        fingerprint_path = data_dir / "fingerprint.json"
        if list(data_dir.glob("*.pt")):
            found = json.loads(recipe_path.read_text()) if recipe_path.exists() else None
            if found is not None and found != recipe:
                raise ValueError(f"{data_dir} was collected with {found}, but data is now {recipe}; "
                                 "use another general.root or data.dir, or delete the folder")
        else:
            # the other jobs wait for this dataset, so collection may use their cores too (data.threads)
            collect = CollectConfig(
                tasks=[cfg.task], out_dir=str(data_dir), episodes=cfg.data.episodes, episodes_per_file=10_000,
                policy=cfg.data.policy, sac_steps=cfg.data.sac_steps, **extras, sac_stop_return=stop_return,
                seed=cfg.data.seed, threads=cfg.data.threads)
            if numerics is not None:
                collect_portably(collect, numerics)
            else:
                job_threads = torch.get_num_threads()
                try:
                    collect_dataset(collect)
                finally:
                    torch.set_num_threads(job_threads)
            atomic_write_text(json.dumps(recipe, indent=2), recipe_path)
        if not fingerprint_path.exists():  # also for a folder collected before fingerprints were recorded
            atomic_write_text(json.dumps({"data_sha256": dataset_fingerprint(data_dir)}, indent=2), fingerprint_path)
        if not reference_path.exists():
            env = make_env(cfg.task, seed=RANDOM_REFERENCE_SEED)
            metrics, _ = evaluate_policy(env, random_policy(env.act_dim, np.random.default_rng(0)),
                                         int(cfg.data.random_episodes), seed=RANDOM_REFERENCE_SEED)
            env.close()
            reference = {"random_reward": metrics["eval/episode_reward"],
                         "random_reward_std": metrics["eval/episode_reward_std"],
                         "random_success": metrics["eval/success"], "episodes": int(cfg.data.random_episodes)}
            atomic_write_text(json.dumps(reference, indent=2), reference_path)
        return data_dir, {**json.loads(reference_path.read_text()), **json.loads(fingerprint_path.read_text())}


def check_same_data(task_runs: Path, data_sha256: str, data_dir: Path) -> None:
    """Refuse to start a job whose dataset differs from the one the finished runs of its task read.

    ``task_runs``: ``<root>/runs/<task>``; its ``summary.json`` files name their dataset's fingerprint. A
    study resumed on another machine re-collects its data, and its new runs would otherwise be paired with
    runs on other data (the report would then call the comparison invalid, after the compute is spent).
    Finished runs that did not record a fingerprint (from before it was recorded) cannot be matched either.
    """
    for summary_path in sorted(task_runs.rglob("summary.json")):
        summary = json.loads(summary_path.read_text())
        recorded = summary.get("data_sha256")
        if recorded != data_sha256:
            found = f"read dataset {recorded[:12]}" if recorded else "did not record which dataset it read"
            made_on = f" (made on {summary['cpu']}; this job runs on {cpu_model()})" if summary.get("cpu") else ""
            raise ValueError(
                f"{summary_path.parent} {found}{made_on}, but this job's dataset {data_dir} is {data_sha256[:12]}: "
                "runs compared with each other must read the same data (data.portable_numerics=true makes a recipe "
                "collect the same data whatever the CPU: pwm.data.collect.NUMERICS_ENVS); move that task's runs "
                "aside or use another general.root")


def run_dir_for(cfg: DictConfig, alg: DictConfig) -> Path:
    return Path(cfg.general.root) / "runs" / cfg.task / (cfg.setting or "default") / variant_label(alg) / f"seed{cfg.seed}"


def check_run_model(run_dir: Path, alg: DictConfig, pretrain: PretrainSettings | None = None,
                    record: bool = True) -> None:
    """Refuse a run folder that holds (or held) a run of other network sizes, other algorithm settings or,
    when ``pretrain`` is given, another world-model pretraining budget. ``record=False`` only checks (a status
    query), without writing ``job.json``.

    The folder name says task, setting, variant and seed but not the model size, the ``alg`` settings
    left at their defaults or a preset's pretraining cap, so without this a job of ``alg=pwm_5M``, one run
    after a default changed, or one whose task's cap was doubled would return the older run as its own (or
    resume its pretraining under another learning-rate schedule). Size, settings and budget are recorded in
    ``job.json`` when a job starts; older runs record the first two in their summary (sizes only in older
    ``job.json`` files) and the budget as the iterations they pretrained for.
    """
    resolved = OmegaConf.to_container(alg, resolve=True)
    current = model_size({"alg": resolved})
    job_path, summary_path = run_dir / "job.json", run_dir / "summary.json"
    job = json.loads(job_path.read_text()) if job_path.exists() else {}
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    recorded = job.get("model") or (model_size(summary) if summary else None)
    if recorded not in (None, "unknown") and recorded != current:
        raise ValueError(f"{run_dir} holds a run of model {recorded}, but this job's alg is {current}; "
                         "use another general.root, or delete the folder")
    recorded_alg = job.get("alg") or summary.get("alg")
    changes = alg_changes(recorded_alg, resolved) if recorded_alg else []
    if changes:
        raise ValueError(f"{run_dir} holds a run of other alg settings ({'; '.join(changes)}); "
                         "use another general.root, or delete the folder")
    budget = pretrain_budget(pretrain) if pretrain is not None else None
    if budget is not None:
        _check_pretrain_budget(run_dir, budget, job.get("pretrain"), summary.get("pretrain_iterations"))
    if record and ("alg" not in job or (budget is not None and "pretrain" not in job)):
        entry = {"model": current, "alg": resolved, **({"pretrain": budget} if budget is not None else {})}
        atomic_write_text(json.dumps(entry, indent=2), job_path)


#: The pretraining settings that make a different world model (not how often it is logged or checkpointed).
PRETRAIN_BUDGET_KEYS = ("iterations", "min_iterations", "lr_schedule", "lr_final", "eval_every", "window",
                        "patience", "min_improvement", "heldout_windows", "anneal_iterations")
#: What a ``job.json`` written before a key was recorded ran with.
PRETRAIN_BUDGET_BEFORE_RECORDED = {"anneal_iterations": 0}


def pretrain_budget(settings: PretrainSettings) -> dict[str, Any]:
    """The part of ``settings`` that ``job.json`` records and :func:`check_run_model` compares."""
    return {key: getattr(settings, key) for key in PRETRAIN_BUDGET_KEYS}


def _check_pretrain_budget(run_dir: Path, budget: dict[str, Any], recorded: dict[str, Any] | None,
                           pretrained_iterations: int | None) -> None:
    if recorded is not None:
        recorded = {**PRETRAIN_BUDGET_BEFORE_RECORDED, **recorded}
        changes = [f"pretrain.{key}: {recorded.get(key)!r} -> {budget[key]!r}" for key in PRETRAIN_BUDGET_KEYS
                   if recorded.get(key) != budget[key]]
    elif pretrained_iterations is not None:  # a finished run from before job.json recorded its budget
        floor = min(budget["min_iterations"], budget["iterations"])
        fits = floor <= pretrained_iterations <= budget["iterations"]
        changes = [] if fits else [f"it pretrained for {pretrained_iterations} iterations, this job's "
                                   f"pretrain.iterations={budget['iterations']}, min_iterations={budget['min_iterations']}"]
    else:
        changes = []
    if changes:
        raise ValueError(f"{run_dir} holds a run of another pretraining budget ({'; '.join(changes)}); "
                         "use another general.root, or move the folder")


def with_variant_cap(cfg: DictConfig, alg: DictConfig) -> DictConfig:
    """``cfg`` with ``pretrain.iterations`` for the job's variant (``min_iterations`` and other interpolations
    of it follow). A preset's cap may be one number or ``{baseline: N, flow: M}`` (e.g. a task's entry of
    ``pretrain.iterations_by_task``): the half-budget check can split the variants at one cap, one model
    overtrained while the other has not converged, and the check's rule then moves each variant's cap its own way.
    ``cfg`` is returned as it is when the cap is one number."""
    caps = cfg.pretrain.iterations
    if not OmegaConf.is_dict(caps):
        return cfg
    where = f"pretrain.iterations (task {cfg.task})"
    if set(caps) != {"baseline", "flow"}:
        raise ValueError(f"{where} per variant needs exactly the keys baseline and flow, got {sorted(caps)}")
    cap = caps[variant_name(alg)]
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"{where}.{variant_name(alg)} must be a positive number of iterations, got {cap!r}")
    resolved = copy.deepcopy(cfg)
    with open_dict(resolved):
        resolved.pretrain.iterations = cap
    return resolved


def half_budget_seeds(cfg: DictConfig) -> list[int]:
    """``pretrain.half_budget_seeds``: the seeds whose jobs also run :func:`pretrain_half_budget`."""
    seeds = cfg.pretrain.get("half_budget_seeds")
    seeds = [] if seeds is None else seeds
    if not (OmegaConf.is_list(seeds) or isinstance(seeds, list)) or not all(isinstance(seed, int) for seed in seeds):
        raise ValueError(f"pretrain.half_budget_seeds must be a list of seeds, e.g. [0], got {seeds!r}")
    return list(seeds)


def pretrain_half_budget(cfg: DictConfig, alg: DictConfig, data_dir: Path, settings: PretrainSettings,
                         run_dir: Path) -> dict[str, Any]:
    """The convergence check of a job whose seed is in ``pretrain.half_budget_seeds``: a second world model
    pretrained like the job's own (same seed, initial weights, batches and held-out windows, the learning-rate
    schedule over its own cap) for half the cap, in ``<run_dir>/pretrain_half`` (resumable).

    Why: under a decaying rate the held-out error's trend at the end says nothing about convergence (it
    falls until the rate is gone), and at a constant rate its noise hides the trend; what one more
    doubling of the budget buys is measured instead, one doubling back. ``report.convergence=half_budget``
    compares the two runs' ``heldout_error_final`` (:func:`pwm.experiments.verdict.half_budget_reasons`).

    Returns the summary fields ``pretrain_half_iterations``, ``pretrain_half_elapsed_s`` and
    ``pretrain_half_heldout_error_final``.
    """
    half = dataclasses.replace(settings, iterations=max(1, settings.iterations // 2),
                               min_iterations=min(settings.min_iterations, max(1, settings.iterations // 2)))
    seed_everything(cfg.seed)
    buffer = load_dataset(data_dir, alg.horizon, num_tasks=1, heldout_fraction=cfg.pretrain.heldout_fraction)
    agent = build_pwm(alg, buffer.obs_dim, buffer.act_dim, device=cfg.device)
    summary = pretrain_world_model(agent, buffer, run_dir / "pretrain_half", half, alg.batch_size, cfg.seed,
                                   world_model_meta(agent, alg, None),
                                   desc=f"{cfg.task} {variant_label(alg)} wm (half budget)")
    return {"pretrain_half_iterations": summary["iterations"], "pretrain_half_elapsed_s": summary["train_elapsed_s"],
            "pretrain_half_heldout_error_final": summary["heldout_error_final"]}


def ab_job_status(cfg: DictConfig, rates: dict[tuple[str, str], dict[str, float]] | None = None) -> JobStatus:
    """What :func:`run_ab_job` would do with ``cfg`` and how long it would take, without doing any of it
    (``status_only=true``; :mod:`pwm.experiments.status`). ``rates`` default to those measured under the root."""
    alg = variant_alg(cfg.alg, cfg.flow)
    cfg = with_variant_cap(cfg, alg)
    run_dir = run_dir_for(cfg, alg)
    status = job_status(run_dir, task=cfg.task, setting=cfg.setting or "default",
                        variant=variant_label(alg), seed=int(cfg.seed),
                        model=model_size({"alg": OmegaConf.to_container(alg, resolve=True)}),
                        pretrain_iterations=int(cfg.pretrain.iterations), policy_iterations=int(cfg.train.iterations),
                        half_budget_check=cfg.seed in half_budget_seeds(cfg),
                        rates=measured_rates(cfg.general.root) if rates is None else rates,
                        policies=OfflineSettings.from_cfg(cfg.train, "train").policy_seeds)
    try:  # the job would stop here: its folder holds another run, or policies of other policy settings
        check_run_model(run_dir, alg, PretrainSettings.from_cfg(cfg.pretrain, "pretrain"), record=False)
        check_policy_settings(run_dir, OfflineSettings.from_cfg(cfg.train, "train"), alg, int(cfg.train.iterations))
    except ValueError as refusal:
        status.state, status.note, status.remaining_s = "refused", str(refusal), None
    return status


def run_ab_job(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip if complete) one A/B job; returns the summary of its first policy (also in
    summary.json), with ``policy_final_rewards`` listing every policy's last evaluation when
    ``train.policy_seeds`` > 1."""
    check_optional_extras(cfg)  # before the dataset is collected, as are the settings' checks
    alg = variant_alg(cfg.alg, cfg.flow)
    cfg = with_variant_cap(cfg, alg)
    train_settings = OfflineSettings.from_cfg(cfg.train, "train")
    pretrain_settings = PretrainSettings.from_cfg(cfg.pretrain, "pretrain")
    run_dir = run_dir_for(cfg, alg)
    set_threads(cfg.threads)
    set_matmul_precision(cfg.matmul_precision)
    commit = git_commit()  # the code this process loaded: the checkout may move during hours of pretraining
    with file_lock(run_dir / ".lock"):
        check_run_model(run_dir, alg, pretrain_settings)
        summary = complete_summary(run_dir, cfg.train.iterations)
        further = [index for index in range(1, train_settings.policy_seeds)
                   if complete_summary(run_dir / POLICY_FOLDER.format(index=index), cfg.train.iterations) is None]
        check_policy_settings(run_dir, train_settings, alg, cfg.train.iterations)
        if summary is not None and not further:
            return _with_policy_rewards(summary, run_dir, train_settings.policy_seeds)
        data_dir, data_facts = ensure_dataset(cfg)
        check_same_data(Path(cfg.general.root) / "runs" / cfg.task, data_facts["data_sha256"], data_dir)
        if summary is None:
            summary, buffer, eval_env = _first_policy(cfg, alg, data_dir, data_facts, run_dir, commit)
        else:
            eval_env = make_env(cfg.task, seed=cfg.seed + EVAL_SEED_OFFSET)
            buffer = load_dataset(data_dir, alg.horizon, num_tasks=1, heldout_fraction=cfg.pretrain.heldout_fraction)
        for index in further:  # each from the pretrained world model again, with its own policy seed
            policy_seed = cfg.seed + index * POLICY_SEED_STRIDE
            seed_everything(policy_seed)
            agent = build_pwm(alg, buffer.obs_dim, buffer.act_dim, device=cfg.device)
            pretrain_world_model(agent, buffer, run_dir / "pretrain", pretrain_settings, alg.batch_size, cfg.seed,
                                 world_model_meta(agent, alg, None), desc=f"{cfg.task} {summary['variant']} wm")
            agent.scale_model_lr(cfg.train.finetune_lr_scale)
            run_info = {key: value for key, value in summary.items() if key in RUN_INFO_KEYS or key in data_facts}
            run_info.update({"policy_index": index, "policy_seed": policy_seed, "commit": commit,
                             "eval_episodes": int(cfg.train.eval_episodes)})
            train_offline(agent, buffer, eval_env, run_dir / POLICY_FOLDER.format(index=index), train_settings,
                          alg.batch_size, policy_seed, run_info=run_info,
                          desc=f"{cfg.task} {summary['variant']} s{cfg.seed} policy {index}",
                          time_offset_s=float(summary["pretrain_elapsed_s"]), eval_seed=cfg.seed)
        return _with_policy_rewards(summary, run_dir, train_settings.policy_seeds)


#: Policy ``k`` of a job with seed ``s`` trains with seed ``s + k * POLICY_SEED_STRIDE`` (batches, actor and
#: critic initialisation, action noise); far from the job seeds of a study, so no two policies share one.
POLICY_SEED_STRIDE = 1000
#: The summary fields a further policy copies from its run's first one (what its world model is).
RUN_INFO_KEYS = ("task", "seed", "setting", "variant", "is_flow", "expected_iterations", "pretrain_elapsed_s",
                 "pretrain_iterations", "pretrain_converged", "pretrain_plateau_iterations", "pretrain_heldout_error",
                 "pretrain_heldout_error_final", "finetune_wm", "cpu", "matmul_precision", "alg")


def policy_setting_changes(summary: dict[str, Any], settings: OfflineSettings, alg: DictConfig) -> list[str]:
    """The ``train`` settings that shape a policy's result in which a finished policy (its ``summary``) differs
    from ``settings``, as ``"train.key: recorded -> current"``: its evaluation's initial states
    (``eval_episodes``) and its batch (``batch_size``; a summary from before ``policy_batch_size`` was recorded
    trained on ``alg.batch_size``). A value the summary does not record counts as changed (``unrecorded``)."""
    recorded_alg = summary.get("alg") or {}
    recorded = {"eval_episodes": summary.get("eval_episodes"),
                "batch_size": summary.get("policy_batch_size", recorded_alg.get("batch_size"))}
    current = {"eval_episodes": settings.eval_episodes, "batch_size": settings.policy_batch_size(alg.batch_size)}
    return [f"train.{key}: {'unrecorded' if recorded[key] is None else recorded[key]} -> {value}"
            for key, value in current.items() if recorded[key] != value]


def check_policy_settings(run_dir: Path, settings: OfflineSettings, alg: DictConfig, expected_iterations: int) -> None:
    """Refuse a run whose finished policies (its first, ``policy<k>`` up to ``settings.policy_seeds``) were extracted
    under other policy settings (:func:`policy_setting_changes`): the job would average its new policies with them,
    or return them as its own. The world model (``pretrain/``) stays valid; the message says how to keep it."""
    folders = [run_dir, *(run_dir / POLICY_FOLDER.format(index=index) for index in range(1, settings.policy_seeds))]
    for folder in folders:
        summary = complete_summary(folder, expected_iterations)
        changes = policy_setting_changes(summary, settings, alg) if summary is not None else []
        if changes:
            raise ValueError(f"{folder} holds a policy extracted under other policy settings ({'; '.join(changes)}); "
                             "move its summary.json, metrics.csv and checkpoint.pt out of the runs folder (and out of "
                             "the archive a study restores from, <report dir>/runs) to extract it again from the same "
                             "world model (pretrain/ is kept)")


def _with_policy_rewards(summary: dict[str, Any], run_dir: Path, policies: int) -> dict[str, Any]:
    if policies == 1:
        return summary
    further = [json.loads((run_dir / POLICY_FOLDER.format(index=index) / "summary.json").read_text())
               for index in range(1, policies)]
    return {**summary, "policy_final_rewards": [summary["final_reward"], *(s["final_reward"] for s in further)]}


def _first_policy(cfg: DictConfig, alg: DictConfig, data_dir: Path, data_facts: dict[str, Any], run_dir: Path,
                  commit: str) -> tuple[dict[str, Any], EpisodeBuffer, TaskEnv]:
    """The job's world model (and, on a checked seed, its half-budget check) and its first policy, seeded with
    the job seed; returns its summary, the dataset and the evaluation environment."""
    pretrain_settings = PretrainSettings.from_cfg(cfg.pretrain, "pretrain")
    half_budget = {}
    if cfg.seed in half_budget_seeds(cfg):
        half_budget = pretrain_half_budget(cfg, alg, data_dir, pretrain_settings, run_dir)
    seed_everything(cfg.seed)  # after the check: the job's own run is the one it would be without
    eval_env = make_env(cfg.task, seed=cfg.seed + EVAL_SEED_OFFSET)
    buffer = load_dataset(data_dir, alg.horizon, num_tasks=1, heldout_fraction=cfg.pretrain.heldout_fraction)
    agent = build_pwm(alg, buffer.obs_dim, buffer.act_dim, device=cfg.device)
    check_offline_agent(agent)  # before pretraining spends minutes
    label = variant_label(alg)
    pretrain = pretrain_world_model(agent, buffer, run_dir / "pretrain", pretrain_settings, alg.batch_size, cfg.seed,
                                    world_model_meta(agent, alg, None), desc=f"{cfg.task} {label} wm")
    agent.scale_model_lr(cfg.train.finetune_lr_scale)
    run_info = {"task": cfg.task, "seed": cfg.seed, "setting": cfg.setting or "default", "variant": label,
                "is_flow": is_flow_config(alg), "expected_iterations": int(cfg.train.iterations),
                "pretrain_elapsed_s": pretrain["train_elapsed_s"],
                "pretrain_iterations": pretrain["iterations"], "pretrain_converged": pretrain["converged"],
                "pretrain_plateau_iterations": pretrain["plateau_iterations"],
                "pretrain_heldout_error": pretrain["heldout_error"],
                "pretrain_heldout_error_final": pretrain["heldout_error_final"], **half_budget,
                "finetune_wm": bool(cfg.train.train_world_model), "eval_episodes": int(cfg.train.eval_episodes),
                "commit": commit, "cpu": cpu_model(),
                **data_facts,
                "matmul_precision": cfg.matmul_precision,
                "alg": OmegaConf.to_container(alg)}
    summary = train_offline(agent, buffer, eval_env, run_dir, OfflineSettings.from_cfg(cfg.train, "train"),
                            alg.batch_size, cfg.seed, run_info=run_info, desc=f"{cfg.task} {label} s{cfg.seed}",
                            time_offset_s=pretrain["train_elapsed_s"])
    return summary, buffer, eval_env
