"""The wiring of each training script, in one place: read the config, build the environment, data
and agent, call a loop of :mod:`pwm.training.loops`.

* :func:`run_singletask` (``train_singletask.py``): online PWM on one task.
* :func:`run_pretrain` (``pretrain_world_model.py``): multi-task world-model pretraining, under torchrun too.
* :func:`run_policy_extraction` (``train_multitask.py``): a policy from a pretrained world model.

(The A/B job, ``ab_compare.py``, is wired in :func:`pwm.experiments.ab.run_ab_job`.)"""

from __future__ import annotations

import csv
import gc
import io
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from pwm.algorithms.build import build_pwm, variant_name
from pwm.data.buffer import EpisodeBuffer
from pwm.data.tdmpc2_format import DatasetError, check_dataset_widths, load_dataset
from pwm.envs.tasks import UnknownTaskError, action_dim, make_env, task_set
from pwm.envs.rollout import EVAL_SEED_OFFSET
from pwm.envs.wrappers import PaddedEnv
from pwm.training.loops import pretrain_world_model, train_offline, train_online, world_model_meta
from pwm.training.settings import OfflineSettings, OnlineSettings, PretrainSettings
from pwm.utils.common import (atomic_write_text, file_lock, load_checkpoint, resolve_device, seed_everything,
                              set_matmul_precision, set_threads)
from pwm.utils.extras import check_optional_extras


def run_singletask(cfg: DictConfig) -> dict[str, Any]:
    """Online PWM on ``cfg.env`` (see ``scripts/cfg/config.yaml``)."""
    check_optional_extras(cfg)
    settings = OnlineSettings.from_cfg(cfg.train, "train")
    set_threads(cfg.threads)
    set_matmul_precision(cfg.matmul_precision)
    seed_everything(cfg.seed)
    env, eval_env = make_env(cfg.env, seed=cfg.seed), make_env(cfg.env, seed=cfg.seed + EVAL_SEED_OFFSET)
    agent = build_pwm(cfg.alg, env.obs_dim, env.act_dim, device=cfg.device)
    buffer = EpisodeBuffer(env.obs_dim, env.act_dim, cfg.alg.horizon)
    variant = variant_name(cfg.alg)
    run_info = {"task": cfg.env, "seed": cfg.seed, "variant": variant,
                "config": OmegaConf.to_container(cfg, resolve=True)}
    return train_online(agent, env, eval_env, buffer, cfg.general.run_dir, settings, cfg.alg.batch_size, cfg.seed,
                        run_info=run_info, desc=f"{cfg.env} {variant}")


def run_pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain a multi-task world model on ``cfg.general.data_dir`` (see ``scripts/cfg/pretrain.yaml``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) each process trains on its own batches and DDP averages
    the gradients (gloo on CPU, nccl on GPU); rank 0 logs and checkpoints.
    """
    check_optional_extras(cfg)
    settings = PretrainSettings.from_cfg(cfg.pretrain, "pretrain")
    set_threads(cfg.threads)
    set_matmul_precision(cfg.matmul_precision)
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = resolve_device(cfg.device)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    seed_everything(cfg.seed)
    tasks = task_set(cfg.task_set)
    buffer = load_dataset(cfg.general.data_dir, cfg.alg.horizon, num_tasks=len(tasks),
                          heldout_fraction=cfg.pretrain.heldout_fraction)
    action_dims = [action_dim(t) for t in tasks]
    too_wide = [(t, d) for t, d in zip(tasks, action_dims) if d > buffer.act_dim]
    if too_wide:
        raise DatasetError(f"{cfg.general.data_dir}: actions have {buffer.act_dim} dims but tasks need more: {too_wide}")
    present = sorted(set(buffer.task[: len(buffer)].unique().tolist()))
    check_dataset_widths(tasks, present, buffer.obs_dim, buffer.act_dim, f"{cfg.general.data_dir} ({cfg.task_set})")
    agent = build_pwm(cfg.alg, buffer.obs_dim, buffer.act_dim, tasks, action_dims, device=str(device))
    if world_size > 1:
        agent.wm_loss = DistributedDataParallel(
            agent.wm_loss, device_ids=[device.index] if device.type == "cuda" else None)
    meta = world_model_meta(agent, cfg.alg, cfg.task_set)
    try:
        summary = pretrain_world_model(agent, buffer, cfg.general.run_dir, settings, cfg.alg.batch_size,
                                       cfg.seed, meta, rank=rank,
                                       desc=f"pretrain {cfg.task_set} {variant_name(cfg.alg)}")
        if world_size > 1:
            _check_ranks_agree(agent.wm)
            # no rank tears the group down while another still waits on the last collective
            dist.barrier()
    finally:
        if world_size > 1:
            _release_ddp(agent)
            dist.destroy_process_group()
    return summary


def _release_ddp(agent: Any) -> None:
    """Unwrap ``agent.wm_loss`` and free its DDP wrapper while the process group is alive.

    Freed only after ``destroy_process_group`` (when ``run_pretrain`` returned), the wrapper's reducer
    held the last reference to the gloo group, so the group's destructor ran there with the GIL held.
    It joins gloo's worker threads, and one of them could still be releasing the tensors of the last
    collective, which needs the GIL: a deadlock, on a busy machine about one run in twenty (gdb:
    ``~Reducer -> ~ProcessGroupGloo -> thread::join`` against ``~AsyncBarrierWork -> take_gil``).
    ``destroy_process_group`` shuts the group's threads down first, so the group must end there.
    """
    if isinstance(agent.wm_loss, DistributedDataParallel):
        agent.wm_loss = agent.wm_loss.module
    gc.collect()


def _check_ranks_agree(module: torch.nn.Module) -> None:
    """Raise if the DDP ranks ended with different weights (they train on different batches, so only
    working gradient averaging keeps them equal)."""
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    position = torch.arange(len(flat), device=flat.device)
    signature = torch.stack([flat.sum(), flat.square().sum(), (flat * position).sum()])
    gathered = [torch.empty_like(signature) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, signature)
    if any(not torch.equal(other, gathered[0]) for other in gathered[1:]):
        raise RuntimeError(f"DDP ranks ended pretraining with different world-model weights: {gathered}")


def _check_checkpoint(meta: dict[str, Any], cfg: DictConfig, tasks: list[str], path: str) -> None:
    wanted = str(cfg.alg.world_model_config._target_)
    if meta["world_model_target"] != wanted:
        raise ValueError(
            f"{path}: world model is {meta['world_model_target']} but alg '{cfg.alg.world_model_config._target_}' "
            f"was asked for; pretrain with the same alg (or pick the matching alg=...)"
        )
    if meta["tasks"] != tasks:
        raise ValueError(f"{path}: pretrained on task set {meta.get('task_set')!r} "
                         f"({len(meta['tasks'])} tasks), but the config uses {cfg.task_set!r} ({len(tasks)} tasks)")


def append_result(path: str | Path, row: dict[str, Any]) -> None:
    """Append a row to a results CSV shared by many runs (file lock, then atomic rewrite)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        rows = []
        if path.exists():
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        rows.append({k: str(v) for k, v in row.items()})
        columns = list(dict.fromkeys(k for r in rows for k in r))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out.getvalue(), path)


def run_policy_extraction(cfg: DictConfig) -> dict[str, Any]:
    """Extract a policy for ``cfg.task`` from a pretrained world model on the task's offline data,
    optionally finetuning the world model, and evaluate it in the real environment."""
    check_optional_extras(cfg)
    settings = OfflineSettings.from_cfg(cfg.train, "train")
    set_threads(cfg.threads)
    set_matmul_precision(cfg.matmul_precision)
    tasks = task_set(cfg.task_set)
    if cfg.task not in tasks:
        raise UnknownTaskError(f"task {cfg.task!r} is not in task set {cfg.task_set!r}")
    task_id = tasks.index(cfg.task)
    env = make_env(cfg.task, seed=cfg.seed + EVAL_SEED_OFFSET)  # fails early, naming the task, if unavailable here
    state = load_checkpoint(cfg.general.checkpoint)
    if "meta" not in state:
        raise ValueError(f"{cfg.general.checkpoint}: not a world-model checkpoint of pretrain_world_model.py")
    meta = state["meta"]
    _check_checkpoint(meta, cfg, tasks, cfg.general.checkpoint)
    seed_everything(cfg.seed)
    agent = build_pwm(cfg.alg, meta["obs_dim"], meta["act_dim"], tasks, meta["action_dims"], device=cfg.device)
    try:
        agent.wm.load_state_dict(state["world_model"])
    except RuntimeError as exc:
        raise ValueError(f"{cfg.general.checkpoint}: world-model weights do not fit alg "
                         f"{cfg.alg.world_model_config._target_} with these sizes: {exc}") from exc
    agent.scale_model_lr(cfg.train.finetune_lr_scale)
    buffer = load_dataset(cfg.general.data_dir, cfg.alg.horizon, num_tasks=len(tasks), tasks=[task_id],
                          act_dim=meta["act_dim"], task_names=tasks)
    if buffer.obs_dim != meta["obs_dim"]:
        raise DatasetError(f"{cfg.general.data_dir}: obs have {buffer.obs_dim} dims, the world model expects "
                           f"{meta['obs_dim']}")
    eval_env = PaddedEnv(env, meta["obs_dim"], meta["act_dim"])
    variant = variant_name(cfg.alg)
    run_info = {"task": cfg.task, "task_id": task_id, "task_set": cfg.task_set, "seed": cfg.seed,
                "variant": variant, "finetune_wm": bool(cfg.train.train_world_model)}
    # what scripts/evaluate.py needs to rebuild the agent from the checkpoint alone
    agent_spec = {"alg": OmegaConf.to_container(cfg.alg, resolve=True), "obs_dim": meta["obs_dim"],
                  "act_dim": meta["act_dim"], "action_dims": list(meta["action_dims"])}
    summary = train_offline(agent, buffer, eval_env, cfg.general.run_dir, settings, cfg.alg.batch_size,
                            cfg.seed, task_id=task_id, run_info={**run_info, **agent_spec},
                            desc=f"{cfg.task} {variant}")
    append_result(cfg.general.results_csv, {
        **run_info, "final_reward": summary["final_reward"], "final_success": summary["final_success"],
        "best_reward": summary["best_reward"], "train_elapsed_s": round(summary["train_elapsed_s"], 3),
        "iterations": summary["iterations"], "run_dir": cfg.general.run_dir,
    })
    return summary
