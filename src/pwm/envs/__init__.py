"""Task registry and environment wrappers."""

from pwm.envs.tasks import (
    TASK_SETS,
    UnavailableTaskError,
    UnknownTaskError,
    action_dim,
    make_env,
    task_family,
    task_set,
)
from pwm.envs.wrappers import PaddedEnv, TaskEnv

__all__ = ["TASK_SETS", "PaddedEnv", "TaskEnv", "UnavailableTaskError", "UnknownTaskError", "action_dim",
           "make_env", "task_family", "task_set"]
