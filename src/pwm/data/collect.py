"""Collect datasets: episodes of a random policy, a trained agent or a learning SAC agent, written in
TD-MPC2's layout."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pwm.data.tdmpc2_format import write_episodes
from pwm.envs.rollout import COLLECT_SEED_OFFSET, Episode, Policy, random_policy, run_episode
from pwm.envs.tasks import action_dim, make_env, set_obs_width, task_set
from pwm.utils.common import die_with_parent, set_threads

def pad_episode(episode: Episode, obs_dim: int, act_dim: int) -> Episode:
    """Zero-pad observations and actions to the multi-task widths (row 0 of action stays NaN)."""
    obs = torch.nn.functional.pad(episode.obs, (0, obs_dim - episode.obs.shape[1]))
    action = torch.nn.functional.pad(episode.action, (0, act_dim - episode.action.shape[1]))
    action[0] = float("nan")
    return Episode(obs, action, episode.reward, episode.success, episode.terminated)


COLLECT_POLICIES = ("random", "checkpoint", "sac")

#: Numerics a collection can run under in a fresh process (``data.portable_numerics``), by name: the environment
#: variables that pin the code paths of the libraries a SAC learner's float results come from. One rounding apart
#: and a learner's replay drifts to other data, so a study continued on another machine would pair runs on different
#: data. ATen's kernels follow the ISA alone (measured on an AMD EPYC, Zen 5: its AVX2 and AVX-512 kernels gave
#: identical replays) and NumPy's did not matter (an Intel Xeon's AVX512_SPR, AVX512_ICL and AVX2 paths: identical
#: replays), but MKL, which computes torch's float32 matrix products, picks its branch by vendor as well:
#:
#: * ``vendor_neutral``: MKL's COMPATIBLE branch (SSE2 without the approximation instructions rcpps/rsqrtps,
#:   whose results differ between Intel and compatible CPUs). With AUTO, the only branch MKL offers on non-Intel
#:   CPUs (oneMKL developer guide, "Specifying Code Branches"). It is the slowest: a 3k-step SAC replay took 69 s
#:   under it, 37 s under intel_avx2 and 30 s with no settings (Intel Xeon, one thread; ``python
#:   benchmarks/data_portability.py`` compares a CPU's data with the other CPUs' rows it has recorded).
#: * ``intel_avx2``: MKL's AVX2 branch in its strict reproducible mode (the portable numerics until 2026-12-07).
#:   MKL honours it on Intel CPUs only and silently uses its per-CPU AUTO branch elsewhere: a cheetah-run replay
#:   under it came out 867d613b on an AMD EPYC (Zen 5) and 79766d06 on an Intel Xeon (results/study_v2/NOTES.md).
NUMERICS_ENVS = {
    "vendor_neutral": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "intel_avx2": {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
#: What ``portable_numerics: true`` means.
PORTABLE_NUMERICS = "vendor_neutral"


def numerics_name(portable_numerics: bool | str | None) -> str | None:
    """The :data:`NUMERICS_ENVS` name a ``portable_numerics`` setting asks for: ``true`` is
    :data:`PORTABLE_NUMERICS`, ``false`` (or null) none (collect in this process), a name itself. Raises
    ``ValueError`` naming the setting and the names it takes."""
    if portable_numerics is None or portable_numerics is False:
        return None
    if portable_numerics is True:
        return PORTABLE_NUMERICS
    if portable_numerics in NUMERICS_ENVS:
        return str(portable_numerics)
    raise ValueError(f"portable_numerics={portable_numerics!r}: expected true, false or one of {list(NUMERICS_ENVS)}")


@dataclass
class CollectConfig:
    """What :func:`collect_dataset` collects (the keys of ``scripts/cfg/collect.yaml``)."""

    tasks: list[str]
    out_dir: str
    task_set: str | None = None
    episodes: int = 10
    episodes_per_file: int = 50
    policy: str = "random"
    sac_steps: int = 30_000
    sac_final_policy_episodes: int = 0
    sac_stop_return: float | None = None
    random_mix_episodes: int = 0
    checkpoints: dict[str, str] | None = None
    deterministic: bool = False
    pad_obs_dim: int | None = None
    pad_act_dim: int | None = None
    seed: int = 0
    threads: int | None = 1


def collect_portably(cfg: CollectConfig, numerics: str | None = PORTABLE_NUMERICS) -> None:
    """:func:`collect_dataset` in a fresh Python process under ``NUMERICS_ENVS[numerics]`` (None: under none of
    those settings, the code paths this CPU's libraries pick, to compare with).

    A fresh process because MKL and ATen read those settings once, when torch loads. Not for
    ``policy=checkpoint`` (its policies are objects of this process). Raises ``RuntimeError`` naming the
    exit code if the collection fails; its output (progress bars, errors) goes to this process's.
    """
    if cfg.policy == "checkpoint":
        raise ValueError("portable collection takes policy=random or policy=sac, not policy=checkpoint")
    if numerics is not None and numerics not in NUMERICS_ENVS:
        raise ValueError(f"numerics={numerics!r}: expected one of {list(NUMERICS_ENVS)} or None")
    env = {**os.environ, **NUMERICS_ENVS.get(numerics, {})}
    done = subprocess.run([sys.executable, "-m", "pwm.data.collect", json.dumps(dataclasses.asdict(cfg))], env=env,
                          preexec_fn=die_with_parent)
    if done.returncode != 0:
        raise RuntimeError(f"collecting {cfg.tasks} into {cfg.out_dir} failed (exit code {done.returncode}; "
                           "its error is printed above)")


def collect_dataset(cfg: CollectConfig, policies: dict[str, Policy] | None = None) -> list:
    """Collect episodes of every task in ``cfg.tasks`` and write TD-MPC2-format files.

    ``cfg.policy``: ``random`` or ``checkpoint`` run ``cfg.episodes`` episodes per task with uniform
    random actions or the trained policy ``policies[task]`` (built by the caller from
    ``cfg.checkpoints``, e.g. with :func:`pwm.training.evaluation.checkpoint_policy`); ``sac`` keeps
    the whole replay of a SAC agent that learns the task for ``cfg.sac_steps`` steps, or until one of
    its episodes returns ``cfg.sac_stop_return`` (data that covers everything from random to good
    behaviour, as TD-MPC2's datasets do), then
    ``cfg.sac_final_policy_episodes`` episodes of its final policy acting without learning. With ``sac`` or
    ``checkpoint``, ``cfg.random_mix_episodes`` episodes of uniform random actions follow that policy's
    episodes: actions the policy never took, so a world model learns what they do rather than
    extrapolating (a policy trained in the model otherwise finds rewards there that the task does not
    pay). Episodes of one task with equal length share files of
    up to ``episodes_per_file`` episodes, in the order they were collected (terminating tasks
    produce several lengths). Returns the written paths.
    """
    set_threads(cfg.threads)
    tasks = list(cfg.tasks)
    if cfg.task_set:
        members = task_set(cfg.task_set)
        outside = [t for t in tasks if t not in members]
        if outside:
            raise ValueError(f"tasks {outside} are not in task set {cfg.task_set!r}")
        task_ids = [members.index(t) for t in tasks]
    elif len(tasks) == 1:
        members, task_ids = tasks, [0]
    else:
        raise ValueError("collecting several tasks needs task_set (mt30 or mt80) to assign task ids")
    if cfg.policy not in COLLECT_POLICIES:
        raise ValueError(f"policy must be one of {COLLECT_POLICIES}, got {cfg.policy!r}")
    if cfg.sac_final_policy_episodes < 0:
        raise ValueError(f"sac_final_policy_episodes must be >= 0, got {cfg.sac_final_policy_episodes}")
    if cfg.sac_final_policy_episodes and cfg.policy != "sac":
        raise ValueError(f"sac_final_policy_episodes applies to policy=sac only, got policy={cfg.policy!r}")
    if cfg.sac_stop_return is not None and cfg.policy != "sac":
        raise ValueError(f"sac_stop_return applies to policy=sac only, got policy={cfg.policy!r}")
    if cfg.random_mix_episodes < 0:
        raise ValueError(f"random_mix_episodes must be >= 0, got {cfg.random_mix_episodes}")
    envs = [make_env(t, seed=cfg.seed) for t in tasks]
    # padded to the task set's widest task, as TD-MPC2's datasets are (so any set member fits a model)
    obs_dim = cfg.pad_obs_dim or set_obs_width(members)
    act_dim = cfg.pad_act_dim or max(action_dim(t) for t in members)
    for env in envs:
        if env.obs_dim > obs_dim or env.act_dim > act_dim:
            raise ValueError(f"{env.name}: dims ({env.obs_dim}, {env.act_dim}) exceed pad dims ({obs_dim}, {act_dim})")
    out_dir, written = Path(cfg.out_dir), []
    for task_index, (task, task_id, env) in enumerate(zip(tasks, task_ids, envs)):
        if cfg.policy == "sac":
            from pwm.data.sac import train_sac  # stable-baselines3 takes seconds to import: only when used

            collected = train_sac(task, cfg.seed, cfg.sac_steps, eval_every=0, eval_episodes=0, record_episodes=True,
                                  progress=f"collect {task} (SAC replay)",
                                  final_policy_episodes=cfg.sac_final_policy_episodes,
                                  stop_at_return=cfg.sac_stop_return)[1]
        else:
            if cfg.policy == "checkpoint":
                if task not in (policies or {}):
                    raise ValueError(f"policy=checkpoint but there is no policy (checkpoints entry) for task {task!r}")
                policy = policies[task]
            else:
                policy = random_policy(env.act_dim, np.random.default_rng([cfg.seed, task_index]))
            collected = [run_episode(env, policy, seed=COLLECT_SEED_OFFSET + 1000 * cfg.seed + i)
                         for i in tqdm(range(cfg.episodes), desc=f"collect {task}", dynamic_ncols=True)]
        if cfg.policy != "random" and cfg.random_mix_episodes:
            mix_policy = random_policy(env.act_dim, np.random.default_rng([cfg.seed, task_index, 1]))
            first = COLLECT_SEED_OFFSET + 1000 * cfg.seed + (cfg.episodes if cfg.policy == "checkpoint" else 0)
            collected += [run_episode(env, mix_policy, seed=first + i)
                          for i in tqdm(range(cfg.random_mix_episodes), desc=f"collect {task} (random actions)",
                                        dynamic_ncols=True)]
        by_length: dict[int, list[Episode]] = {}
        for episode in collected:
            by_length.setdefault(episode.length, []).append(pad_episode(episode, obs_dim, act_dim))
        for length, episodes in sorted(by_length.items()):
            for chunk, start in enumerate(range(0, len(episodes), cfg.episodes_per_file)):
                group = episodes[start:start + cfg.episodes_per_file]
                path = out_dir / f"{task}-seed{cfg.seed}-len{length}-{chunk:03d}.pt"
                written.append(write_episodes(
                    path, torch.stack([e.obs for e in group]), torch.stack([e.action for e in group]),
                    torch.stack([e.reward for e in group]), torch.full((len(group), length + 1), task_id),
                ))
        env.close()
    return written


if __name__ == "__main__":  # collect_portably's child process: one CollectConfig as JSON
    collect_dataset(CollectConfig(**json.loads(sys.argv[1])))
