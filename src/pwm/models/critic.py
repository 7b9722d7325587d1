"""Ensemble of state-value critics V(z) on world-model latents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from pwm.models.layers import init_weights, mlp, zero_head


class CriticEnsemble(nn.Module):
    """``num_critics`` independent value MLPs.

    Args:
        in_dim: input width (``latent_dim`` plus ``task_dim`` in multi-task mode).
        units: hidden widths of each critic.
        num_critics: ensemble size.
        activation: hidden activation name.
        reduce: how :meth:`value` combines the ensemble: ``"min"`` (pessimistic) or ``"mean"``.
    """

    def __init__(
        self,
        in_dim: int,
        units: Sequence[int] = (400, 200),
        num_critics: int = 2,
        activation: str = "elu",
        reduce: Literal["min", "mean"] = "min",
    ):
        super().__init__()
        if num_critics < 1:
            raise ValueError(f"critic_config.num_critics must be >= 1, got {num_critics}")
        if reduce not in ("min", "mean"):
            raise ValueError(f"critic_config.reduce must be 'min' or 'mean', got {reduce!r}")
        self.reduce = reduce
        self.critics = nn.ModuleList(mlp(in_dim, list(units), 1, hidden_act=activation) for _ in range(num_critics))
        for critic in self.critics:
            critic.apply(init_weights)
            zero_head(critic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every critic's value: ``[num_critics, ...]`` for inputs ``[..., in_dim]``."""
        return torch.stack([critic(x).squeeze(-1) for critic in self.critics])

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Ensemble value ``[...]`` (min or mean over critics)."""
        values = self(x)
        return values.min(0).values if self.reduce == "min" else values.mean(0)
