"""Discrete regression of scalars (rewards) with a two-hot encoding in symlog space.

With ``num_bins > 1`` a scalar ``x`` is mapped to ``symlog(x)``, clamped to ``[vmin, vmax]`` and spread
over the two nearest of ``num_bins`` evenly spaced bins; a head predicts logits over the bins and is
trained with soft cross-entropy. Decoding takes the softmax-weighted bin centre and applies ``symexp``.
With ``num_bins <= 1`` the head is a single scalar trained with squared error.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


class TwoHot(nn.Module):
    """Two-hot encoder/decoder and loss for a scalar head.

    Args:
        num_bins: number of bins (101 in TD-MPC2); ``<= 1`` selects a plain scalar head.
        vmin, vmax: support of the bins in symlog space.
    """

    def __init__(self, num_bins: int = 101, vmin: float = -10.0, vmax: float = 10.0):
        super().__init__()
        if num_bins > 1 and not vmin < vmax:
            raise ValueError(f"two-hot needs vmin < vmax, got vmin={vmin}, vmax={vmax}")
        self.num_bins = int(num_bins)
        self.vmin = float(vmin)
        self.vmax = float(vmax)
        if self.discrete:
            self.register_buffer("bins", torch.linspace(self.vmin, self.vmax, self.num_bins), persistent=False)
            self.bin_size = (self.vmax - self.vmin) / (self.num_bins - 1)

    @property
    def discrete(self) -> bool:
        return self.num_bins > 1

    @property
    def out_dim(self) -> int:
        """Width of the head that predicts this quantity."""
        return self.num_bins if self.discrete else 1

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scalars ``[...]`` -> two-hot targets ``[..., num_bins]`` (each row sums to 1)."""
        x = symlog(x).clamp(self.vmin, self.vmax)
        position = (x - self.vmin) / self.bin_size
        lower = position.floor().clamp(max=self.num_bins - 1)
        upper_weight = (position - lower).unsqueeze(-1)
        lower_idx = lower.long().unsqueeze(-1)
        upper_idx = (lower_idx + 1).clamp(max=self.num_bins - 1)
        target = torch.zeros(*x.shape, self.num_bins, device=x.device, dtype=x.dtype)
        target.scatter_add_(-1, lower_idx, 1.0 - upper_weight)
        target.scatter_add_(-1, upper_idx, upper_weight)
        return target

    def decode(self, head_out: torch.Tensor) -> torch.Tensor:
        """Head output ``[..., out_dim]`` -> scalar prediction ``[...]``."""
        if not self.discrete:
            return head_out.squeeze(-1)
        expected = (F.softmax(head_out, dim=-1) * self.bins).sum(-1)
        return symexp(expected)

    def loss(self, head_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-element loss ``[...]`` of head output ``[..., out_dim]`` against scalar targets ``[...]``.

        Soft cross-entropy against the two-hot target, or squared error for a scalar head.
        """
        if not self.discrete:
            return (head_out.squeeze(-1) - target) ** 2
        return -(self.encode(target) * F.log_softmax(head_out, dim=-1)).sum(-1)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, vmin={self.vmin}, vmax={self.vmax}"
