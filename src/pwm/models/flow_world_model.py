"""Flow-matching latent dynamics for PWM (design spec sections 2-4, 6).

The one-call MLP dynamics ``z' = F(z, a)`` of :class:`~pwm.models.world_model.WorldModel` is replaced by
a conditional velocity field ``v(z, a, task, t)`` integrated over ``t in [0, 1]`` with ``K`` uniform
Euler sub-steps at the midpoints ``t_k = (k + 0.5) / K``. The field is trained by rectified-flow
matching: for a source latent ``z_s`` and a target ``z_tgt = E(obs_{t+1})``,

    z_tau = (1 - tau) z_s + tau z_tgt,   loss = || v(z_tau, a, tau) - (z_tgt - z_s) ||^2.

Encoder, reward head, task embedding and action masks are the baseline's (shared base class), so a
flow model and a baseline built after the same seed start from identical copies of them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.utils.checkpoint

from pwm.models.layers import init_weights, mlp, project_onto_simplices
from pwm.models.world_model import LatentWorldModel, TaskLike

TAU_SAMPLING_MODES = ("uniform", "midpoint")
LATENT_PROJECTIONS = ("none", "simplex")


class FlowWorldModel(LatentWorldModel):
    """World model whose dynamics integrate a learned velocity field (rectified flow).

    Args (in addition to :class:`~pwm.models.world_model.LatentWorldModel`'s):
        integrate_steps: Euler sub-steps ``K`` per environment step (spec default 4).
        fm_tau_sampling: ``"uniform"`` draws ``tau ~ U[0, 1]`` per sample; ``"midpoint"`` uses 0.5
            (the deterministic variant).
        latent_projection: ``"none"`` leaves the integrated latent as it is (the design spec);
            ``"simplex"`` projects it onto the product of simplices the encoder's SimNorm maps into
            (:func:`~pwm.models.layers.project_onto_simplices`), the set the baseline's next latents
            lie in by construction. A latent already there is unchanged, so the flow-matching targets
            are unaffected; off the data, Euler steps of an unconstrained velocity can leave that set.
        latent_clip_norm: if set, latents leaving :meth:`next` with an L2 norm above this are scaled
            back onto that norm (spec section 10 mitigation); every clipped sample is counted in
            :attr:`latent_clip_count` so the training loop can log it. ``None`` disables clipping.
        detach_velocity_target: if true, the flow-matching target velocity ``z_tgt - z_s`` is a constant
            of the loss: ``z_s`` (the encoder's latent at step 0, the rollout's prediction later) then
            gets gradient only through the field's input ``z_tau``, as the baseline's predicted latent
            gets it only through its dynamics MLP. If false (the spec read literally), the term
            ``- z_s`` also pulls ``z_s`` straight towards ``z_tgt``: the encoder is rewarded for mapping
            consecutive observations close together, and with nothing else holding the latents apart
            their spread across states shrinks during pretraining (see ``results/study_pwm_objective/NOTES.md``).
        endpoint_loss_coef: if > 0, each step's loss also has ``endpoint_loss_coef * mean((z_next - z_tgt)^2)``,
            the baseline's dynamics loss on the integrated next latent ``z_next = next(z_s, a)``, inside the
            same divisor. 0 (the default) is the spec's pure flow-matching loss. Why an option: on a
            walker-walk replay, a detached target without it let the integrated latents drift hundreds of
            times further than the encoder's latents move per step (see ``benchmarks/results/learning_notes.md``).
        detach_flow_matching_latents: if true, the flow-matching loss trains the velocity field alone:
            ``z_s`` (in ``z_tau`` and in the target) and the loss's divisor are constants of the loss, so
            the encoder and the rollout's earlier steps learn only from the reward loss (through the
            integrated latents, which keep their gradient) and the optional endpoint term. Why an
            option: through ``z_s`` the flow-matching loss pulls each latent towards the next one and the
            encoder slows its latents down (walker-walk: 0.04 of their variance per step after 3,000
            updates on a fixed replay, 0.002 online), while a field fitted to a fixed encoder follows
            walker's motion as well as the baseline's MLP. Online on walker-walk the option kept the latents
            moving, but the policy did not hold what it learned (``benchmarks/results/learning_notes.md``).
        recompute_substeps: in world-model updates, keep only each environment step's input latent for
            the backward pass and recompute the K Euler sub-steps there (activation checkpointing):
            the same gradients, less activation memory, one more forward pass of the dynamics.

    The velocity MLP takes ``[z, a, task_emb, t]`` and has the same hidden widths (``units``) as the
    baseline dynamics, so its parameter count exceeds the baseline's by exactly ``units[0]`` (the
    first layer's weights for the extra time input). Its head is a plain linear layer: a velocity is
    unconstrained, unlike the baseline's SimNorm-ed next latent.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        integrate_steps: int = 4,
        fm_tau_sampling: Literal["uniform", "midpoint"] = "uniform",
        latent_projection: Literal["none", "simplex"] = "none",
        latent_clip_norm: float | None = None,
        recompute_substeps: bool = False,
        detach_velocity_target: bool = False,
        endpoint_loss_coef: float = 0.0,
        detach_flow_matching_latents: bool = False,
        **kwargs,
    ):
        super().__init__(obs_dim, act_dim, **kwargs)
        if int(integrate_steps) < 1:
            raise ValueError(f"world_model_config.integrate_steps must be >= 1, got {integrate_steps}")
        if fm_tau_sampling not in TAU_SAMPLING_MODES:
            raise ValueError(
                f"world_model_config.fm_tau_sampling must be one of {TAU_SAMPLING_MODES}, got {fm_tau_sampling!r}"
            )
        if latent_projection not in LATENT_PROJECTIONS:
            raise ValueError(
                f"world_model_config.latent_projection must be one of {LATENT_PROJECTIONS}, got {latent_projection!r}"
            )
        if endpoint_loss_coef < 0:
            raise ValueError(f"world_model_config.endpoint_loss_coef must be >= 0, got {endpoint_loss_coef}")
        if latent_clip_norm is not None and latent_clip_norm <= 0:
            raise ValueError(f"world_model_config.latent_clip_norm must be > 0 or null, got {latent_clip_norm}")
        self.integrate_steps = int(integrate_steps)
        self.fm_tau_sampling = fm_tau_sampling
        self.latent_projection = latent_projection
        self.latent_clip_norm = latent_clip_norm
        self.recompute_substeps = bool(recompute_substeps)
        self.detach_velocity_target = bool(detach_velocity_target)
        self.endpoint_loss_coef = float(endpoint_loss_coef)
        self.detach_flow_matching_latents = bool(detach_flow_matching_latents)
        self._velocity = mlp(self.latent_dim + self.act_dim + self.task_dim + 1, self.units, self.latent_dim)
        self._velocity.apply(init_weights)
        self.register_buffer("latent_clip_count", torch.zeros((), dtype=torch.long), persistent=False)

    def velocity(self, z: torch.Tensor, action: torch.Tensor, t: torch.Tensor, task: TaskLike = None) -> torch.Tensor:
        """Velocity ``[..., latent_dim]`` at latent ``z``, action ``a`` and flow time ``t`` ``[..., 1]``."""
        x = self._with_task(torch.cat([z, self.mask_action(action, task)], dim=-1), task)
        return self._velocity(torch.cat([x, t.expand(*x.shape[:-1], 1)], dim=-1))

    def _clip(self, z: torch.Tensor) -> torch.Tensor:
        if self.latent_clip_norm is None:
            return z
        norm = z.norm(dim=-1, keepdim=True)
        too_large = norm > self.latent_clip_norm
        self.latent_clip_count += too_large.sum()
        return torch.where(too_large, z * (self.latent_clip_norm / norm.clamp_min(1e-12)), z)

    def next(
        self, z: torch.Tensor, action: torch.Tensor, task: TaskLike = None, first_velocity: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Integrate ``v`` from t=0 to 1: ``z <- z + dt * v(z, a, (k + 0.5) dt)`` for ``k = 0..K-1``,
        then apply the optional projection and norm clip.

        ``first_velocity``: ``v(z, a, 0.5 dt)`` ``[..., latent_dim]`` if the caller has computed it
        already (the training rollout evaluates it in one call with the flow-matching prediction).
        """
        if self._recomputes_substeps():
            z = torch.utils.checkpoint.checkpoint(self._integrate, z, action, task, first_velocity, use_reentrant=False)
        else:
            z = self._integrate(z, action, task, first_velocity)
        if self.latent_projection == "simplex":
            z = project_onto_simplices(z, self.simnorm_dim)
        return self._clip(z)

    def _recomputes_substeps(self) -> bool:
        # Only while the model itself trains: under a freeze (the actor's rollouts) the parameters'
        # requires_grad flags change before the backward pass, and a recomputation must match the forward.
        return self.recompute_substeps and torch.is_grad_enabled() and self._velocity[0].weight.requires_grad

    def _substep_time(self, k: int, like: torch.Tensor) -> torch.Tensor:
        """Flow time ``[1]`` of Euler sub-step ``k``: the midpoint ``(k + 0.5) / K``."""
        return torch.full((1,), (k + 0.5) / self.integrate_steps, device=like.device, dtype=like.dtype)

    def _integrate(
        self, z: torch.Tensor, action: torch.Tensor, task: TaskLike, first_velocity: torch.Tensor | None = None
    ) -> torch.Tensor:
        dt = 1.0 / self.integrate_steps
        for k in range(self.integrate_steps):
            if k == 0 and first_velocity is not None:
                velocity = first_velocity
            else:
                velocity = self.velocity(z, action, self._substep_time(k, z), task)
            z = z + dt * velocity
        return z

    def sample_tau(self, like: torch.Tensor) -> torch.Tensor:
        """Flow times ``[B, 1]`` for a batch of latents ``like`` ``[B, latent_dim]``."""
        shape = (*like.shape[:-1], 1)
        if self.fm_tau_sampling == "midpoint":
            return torch.full(shape, 0.5, device=like.device, dtype=like.dtype)
        return torch.rand(shape, device=like.device, dtype=like.dtype)

    def latent_rollout_and_dynamics_loss(
        self,
        z0: torch.Tensor,
        act_seq: torch.Tensor,
        next_z_seq: torch.Tensor,
        horizon: int,
        gamma: float,
        task: TaskLike = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll the flow dynamics ``horizon`` steps and compute the flow-matching loss along the way.

        Args:
            z0: start latents ``[B, latent_dim]`` (with gradient to the encoder).
            act_seq: actions ``[H, B, act_dim]``.
            next_z_seq: target latents ``E(obs_{t+1})`` ``[H, B, latent_dim]``.
            horizon: H, the number of steps to unroll (``<= act_seq.shape[0]``).
            gamma: discount of the per-step loss weights.
            task: task ids ``[B]`` (multi-task) or None.

        Returns:
            zs: predicted latents ``[H + 1, B, latent_dim]``, ``zs[0] = z0``, ``zs[t+1] = next(zs[t], a_t)``.
            dynamics_loss: ``(1/H) * sum_t gamma^t * mean(|| v(z_tau, a_t, tau) - (z_tgt - z_s) ||^2) / s_t``
                with ``z_s = zs[t]`` (the prediction, so the loss also shapes the earlier steps of the
                rollout; through ``z_tau`` only when ``detach_velocity_target``, not at all when
                ``detach_flow_matching_latents``) and
                ``z_tgt = next_z_seq[t]``, plus the optional endpoint term. The squared norm is averaged
                over latent dimensions and batch, the reduction of the baseline's MSE, so both branches'
                dynamics terms have one scale next to the reward loss; ``s_t`` is the shared
                :meth:`~pwm.models.world_model.LatentWorldModel.dynamics_loss_scale` of step t (1 by
                default).

        The design spec divides by H twice (here, section 4, and again in section 11's pseudocode).
        This helper returns the loss already normalised by ``1/H``; the algorithm must not divide it
        again (``pwm.algorithms.pwm.compute_wm_loss`` does not), exactly as for the baseline branch.
        """
        self._check_rollout_lengths(act_seq, next_z_seq, horizon)
        zs = [z0]
        dynamics_loss = z0.new_zeros(())
        # The field is evaluated at z_tau (the loss) and at z_source (the first Euler sub-step) with the
        # same action: one call on both stacked along the batch is exact (every layer acts per row) and
        # saves a call per step (paired: 0.95x the update at pwm_small, 0.92x at pwm_tiny). Not when the
        # sub-steps are recomputed: that option trades speed for memory.
        fuse_first_substep = not self._recomputes_substeps()
        for t in range(horizon):
            z_source, z_target = zs[-1], next_z_seq[t]
            # the rollout integrates z_source with its gradient; the loss may see it as a constant
            loss_source = z_source.detach() if self.detach_flow_matching_latents else z_source
            tau = self.sample_tau(z_source)
            z_tau = (1.0 - tau) * loss_source + tau * z_target
            first_velocity = None
            if fuse_first_substep:
                first_time = self._substep_time(0, tau).expand_as(tau)
                both = self.velocity(torch.cat([z_tau, z_source]), torch.cat([act_seq[t], act_seq[t]]),
                                     torch.cat([tau, first_time]), _stacked_twice(task))
                predicted_velocity, first_velocity = both.chunk(2)
            else:
                predicted_velocity = self.velocity(z_tau, act_seq[t], tau, task)
            source = loss_source.detach() if self.detach_velocity_target else loss_source
            start = z0.detach() if self.detach_flow_matching_latents else z0
            scale = self.dynamics_loss_scale(loss_source, start, next_z_seq[0])
            step_loss = (predicted_velocity - (z_target - source)).pow(2).mean()
            z_next = self.next(z_source, act_seq[t], task, first_velocity)
            if self.endpoint_loss_coef:
                step_loss = step_loss + self.endpoint_loss_coef * (z_next - z_target).pow(2).mean()
            dynamics_loss = dynamics_loss + gamma**t * step_loss / scale
            zs.append(z_next)
        return torch.stack(zs), dynamics_loss / horizon


def _stacked_twice(task: TaskLike) -> TaskLike:
    """Task ids for a batch stacked twice along its first axis (an int or a 0-d id applies to every row)."""
    if torch.is_tensor(task) and task.dim() > 0:
        return torch.cat([task, task])
    return task
