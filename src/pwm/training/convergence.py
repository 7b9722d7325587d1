"""Plateau rule for world-model pretraining: stop when a held-out error stops improving."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PlateauRule:
    """Early stopping on a noisy held-out error that is measured every few iterations.

    The rule watches the mean of the last ``window`` evaluations (a held-out error fluctuates by
    tens of percent between evaluations while it still falls slowly; single values stop training
    far too early). A window mean *improves* when it is below ``(1 - min_improvement)`` times the
    best window mean so far. Training has *converged* once ``patience`` consecutive evaluations
    brought no improvement and at least ``min_iterations`` iterations ran. NaN never improves.

    Separately, :meth:`update` reports whether an evaluation is the lowest single value so far: the
    weights worth keeping.

    Args:
        patience: evaluations without improvement that end training.
        min_improvement: relative drop of the window mean that counts as an improvement (0.05 = 5%).
        min_iterations: iterations to run before the rule may stop training.
        window: evaluations averaged before comparing.
    """

    patience: int
    min_improvement: float
    min_iterations: int
    window: int = 1
    best: float = math.inf
    best_iteration: int = -1
    best_window_mean: float = math.inf
    evaluations_since_improvement: int = 0
    recent: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"pretrain.patience must be >= 1, got {self.patience}")
        if not 0.0 <= self.min_improvement < 1.0:
            raise ValueError(f"pretrain.min_improvement must be in [0, 1), got {self.min_improvement}")
        if self.min_iterations < 0:
            raise ValueError(f"pretrain.min_iterations must be >= 0, got {self.min_iterations}")
        if self.window < 1:
            raise ValueError(f"pretrain.window must be >= 1, got {self.window}")

    def update(self, iteration: int, value: float) -> bool:
        """Record the error measured after ``iteration + 1`` iterations; True if it is the lowest so far."""
        self.recent = (self.recent + [float(value)])[-self.window:]
        if len(self.recent) == self.window:
            window_mean = sum(self.recent) / self.window
            if window_mean < self.best_window_mean * (1.0 - self.min_improvement):  # False for NaN
                self.best_window_mean, self.evaluations_since_improvement = window_mean, 0
            else:
                self.evaluations_since_improvement += 1
        if value < self.best:
            self.best, self.best_iteration = float(value), int(iteration)
            return True
        return False

    def window_mean(self) -> float:
        """Mean of the last ``window`` evaluations (fewer if fewer ran; NaN before the first)."""
        return sum(self.recent) / len(self.recent) if self.recent else math.nan

    def converged(self, iteration: int) -> bool:
        """Whether training may stop after ``iteration + 1`` iterations."""
        return self.evaluations_since_improvement >= self.patience and iteration + 1 >= self.min_iterations

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
