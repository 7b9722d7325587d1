"""Task registry: names, multi-task sets in TD-MPC2's order, and :func:`make_env`.

Task names follow TD-MPC2: ``<domain>-<task>`` for the DeepMind Control suite (``walker-walk``,
``cup-catch``), ``mw-<task>`` for Meta-World v3 (``mw-reach``). The single-task locomotion stand-ins
for PWM's dflex tasks are gymnasium MuJoCo v5 environments: ``ant``, ``hopper``, ``halfcheetah``,
``walker2d``, ``humanoid``. In a multi-task set the task id is the index in the list.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("MUJOCO_GL", "egl")

DMC_MT30 = [
    # the 19 original DeepMind Control tasks
    "walker-stand", "walker-walk", "walker-run", "cheetah-run", "reacher-easy",
    "reacher-hard", "acrobot-swingup", "pendulum-swingup", "cartpole-balance", "cartpole-balance-sparse",
    "cartpole-swingup", "cartpole-swingup-sparse", "cup-catch", "finger-spin", "finger-turn-easy",
    "finger-turn-hard", "fish-swim", "hopper-stand", "hopper-hop",
    # the 11 tasks TD-MPC2 added with its own MJCF/reward code
    "walker-walk-backwards", "walker-run-backwards", "cheetah-run-backwards", "cheetah-run-front",
    "cheetah-run-back", "cheetah-jump", "hopper-hop-backwards", "reacher-three-easy", "reacher-three-hard",
    "cup-spin", "pendulum-spin",
]
METAWORLD_MT50 = [
    "mw-assembly", "mw-basketball", "mw-button-press-topdown", "mw-button-press-topdown-wall",
    "mw-button-press", "mw-button-press-wall", "mw-coffee-button", "mw-coffee-pull", "mw-coffee-push",
    "mw-dial-turn", "mw-disassemble", "mw-door-open", "mw-door-close", "mw-drawer-close", "mw-drawer-open",
    "mw-faucet-open", "mw-faucet-close", "mw-hammer", "mw-handle-press-side", "mw-handle-press",
    "mw-handle-pull-side", "mw-handle-pull", "mw-lever-pull", "mw-peg-insert-side", "mw-peg-unplug-side",
    "mw-pick-out-of-hole", "mw-pick-place", "mw-pick-place-wall", "mw-plate-slide", "mw-plate-slide-side",
    "mw-plate-slide-back", "mw-plate-slide-back-side", "mw-push-back", "mw-push", "mw-push-wall",
    "mw-reach", "mw-reach-wall", "mw-shelf-place", "mw-soccer", "mw-stick-push", "mw-stick-pull",
    "mw-sweep-into", "mw-sweep", "mw-window-open", "mw-window-close", "mw-bin-picking", "mw-box-close",
    "mw-door-lock", "mw-door-unlock", "mw-hand-insert",
]
TASK_SETS: dict[str, list[str]] = {"mt30": DMC_MT30, "mt80": DMC_MT30 + METAWORLD_MT50}

#: TD-MPC2's custom DMC tasks need MJCF and reward code that dm_control does not ship. Their action
#: widths (from the base domain) are still known, so multi-task masks can cover them.
CUSTOM_DMC_ACTION_DIMS = {
    "walker-walk-backwards": 6, "walker-run-backwards": 6, "cheetah-run-backwards": 6, "cheetah-run-front": 6,
    "cheetah-run-back": 6, "cheetah-jump": 6, "hopper-hop-backwards": 4, "reacher-three-easy": 3,
    "reacher-three-hard": 3, "cup-spin": 2, "pendulum-spin": 1,
}
#: dm_control domain names where TD-MPC2's short name differs.
DMC_DOMAIN_ALIASES = {"cup": "ball_in_cup"}
GYM_LOCOMOTION = {
    "ant": "Ant-v5", "hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5", "humanoid": "Humanoid-v5",
}


class UnknownTaskError(ValueError):
    """A task name that no registry knows."""


class UnavailableTaskError(RuntimeError):
    """A known task that cannot be built on this installation (e.g. TD-MPC2's custom MJCF tasks)."""


def task_family(name: str) -> str:
    """``"dmc"``, ``"metaworld"`` or ``"gym"``; raises :class:`UnknownTaskError` otherwise."""
    if name in GYM_LOCOMOTION:
        return "gym"
    if name.startswith("mw-"):
        if name not in METAWORLD_MT50:
            raise UnknownTaskError(f"unknown Meta-World task {name!r}; known: {', '.join(METAWORLD_MT50)}")
        return "metaworld"
    if name in CUSTOM_DMC_ACTION_DIMS or _dmc_ids(name) in _dmc_all_tasks():
        return "dmc"
    raise UnknownTaskError(
        f"unknown task {name!r}: expected a DMC '<domain>-<task>' (e.g. walker-walk), a Meta-World "
        f"'mw-<task>' (e.g. mw-reach) or one of {sorted(GYM_LOCOMOTION)}"
    )


def task_set(name: str) -> list[str]:
    """Task list of a multi-task set (``mt30`` or ``mt80``) in TD-MPC2's order."""
    try:
        return list(TASK_SETS[name])
    except KeyError:
        raise UnknownTaskError(f"unknown task set {name!r}; choose one of {sorted(TASK_SETS)}") from None


def _dmc_ids(name: str) -> tuple[str, str]:
    domain, _, task = name.partition("-")
    return DMC_DOMAIN_ALIASES.get(domain, domain), task.replace("-", "_")


@functools.cache
def _dmc_all_tasks() -> frozenset[tuple[str, str]]:
    from dm_control import suite

    return frozenset(suite.ALL_TASKS)


def make_env(name: str, seed: int = 0):
    """Build the environment for a task name (see the module docstring for the naming scheme)."""
    family = task_family(name)
    if family == "gym":
        from pwm.envs.wrappers import GymnasiumEnv

        return GymnasiumEnv(name, GYM_LOCOMOTION[name], seed)
    if family == "metaworld":
        from pwm.envs.wrappers import MetaWorldEnv

        return MetaWorldEnv(name, seed)
    from pwm.envs.wrappers import DMControlEnv

    if name in CUSTOM_DMC_ACTION_DIMS:
        from pwm.envs.custom_dmc import CUSTOM_TASKS

        if name not in CUSTOM_TASKS:
            raise UnavailableTaskError(
                f"task {name!r} is one of TD-MPC2's custom DMC tasks without a definition in pwm.envs.custom_dmc"
            )
        return DMControlEnv(name, *_dmc_ids(name), seed, build=CUSTOM_TASKS[name])

    return DMControlEnv(name, *_dmc_ids(name), seed)


@functools.cache
def action_dim(name: str) -> int:
    """Real action width of a task (builds the environment once; cached)."""
    if name in CUSTOM_DMC_ACTION_DIMS:
        return CUSTOM_DMC_ACTION_DIMS[name]
    if task_family(name) == "metaworld":
        return 4  # every Meta-World v3 task drives the same Sawyer end effector + gripper
    env = make_env(name)
    try:
        return env.act_dim
    finally:
        env.close()


#: Meta-World v3's goal-observable state: the same 39 numbers for every task.
METAWORLD_OBS_DIM = 39


@functools.cache
def observation_dim(name: str) -> int | None:
    """Observation width of a task (builds the environment once; cached); None for a task that
    cannot be built here."""
    try:
        family = task_family(name)
        if family == "metaworld":
            return METAWORLD_OBS_DIM
        env = make_env(name)
    except UnavailableTaskError:
        return None
    try:
        return env.obs_dim
    finally:
        env.close()


def set_obs_width(tasks: list[str]) -> int:
    """The observation width a multi-task dataset of ``tasks`` is padded to: its widest task's."""
    widths = [d for d in (observation_dim(t) for t in tasks) if d is not None]
    if not widths:
        raise UnavailableTaskError(f"no task of {tasks} can be built here to read its observation width")
    return max(widths)
