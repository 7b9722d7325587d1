"""Typed settings of the three training loops, read once from a config section and checked there.

Entry points pass a Hydra section (``cfg.train``, ``cfg.pretrain``) to :meth:`LoopSettings.from_cfg`,
which returns a frozen dataclass or raises a ``ValueError`` naming the bad key (``train.eval_every
must be >= 1, got 0``). The loops only ever see these dataclasses, so what a loop reads is visible
in one place, with its type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from pwm.training.video import VideoConfig

SettingsT = TypeVar("SettingsT", bound="LoopSettings")

#: World-model learning-rate schedules of pretraining (``pretrain.lr_schedule``).
PRETRAIN_LR_SCHEDULES = ("constant", "linear")

#: Fields that count iterations, episodes or windows between events: they must be >= 1.
_POSITIVE = {"iterations", "eval_every", "checkpoint_every", "log_every", "episodes_per_iteration",
             "updates_per_iteration", "eval_episodes", "patience", "window", "policy_seeds", "batch_size"}
#: Fields that may be 0 (off) but not negative.
_NON_NEGATIVE = {"diagnostics_windows", "seed_episodes", "heldout_windows", "min_iterations", "min_improvement"}


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """``value`` converted to the field's type (ints stay ints, a float field takes an int), or a named error."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(option for option in options if option is not type(None))
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is VideoConfig:
        if value is None or isinstance(value, VideoConfig):
            return value
        if isinstance(value, Mapping):
            return VideoConfig(**value)
    else:
        return value
    raise ValueError(f"{key} must be {getattr(annotation, '__name__', annotation)}, got {value!r}")


@dataclass(frozen=True)
class LoopSettings:
    """What every loop reads: length, evaluation and checkpoint periods, resuming and loggers."""

    iterations: int
    eval_every: int
    checkpoint_every: int
    resume: bool = True
    tensorboard: bool = False
    wandb: bool = False

    @classmethod
    def from_cfg(cls: type[SettingsT], section: DictConfig | Mapping[str, Any] | SettingsT,
                 name: str = "train") -> SettingsT:
        """The settings in ``section`` (a config section named ``name`` in error messages); keys the
        loop does not read are ignored, a missing key without a default is an error."""
        if isinstance(section, cls):
            return section
        values = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for field in dataclasses.fields(cls):
            key = f"{name}.{field.name}"
            if field.name not in values:
                if field.default is dataclasses.MISSING:
                    raise ValueError(f"{key} is missing")
                continue
            value = _check_type(values[field.name], hints[field.name], key)
            if field.name in _POSITIVE and value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
            if field.name in _NON_NEGATIVE and value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
            kwargs[field.name] = value
        return cls(**kwargs)


@dataclass(frozen=True)
class PolicyLoopSettings(LoopSettings):
    """What both policy loops read for their evaluations in the real environment."""

    eval_episodes: int = 5
    diagnostics_windows: int = 512
    video: VideoConfig | None = None


@dataclass(frozen=True)
class OfflineSettings(PolicyLoopSettings):
    """Policy extraction on a fixed dataset (``train`` of ``ab.yaml``, ``config_mt30.yaml``)."""

    train_world_model: bool = False
    time_budget_s: float | None = None  # stop once pretraining + policy seconds reach it (equal wall-clock)
    policy_seeds: int = 1  # policies extracted from one pretrained world model (A/B jobs; see pwm.experiments.ab)
    batch_size: int | None = None  # windows per policy update; None: the world model's (the caller's alg.batch_size)

    def policy_batch_size(self, default: int) -> int:
        """Windows per update of this phase: ``batch_size``, or ``default`` (``alg.batch_size``) when unset."""
        return default if self.batch_size is None else self.batch_size


@dataclass(frozen=True)
class OnlineSettings(PolicyLoopSettings):
    """Single-task online training (``train`` of ``config.yaml``)."""

    seed_episodes: int = 5
    episodes_per_iteration: int = 1
    updates_per_iteration: int = 50


@dataclass(frozen=True)
class PretrainSettings(LoopSettings):
    """World-model pretraining until the held-out error plateaus (``pretrain`` of ``ab.yaml``, ``pretrain.yaml``)."""

    heldout_windows: int = 512
    patience: int = 5
    min_improvement: float = 0.05
    min_iterations: int = 0
    window: int = 1
    log_every: int = 10
    lr_schedule: str = "constant"  # constant | linear: the world model's rate decays to lr_final over the cap
    lr_final: float = 1.0e-5
    anneal_iterations: int = 0  # constant schedule: decay to lr_final over this many iterations after the plateau

    def __post_init__(self) -> None:
        if self.lr_schedule not in PRETRAIN_LR_SCHEDULES:
            raise ValueError(f"pretrain.lr_schedule must be one of {PRETRAIN_LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.anneal_iterations < 0 or self.anneal_iterations % max(self.eval_every, 1):
            raise ValueError(f"pretrain.anneal_iterations must be >= 0 and a multiple of pretrain.eval_every "
                             f"({self.eval_every}), got {self.anneal_iterations}")
        if self.anneal_iterations and self.lr_schedule != "constant":
            raise ValueError(f"pretrain.anneal_iterations decays a constant rate after the plateau; with "
                             f"pretrain.lr_schedule={self.lr_schedule!r} set it to 0")
        if not self.lr_final > 0:
            raise ValueError(f"pretrain.lr_final must be > 0, got {self.lr_final}")
