"""One job of the A/B protocol (design spec sections 7-8): a (task, seed, variant) run.

Every job of a task reads the same offline dataset (collected once, under a file lock), builds its
agent after seeding with the job seed (identical encoder, reward head, actor and critic initialisation
across variants), pretrains the world model on identically ordered batches, then extracts a policy
with identical batches and evaluates it on identical initial states. Only the dynamics differ.

Run directory: ``<root>/runs/<task>/<setting>/<variant>/seed<seed>`` where ``setting`` names the
shared overrides of a sweep (e.g. ``alg.horizon=10``; ``default`` when none) and ``variant`` is
``baseline`` or ``flow-K<integrate_steps>-<fm_tau_sampling>``. Flow-only knobs are not part of the
setting, so the baseline of a flow sweep is run once per seed and shared by every flow setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pwm.algorithms.build import build_pwm, is_flow_config
from pwm.data.collect import collect_dataset
from pwm.data.tdmpc2_format import load_dataset
from pwm.envs.tasks import make_env
from pwm.training.loops import pretrain_world_model, train_offline, world_model_meta
from pwm.utils.common import file_lock, seed_everything

FLOW_KNOBS = ("integrate_steps", "fm_tau_sampling")


def variant_alg(alg_cfg: DictConfig, flow_knobs: DictConfig | dict) -> DictConfig:
    """The job's alg config: ``flow_knobs`` (non-null ones) applied to a flow world model, ignored otherwise."""
    alg = OmegaConf.create(OmegaConf.to_container(alg_cfg, resolve=True))
    if is_flow_config(alg):
        for key in FLOW_KNOBS:
            if flow_knobs.get(key) is not None:
                alg.world_model_config[key] = flow_knobs[key]
    return alg


def variant_label(alg_cfg: DictConfig) -> str:
    """``baseline`` or ``flow-K<integrate_steps>-<fm_tau_sampling>``."""
    if not is_flow_config(alg_cfg):
        return "baseline"
    wm = alg_cfg.world_model_config
    return f"flow-K{wm.get('integrate_steps', 4)}-{wm.get('fm_tau_sampling', 'uniform')}"


def ensure_dataset(cfg: DictConfig) -> Path:
    """Collect the task's shared dataset once (random policy, ``cfg.data``), whoever asks first."""
    data_dir = Path(cfg.data.dir)
    with file_lock(data_dir.parent / f".{data_dir.name}.lock"):
        if not list(data_dir.glob("*.pt")):
            collect_dataset(SimpleNamespace(
                tasks=[cfg.task], task_set=None, episodes=cfg.data.episodes, episodes_per_file=cfg.data.episodes,
                policy="random", checkpoints={}, deterministic=False, pad_obs_dim=None, pad_act_dim=None,
                seed=cfg.data.seed, out_dir=str(data_dir)))
    return data_dir


def run_dir_for(cfg: DictConfig, alg: DictConfig) -> Path:
    return Path(cfg.general.root) / "runs" / cfg.task / (cfg.setting or "default") / variant_label(alg) / f"seed{cfg.seed}"


def run_ab_job(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip if complete) one A/B job; returns its summary (also in summary.json)."""
    alg = variant_alg(cfg.alg, cfg.flow)
    run_dir = run_dir_for(cfg, alg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    with file_lock(run_dir / ".lock"):
        summary_path = run_dir / "summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            if summary.get("iterations") == cfg.train.iterations:
                return summary  # e.g. the shared baseline of a flow-only sweep, already run by another job
        data_dir = ensure_dataset(cfg)
        seed_everything(cfg.seed)
        eval_env = make_env(cfg.task, seed=cfg.seed + 10_000)
        buffer = load_dataset(data_dir, alg.horizon, num_tasks=1)
        agent = build_pwm(alg, buffer.obs_dim, buffer.act_dim, device=cfg.device)
        label = variant_label(alg)
        pretrain = pretrain_world_model(agent, buffer, run_dir / "pretrain", cfg.pretrain, alg.batch_size, cfg.seed,
                                        world_model_meta(agent, alg, None), desc=f"{cfg.task} {label} wm")
        agent.scale_model_lr(cfg.train.finetune_lr_scale)
        run_info = {"task": cfg.task, "seed": cfg.seed, "setting": cfg.setting or "default", "variant": label,
                    "is_flow": is_flow_config(alg), "expected_iterations": int(cfg.train.iterations),
                    "pretrain_elapsed_s": pretrain["train_elapsed_s"],
                    "pretrain_iterations": pretrain["iterations"], "finetune_wm": bool(cfg.train.train_world_model),
                    "alg": OmegaConf.to_container(alg)}
        return train_offline(agent, buffer, eval_env, run_dir, cfg.train, alg.batch_size, cfg.seed,
                             run_info=run_info, desc=f"{cfg.task} {label} s{cfg.seed}")
