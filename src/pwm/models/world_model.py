"""Baseline TD-MPC2-style latent world model used by PWM.

Components (all LayerNorm+Mish MLPs):

* ``_encoder``  E(obs, task) -> z, SimNorm-ed latent ``[..., latent_dim]``.
* ``_dynamics`` F(z, a, task) -> z', SimNorm-ed next latent (one MLP call per environment step).
* ``_reward``   R(z, a, task) -> two-hot logits ``[..., num_bins]`` (or a scalar if ``num_bins <= 1``).
* ``_task_emb`` learned task embedding (``max_norm=1``) concatenated to every input in multi-task mode.

Multi-task data pads observations and actions to the largest task; ``action_dims`` gives each task's
real action width and the model zeroes the padded action dimensions before using an action.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from pwm.models.layers import SimNorm, init_weights, mlp, zero_head
from pwm.models.two_hot import TwoHot

TaskLike = int | torch.Tensor | None

#: Added to the batch variance that divides a normalised dynamics loss (see ``normalize_dynamics_loss``),
#: far below the variance of any latent space that still tells states apart (1e-3 and more here).
VARIANCE_FLOOR = 1e-8

#: What divides a normalised dynamics loss (see ``dynamics_loss_normalizer``).
DYNAMICS_LOSS_NORMALIZERS = ("variance", "motion")


class LatentWorldModel(nn.Module):
    """Encoder, reward head, task embedding and action masks shared by every PWM world model.

    Subclasses add the dynamics and implement :meth:`next`. The shared modules are created and
    initialised first, so two subclasses built after the same ``torch.manual_seed`` start with
    identical encoder, reward head and task embedding (a parity control of the A/B protocol).

    Args:
        obs_dim: observation width (the padded width in multi-task mode).
        act_dim: action width (the padded width in multi-task mode).
        latent_dim: width of the latent z; must be divisible by ``simnorm_dim``.
        encoder_units: hidden widths of the encoder.
        units: hidden widths of the dynamics and reward MLPs.
        task_dim: width of the task embedding (used only when there is more than one task).
        num_bins, vmin, vmax: two-hot reward support (see :class:`~pwm.models.two_hot.TwoHot`).
        simnorm_dim: simplex group size of SimNorm.
        tasks: task names; more than one selects multi-task mode.
        action_dims: real action width of each task, aligned with ``tasks`` (default: all ``act_dim``).
        normalize_dynamics_loss: divide each rollout step's dynamics loss by the batch variance of
            that step's source latent (per dimension, averaged over dimensions), with gradient through
            the variance: the loss is then measured in units of the latent space's own scale, so an
            encoder gains nothing by shrinking its latents (see :meth:`dynamics_loss_scale`). Off: the
            absolute squared error of the design spec. It applies to every dynamics branch alike.
        dynamics_loss_normalizer: what divides each step's loss when ``normalize_dynamics_loss`` is on:
            ``"variance"``, the batch variance of the step's source latent (above); ``"motion"``, how far
            the encoder's latent moved in the window's first step, ``mean || E(obs[1]) - E(obs[0]) ||^2``
            per dimension over the batch, with gradient through ``E(obs[0])``, for every step. A variance
            divisor keeps the latent space from shrinking but not consecutive latents from converging; a
            model that predicts "nothing moves" then scores well (``wm_eval/latent_vs_copy_1``). The motion
            divisor measures every step's error against that motion, so slowing the latents down no longer
            pays.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        latent_dim: int = 512,
        encoder_units: Sequence[int] = (256,),
        units: Sequence[int] = (512, 512),
        task_dim: int = 96,
        num_bins: int = 101,
        vmin: float = -10.0,
        vmax: float = 10.0,
        simnorm_dim: int = 8,
        tasks: Sequence[str] | None = None,
        action_dims: Sequence[int] | None = None,
        normalize_dynamics_loss: bool = False,
        dynamics_loss_normalizer: str = "variance",
    ):
        super().__init__()
        if dynamics_loss_normalizer not in DYNAMICS_LOSS_NORMALIZERS:
            raise ValueError(f"world_model_config.dynamics_loss_normalizer must be one of {DYNAMICS_LOSS_NORMALIZERS}, "
                             f"got {dynamics_loss_normalizer!r}")
        for name, value in (("obs_dim", obs_dim), ("act_dim", act_dim), ("latent_dim", latent_dim)):
            if int(value) < 1:
                raise ValueError(f"world_model_config.{name} must be >= 1, got {value}")
        if latent_dim % simnorm_dim:
            raise ValueError(
                f"world_model_config.latent_dim={latent_dim} must be divisible by simnorm_dim={simnorm_dim}"
            )
        self.obs_dim, self.act_dim, self.latent_dim = int(obs_dim), int(act_dim), int(latent_dim)
        self.simnorm_dim = int(simnorm_dim)
        self.normalize_dynamics_loss = bool(normalize_dynamics_loss)
        self.dynamics_loss_normalizer = dynamics_loss_normalizer
        self.encoder_units, self.units = list(encoder_units), list(units)
        self.tasks = list(tasks) if tasks is not None else []
        self.num_tasks = max(len(self.tasks), 1)
        self.multitask = self.num_tasks > 1
        self.task_dim = int(task_dim) if self.multitask else 0

        if action_dims is None:
            action_dims = [self.act_dim] * self.num_tasks
        action_dims = list(action_dims)
        if len(action_dims) != self.num_tasks:
            raise ValueError(
                f"world_model_config.action_dims has {len(action_dims)} entries but there are {self.num_tasks} tasks"
            )
        if any(not 1 <= d <= self.act_dim for d in action_dims):
            raise ValueError(f"world_model_config.action_dims {action_dims} must lie in [1, act_dim={self.act_dim}]")
        masks = torch.zeros(self.num_tasks, self.act_dim)
        for i, width in enumerate(action_dims):
            masks[i, :width] = 1.0
        self.register_buffer("_action_masks", masks)

        self.two_hot = TwoHot(num_bins, vmin, vmax)
        if self.multitask:
            self._task_emb = nn.Embedding(self.num_tasks, self.task_dim, max_norm=1.0)
        self._encoder = mlp(self.obs_dim + self.task_dim, self.encoder_units, self.latent_dim, SimNorm(simnorm_dim))
        self._reward = mlp(self.latent_dim + self.act_dim + self.task_dim, self.units, self.two_hot.out_dim)
        self.apply(init_weights)
        zero_head(self._reward)

    # ------------------------------------------------------------------ task handling
    def _task_index(self, task: TaskLike, batch_shape: torch.Size) -> torch.Tensor | None:
        if not self.multitask:
            return None
        if task is None:
            raise ValueError(f"multi-task world model ({self.num_tasks} tasks) needs a task id, got None")
        if not torch.is_tensor(task):
            task = torch.tensor(task)
        task = task.to(self._action_masks.device).long()
        if task.numel() and (task.min() < 0 or task.max() >= self.num_tasks):
            raise ValueError(f"task id out of range [0, {self.num_tasks}): {task.unique().tolist()}")
        if task.dim() == 0:
            task = task.expand(batch_shape[-1:] if len(batch_shape) else ())
        return task

    def task_embedding(self, task: TaskLike, like: torch.Tensor) -> torch.Tensor | None:
        """Task embedding broadcast to ``like.shape[:-1] + (task_dim,)``; None in single-task mode.

        ``task`` is an int or a LongTensor ``[B]`` for inputs of shape ``[B, D]`` or ``[T, B, D]``.
        """
        index = self._task_index(task, like.shape[:-1])
        if index is None:
            return None
        emb = self._task_emb(index)
        return emb.expand(*like.shape[:-1], self.task_dim)

    def _with_task(self, x: torch.Tensor, task: TaskLike) -> torch.Tensor:
        emb = self.task_embedding(task, x)
        return x if emb is None else torch.cat([x, emb], dim=-1)

    def action_mask(self, task: TaskLike, like: torch.Tensor) -> torch.Tensor:
        """Mask ``[..., act_dim]`` with ones on the task's real action dimensions, zeros on padding."""
        index = self._task_index(task, like.shape[:-1])
        mask = self._action_masks[0] if index is None else self._action_masks[index]
        return mask.expand_as(like)

    def mask_action(self, action: torch.Tensor, task: TaskLike) -> torch.Tensor:
        """Zero the padded action dimensions of ``action`` ``[..., act_dim]``."""
        if not self.multitask:
            return action
        return action * self.action_mask(task, action)

    def _latent_action_input(self, z: torch.Tensor, action: torch.Tensor, task: TaskLike) -> torch.Tensor:
        return self._with_task(torch.cat([z, self.mask_action(action, task)], dim=-1), task)

    # ------------------------------------------------------------------ public API
    def encode(self, obs: torch.Tensor, task: TaskLike = None) -> torch.Tensor:
        """Observations ``[..., obs_dim]`` -> latents ``[..., latent_dim]``."""
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"encode: obs has {obs.shape[-1]} features, model expects obs_dim={self.obs_dim}")
        return self._encoder(self._with_task(obs, task))

    def reward(self, z: torch.Tensor, action: torch.Tensor, task: TaskLike = None) -> torch.Tensor:
        """Reward head output ``[..., num_bins]`` (two-hot logits) or ``[..., 1]``; decode with ``two_hot``."""
        return self._reward(self._latent_action_input(z, action, task))

    def predict_reward(self, z: torch.Tensor, action: torch.Tensor, task: TaskLike = None) -> torch.Tensor:
        """Scalar reward prediction ``[...]``."""
        return self.two_hot.decode(self.reward(z, action, task))

    def next(self, z: torch.Tensor, action: torch.Tensor, task: TaskLike = None) -> torch.Tensor:
        """Next latent ``[..., latent_dim]`` from ``z`` ``[..., latent_dim]`` and ``action`` ``[..., act_dim]``."""
        raise NotImplementedError

    def step(
        self, z: torch.Tensor, action: torch.Tensor, task: TaskLike = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One latent step: ``(next(z, a), reward(z, a))``; the reward is the raw head output."""
        return self.next(z, action, task), self.reward(z, action, task)

    @staticmethod
    def _check_rollout_lengths(act_seq: torch.Tensor, next_z_seq: torch.Tensor, horizon: int) -> None:
        if act_seq.shape[0] < horizon or next_z_seq.shape[0] < horizon:
            raise ValueError(
                f"horizon={horizon} exceeds act_seq ({act_seq.shape[0]}) or next_z_seq ({next_z_seq.shape[0]}) length"
            )

    def dynamics_loss_scale(self, source: torch.Tensor, start: torch.Tensor, first_target: torch.Tensor) -> torch.Tensor:
        """Divisor of one rollout step's dynamics loss: 1 unless ``normalize_dynamics_loss``.

        Args:
            source: the step's source latents ``[B, latent_dim]`` (the encoder's at step 0, the
                rollout's prediction later).
            start: the encoder's latents of the window's first observations ``[B, latent_dim]`` (``z0``).
            first_target: the encoder's latents of the window's second observations ``[B, latent_dim]``.

        ``"variance"``: the batch variance of ``source`` (mean over dimensions). Why: the flow-matching
        target ``z_tgt - z_s`` and a squared latent error both shrink when the encoder maps all states
        closer together. The spec's flow loss passes gradient into ``z_s``, and its encoder does shrink
        its latent space (on a fixed cup-catch replay, spread 0.090 -> 0.026 in 3,000 updates against the
        baseline's 0.084; ``benchmarks/results/wm_fit``). A loss divided by the latent variance is
        unchanged by such a shrinking, and the gradient through the divisor pushes back against it.

        ``"motion"``: ``mean (first_target - start)^2``, the error of predicting that the latent does not
        move in the first step. The same argument holds for latents that converge towards the next
        step's (flow on walker-walk: 0.002 of their variance per step), which the variance does not see.
        One divisor with gradient for every step: a divisor per step from the targets (no gradient
        after step 0) did not stop the slowing (on a walker-walk replay flow's latents still fell to
        0.002 of their variance per step).
        """
        if not self.normalize_dynamics_loss:
            return source.new_ones(())
        if self.dynamics_loss_normalizer == "motion":
            return (first_target - start).pow(2).mean() + VARIANCE_FLOOR
        flat = source.reshape(-1, source.shape[-1])
        if flat.shape[0] < 2:
            raise ValueError("world_model_config.normalize_dynamics_loss needs a batch of at least 2 windows")
        return flat.var(dim=0, unbiased=False).mean() + VARIANCE_FLOOR

    def latent_rollout_and_dynamics_loss(
        self,
        z0: torch.Tensor,
        act_seq: torch.Tensor,
        next_z_seq: torch.Tensor,
        horizon: int,
        gamma: float,
        task: TaskLike = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll :meth:`next` ``horizon`` steps from ``z0`` ``[B, latent_dim]`` under ``act_seq``
        ``[H, B, act_dim]``; the dynamics loss is the baseline's (TD-MPC2's consistency loss)
        ``(1/H) sum_t gamma^t MSE(zs[t+1], next_z_seq[t]) / s_t`` with ``s_t`` the
        :meth:`dynamics_loss_scale` of step t (1 unless ``normalize_dynamics_loss``).

        Returns ``(zs [H + 1, B, latent_dim], loss)``. The flow model overrides this with its
        flow-matching loss (same contract), so the algorithm calls one method for either model.
        """
        self._check_rollout_lengths(act_seq, next_z_seq, horizon)
        zs = [z0]
        loss = z0.new_zeros(())
        for t in range(horizon):
            source = zs[-1]
            zs.append(self.next(source, act_seq[t], task))
            scale = self.dynamics_loss_scale(source, z0, next_z_seq[0])
            step_loss = (zs[-1] - next_z_seq[t]).pow(2).mean() / scale
            loss = loss + gamma**t * step_loss
        return torch.stack(zs), loss / horizon


class WorldModel(LatentWorldModel):
    """Baseline PWM world model: an MLP predicts the next SimNorm-ed latent in one call.

    Extra args (see :class:`LatentWorldModel` for the rest): ``simnorm_dim`` also sets the SimNorm
    on the dynamics output.
    """

    def __init__(self, obs_dim: int, act_dim: int, simnorm_dim: int = 8, **kwargs):
        super().__init__(obs_dim, act_dim, simnorm_dim=simnorm_dim, **kwargs)
        self._dynamics = mlp(
            self.latent_dim + self.act_dim + self.task_dim, self.units, self.latent_dim, SimNorm(simnorm_dim)
        )
        self._dynamics.apply(init_weights)

    def next(self, z: torch.Tensor, action: torch.Tensor, task: TaskLike = None) -> torch.Tensor:
        return self._dynamics(self._latent_action_input(z, action, task))
