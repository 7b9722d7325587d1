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

    With ``anneal_iterations`` > 0, reaching the plateau does not end training: the learning rate then
    decays to its final value over that many more iterations (:meth:`anneal_fraction`), and training
    ends after them (:meth:`mark_and_check_stop`). At a constant rate the held-out error of a small
    model plateaus at a noise floor set by the rate (cartpole-balance, ``pwm_small``: the baseline's
    evaluations swung between 0.03 and 0.045 where it stopped); the decay lowers that floor.

    Args:
        patience: evaluations without improvement that end training.
        min_improvement: relative drop of the window mean that counts as an improvement (0.05 = 5%).
        min_iterations: iterations to run before the rule may stop training.
        window: evaluations averaged before comparing.
        anneal_iterations: iterations of learning-rate decay after the plateau (0: stop at the plateau).
    """

    patience: int
    min_improvement: float
    min_iterations: int
    window: int = 1
    anneal_iterations: int = 0
    plateau_iterations: int = -1  # iterations done when the plateau was reached (-1: not yet); the decay starts there
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
        if self.anneal_iterations < 0:
            raise ValueError(f"pretrain.anneal_iterations must be >= 0, got {self.anneal_iterations}")

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

    @property
    def reached(self) -> bool:
        """Whether the plateau was reached (marked by :meth:`mark_and_check_stop`); stays true while annealing."""
        return self.plateau_iterations >= 0

    def mark_and_check_stop(self, iteration: int, plateau: bool) -> bool:
        """After the evaluation of ``iteration + 1`` iterations, given whether the plateau holds there
        (:meth:`converged`, agreed across ranks): mark where it was first reached, and return whether
        training ends now (at the plateau, or ``anneal_iterations`` after it)."""
        if plateau and not self.reached:
            self.plateau_iterations = iteration + 1
        return self.reached and iteration + 1 >= self.plateau_iterations + self.anneal_iterations

    def anneal_fraction(self, iteration: int) -> float:
        """How far the decay has gone at update ``iteration`` (0-based): 0 before the plateau, then
        ``(iteration + 1 - plateau_iterations) / anneal_iterations``, 1 at the last update."""
        if not self.reached or not self.anneal_iterations:
            return 0.0
        return (iteration + 1 - self.plateau_iterations) / self.anneal_iterations

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
