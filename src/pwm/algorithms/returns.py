"""Discounted returns of reward sequences: the critic's TD(lambda) targets, and with ``lam = 1`` the
Monte Carlo returns the critic's calibration is measured against (shared, so both are one formula)."""

from __future__ import annotations

import torch


def lambda_returns(rewards: torch.Tensor, next_values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """TD(lambda) targets ``[H, B]`` for a truncated rollout.

    Args:
        rewards: ``r_t`` ``[H, B]``.
        next_values: ``V'(z_{t+1})`` ``[H, B]`` (target critic on the rollout's next latents).

    ``G_{H-1} = r_{H-1} + gamma V'(z_H)`` and ``G_t = r_t + gamma ((1 - lam) V'(z_{t+1}) + lam G_{t+1})``.
    """
    returns = torch.empty_like(rewards)
    running = next_values[-1]
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * ((1.0 - lam) * next_values[t] + lam * running)
        returns[t] = running
    return returns
