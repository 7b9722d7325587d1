"""Stochastic policy on world-model latents (PWM/SHAC style)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pwm.models.layers import init_weights, mlp


class ActorStochasticMLP(nn.Module):
    """Gaussian policy squashed by tanh: ``a = tanh(mu(x) + exp(log_std) * eps)``.

    The log standard deviation is a state-independent learned vector, clamped to
    ``[min_log_std, max_log_std]``. Samples are reparameterised so actor gradients flow through them.

    Args:
        in_dim: input width (``latent_dim`` plus ``task_dim`` in multi-task mode).
        act_dim: action width.
        units: hidden widths.
        activation: hidden activation name.
        init_log_std, min_log_std, max_log_std: exploration noise scale and its bounds.
    """

    def __init__(
        self,
        in_dim: int,
        act_dim: int,
        units: Sequence[int] = (400, 200, 100),
        activation: str = "elu",
        init_log_std: float = -1.0,
        min_log_std: float = -5.0,
        max_log_std: float = 1.0,
    ):
        super().__init__()
        self.act_dim = act_dim
        self.net = mlp(in_dim, list(units), act_dim, hidden_act=activation)
        self.net.apply(init_weights)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        self.min_log_std, self.max_log_std = float(min_log_std), float(max_log_std)

    def forward(self, x: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions ``[..., act_dim]`` in ``[-1, 1]`` for inputs ``[..., in_dim]``."""
        mean = self.net(x)
        if deterministic:
            return torch.tanh(mean)
        return torch.tanh(self._perturb(mean)[0])

    def _perturb(self, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reparameterised pre-tanh sample ``u = mean + exp(log_std) * noise``, its noise and the
        clamped ``log_std``: one place, so that :meth:`forward` and :meth:`sample_with_log_prob` draw the
        same sample from the same random state."""
        log_std = self.log_std.clamp(self.min_log_std, self.max_log_std)
        noise = torch.randn_like(mean)
        return mean + log_std.exp() * noise, noise, log_std

    def sample_with_log_prob(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample ``a [..., act_dim]`` and its log-density per action dimension.

        ``log pi(a_i) = log N(u_i; mu_i, std_i) - log(1 - tanh(u_i)^2)`` for ``a = tanh(u)``: the second
        term (the tanh change of variables) grows without bound as ``|u|`` grows, so an entropy bonus
        built on it pushes a saturated policy back towards the range where ``tanh`` still passes a
        gradient (and where its noise still changes the action). Per dimension, so that callers can
        drop padded action dimensions before summing.
        """
        pre_tanh, noise, log_std = self._perturb(self.net(x))
        gaussian_log_prob = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), exact and finite for any u
        log_det_tanh = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        return torch.tanh(pre_tanh), gaussian_log_prob - log_det_tanh
