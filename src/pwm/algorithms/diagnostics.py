"""World-model quality on held-out windows: one yardstick for both dynamics variants.

The flow-matching loss and the baseline's MSE are different objectives, so their training losses
cannot be compared. :func:`world_model_quality` measures what the actor actually consumes instead:
open-loop latent rollouts from encoded start states under the data's actions, scored against the
encoder's own latents of the observed next states, and the rewards predicted along them.

Every latent error is also reported *normalised* by the spread of the target latents across the
batch, so a model cannot look good by collapsing its latent space (a constant encoder predicts
itself perfectly; its normalised error is then undefined and reported as NaN, and its
``latent_spread`` is 0). The normaliser is the batch's own spread, so on windows of a policy that
barely moves (a near-stationary evaluation episode: tiny spread, near-constant reward) the
normalised errors grow by orders of magnitude although the model is no worse; compare the raw
``*_mse`` there, together with ``latent_spread``.

Neither catches an encoder that makes consecutive latents nearly equal: a model that predicts "nothing
moves" then scores a tiny normalised error. ``latent_vs_copy_*`` score the model against that copy
prediction instead, and ``copy_nmse_1`` is the normalised error the copy itself would get.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pwm.algorithms.returns import lambda_returns
from pwm.models.world_model import LatentWorldModel, TaskLike

#: Prefix of every metric this module returns (logged beside the training metrics).
PREFIX = "wm_eval/"


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _pearson(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> float:
    x, y = x.flatten() - x.mean(), y.flatten() - y.mean()
    denominator = (x.pow(2).sum() * y.pow(2).sum()).sqrt()
    return float((x * y).sum() / denominator) if denominator > eps else float("nan")


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor, eps: float = 1e-12) -> float:
    return float(numerator / denominator) if denominator > eps else float("nan")


@torch.no_grad()
def open_loop_latents(wm: LatentWorldModel, obs0: torch.Tensor, action: torch.Tensor,
                      task: TaskLike = None) -> torch.Tensor:
    """The model's open-loop rollout of ``action [H, B, A]`` from ``E(obs0)`` (``obs0 [B, obs_dim]``):
    latents ``[H + 1, B, L]``, no gradient."""
    zs = [wm.encode(obs0, task)]
    for step_action in action:
        zs.append(wm.next(zs[-1], step_action, task))
    return torch.stack(zs)


def reward_action_gradient_norm(wm: LatentWorldModel, z: torch.Tensor, action: torch.Tensor,
                                task: TaskLike = None) -> float:
    """Mean over the batch of ``|| d r_hat(z, a) / d a ||`` at latents ``z [B, L]`` and actions ``a [B, A]``.

    This is the first link of the actor's gradient path: a reward head that ignores the action (a
    flat reward surface) gives the actor nothing to climb, whatever the dynamics.
    """
    with torch.enable_grad():
        action = action.detach().clone().requires_grad_(True)
        predicted = wm.predict_reward(z.detach(), action, task)
        (grad,) = torch.autograd.grad(predicted.sum(), action)
    return float(grad.norm(dim=-1).mean())


def return_action_gradient_norm(wm: LatentWorldModel, z: torch.Tensor, action: torch.Tensor, gamma: float,
                                task: TaskLike = None) -> float:
    """Mean over the batch of ``|| d/d a_0 sum_t gamma^t r_hat_t ||`` along an open-loop rollout.

    ``z [B, L]`` are start latents and ``action [H, B, A]`` the actions of the rollout; only the first
    action is differentiated. This is what the actor's gradient sees through the dynamics: a model
    that predicts well but barely responds to the action gives the actor nothing to climb.
    """
    with torch.enable_grad():
        first = action[0].detach().clone().requires_grad_(True)
        latent, total = z.detach(), z.new_zeros(z.shape[0])
        for t in range(action.shape[0]):
            step_action = first if t == 0 else action[t]
            total = total + gamma**t * wm.predict_reward(latent, step_action, task)
            latent = wm.next(latent, step_action, task)
        (grad,) = torch.autograd.grad(total.sum(), first)
    return float(grad.norm(dim=-1).mean())


def world_model_quality(wm: LatentWorldModel, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                        task: TaskLike = None, gamma: float = 0.99) -> dict[str, float]:
    """Like-for-like world-model diagnostics on windows the model did not train on.

    Args:
        obs: ``[H + 1, B, obs_dim]``; action: ``[H, B, act_dim]``; reward: ``[H, B]``; task: ``[B]`` or None.

    Returns (keys prefixed with ``wm_eval/``):
        latent_mse_1, latent_mse_H: mean squared error per latent dimension after 1 and after H
            open-loop steps, against ``E(obs[t])``.
        latent_nmse_1, latent_nmse_H, latent_nmse_mean: those errors divided by the per-dimension
            variance of the targets across the batch (0 = perfect; 1 = no better than predicting
            the batch mean); ``mean`` averages steps 1..H.
        reward_mse_1, reward_mse_H_rollout: squared error of the predicted reward at the encoded
            start state, and along the whole open-loop rollout (steps 0..H-1).
        reward_corr_1, reward_corr_rollout: Pearson correlation of predicted and true rewards, same
            two places (NaN when the true rewards are constant).
        reward_nmse_rollout: ``reward_mse_H_rollout`` divided by the variance of the true rewards.
        latent_spread: mean over dimensions of the standard deviation of ``E(obs)`` across the batch
            (a collapse signal: 0 means every state maps to one latent).
        latent_vs_copy_1, latent_vs_copy_H: mean over the batch of ``|| z_hat_t - E(obs[t]) ||`` divided by
            that of ``|| E(obs[t]) - E(obs[0]) ||``, at t = 1 and t = H: the model's error against the
            prediction that the latent does not move (below 1: the model predicts some of the motion; 1:
            no better than copying the start latent).
        copy_nmse_1: the normalised one-step error of that copy prediction, ``mean || E(obs[1]) - E(obs[0]) ||^2``
            per dimension over the targets' variance: how far the encoder's latent moves in one step
            against its spread across states. Beside ``latent_nmse_1``: an encoder whose latents barely
            move makes every model's normalised error small (a slow-feature collapse).
        reward_action_grad: see :func:`reward_action_gradient_norm`.
        return_action_grad: see :func:`return_action_gradient_norm` (discount ``gamma``).
        heldout_error: ``latent_nmse_mean + reward_nmse_rollout`` (a NaN term counts as 0), the single
            number the pretraining plateau rule watches.
    """
    horizon = action.shape[0]
    if obs.shape[0] != horizon + 1 or reward.shape[0] != horizon:
        raise ValueError(f"world_model_quality: expected obs [H+1, ...], action [H, ...], reward [H, ...]; got "
                         f"{tuple(obs.shape)}, {tuple(action.shape)}, {tuple(reward.shape)}")
    with _eval_mode(wm):
        zs = open_loop_latents(wm, obs[0], action, task)
        with torch.no_grad():
            targets = wm.encode(obs[1:], task)
            predicted_reward = wm.predict_reward(zs[:-1], action, task)  # [H, B]
        grad_norm = reward_action_gradient_norm(wm, zs[0], action[0], task)
        return_grad_norm = return_action_gradient_norm(wm, zs[0], action, gamma, task)
    step_mse = (zs[1:] - targets).pow(2).mean(dim=(1, 2))  # [H]
    step_var = targets.var(dim=1, unbiased=False).mean(dim=-1)  # [H]
    nan = torch.full_like(step_mse, float("nan"))
    step_nmse = torch.where(step_var > 1e-12, step_mse / step_var.clamp_min(1e-12), nan)  # NaN: collapsed targets
    reward_error = (predicted_reward - reward).pow(2)
    first_motion, last_motion = targets[0] - zs[0], targets[-1] - zs[0]  # the copy prediction's errors
    metrics = {
        "latent_mse_1": float(step_mse[0]),
        "latent_mse_H": float(step_mse[-1]),
        "latent_nmse_1": float(step_nmse[0]),
        "latent_nmse_H": float(step_nmse[-1]),
        "latent_nmse_mean": float(step_nmse.mean()),
        "reward_mse_1": float(reward_error[0].mean()),
        "reward_mse_H_rollout": float(reward_error.mean()),
        "reward_corr_1": _pearson(predicted_reward[0], reward[0]),
        "reward_corr_rollout": _pearson(predicted_reward, reward),
        "reward_nmse_rollout": _ratio(reward_error.mean(), reward.var(unbiased=False)),
        "latent_spread": float(zs[0].std(dim=0, unbiased=False).mean()),
        "latent_vs_copy_1": _ratio((zs[1] - targets[0]).norm(dim=-1).mean(), first_motion.norm(dim=-1).mean()),
        "latent_vs_copy_H": _ratio((zs[-1] - targets[-1]).norm(dim=-1).mean(), last_motion.norm(dim=-1).mean()),
        "copy_nmse_1": _ratio(first_motion.pow(2).mean(), step_var[0]),
        "reward_action_grad": grad_norm,
        "return_action_grad": return_grad_norm,
    }
    metrics["heldout_error"] = sum(v for v in (metrics["latent_nmse_mean"], metrics["reward_nmse_rollout"]) if v == v)
    return {PREFIX + k: v for k, v in metrics.items()}


@torch.no_grad()
def policy_imagination_gap(wm: LatentWorldModel, actor_action, obs0: torch.Tensor, reward: torch.Tensor,
                           task: TaskLike = None) -> dict[str, float]:
    """Model exploitation on windows of the policy's own episodes: the reward the model predicts when
    the (deterministic) policy acts on the model's own latents, against the reward it really earned.

    The windows must come from episodes of that same deterministic policy in a deterministic
    environment (evaluation episodes), so ``reward`` is what the policy earns from each start state.
    :func:`world_model_quality` rolls the model out under the recorded actions; here the policy
    chooses every action from the imagined latent, as in the actor's training rollouts. A model
    that tracks the recorded actions can still be exploited: a policy that reacts to the model's
    errors steers its imagination where the model overrates the reward.

    Args:
        actor_action: ``latent [B, latent_dim] -> action [B, act_dim]``, the policy on a latent.
        obs0: the windows' start observations ``[B, obs_dim]``.
        reward: the real rewards that followed ``[H, B]``.
        task: task ids ``[B]`` (multi-task) or None.

    Returns (keys prefixed with ``wm_eval/``):
        imagined_policy_reward: mean predicted reward per step along the closed-loop rollouts.
        imagined_policy_gap: that minus the mean real reward per step (0: no exploitation; the
            actor is trained on the imagined one, so a large positive gap is a policy that
            improves in the model, not in the task).
        imagined_policy_gap_final: the same gap at the rollouts' last step.
    """
    with _eval_mode(wm):
        imagined = closed_loop_rewards(wm, actor_action, wm.encode(obs0, task), reward.shape[0], task)  # [H, B]
    gap = imagined - reward  # [H, B]
    return {PREFIX + "imagined_policy_reward": float(imagined.mean()),
            PREFIX + "imagined_policy_gap": float(gap.mean()),
            PREFIX + "imagined_policy_gap_final": float(gap[-1].mean())}


def returns_to_go(reward: torch.Tensor, gamma: float, final_value: float) -> torch.Tensor:
    """Discounted real returns ``G_t = sum_{k>=1} gamma^(k-1) r[t+k] + gamma^(T-t) final_value`` for
    ``t = 0 .. T-1`` (``[T]``), from an episode's rewards ``[T + 1]`` in the TD-MPC2 layout (row ``t``
    is the reward of arriving at ``obs[t]``; row 0 is not read). ``final_value`` bootstraps a
    time-limited episode at ``obs[T]`` (0 for one that terminated)."""
    rewards = reward[1:].double()
    next_values = torch.zeros_like(rewards)
    next_values[-1] = final_value  # with lam = 1 only the last next-value (the bootstrap) is read
    return lambda_returns(rewards, next_values, gamma, lam=1.0)


#: Prefix of the critic-calibration metrics (:func:`value_calibration`).
CRITIC_PREFIX = "critic_eval/"


def value_calibration(values: list[torch.Tensor], rewards: list[torch.Tensor], terminated: list[bool],
                      gamma: float) -> dict[str, float]:
    """How far the critic's values are from the real returns of the policy's own episodes.

    PWM's critic learns only from imagined rollouts (unless ``critic_data_coef > 0``), so a policy
    that the model flatters is also one its critic overvalues; this is the critic's side of
    :func:`imagination_gap`, measured on every state of real episodes.

    Args:
        values: per episode, the critic's values at the encoder latents of its observations ``[T + 1]``.
        rewards: per episode, its rewards ``[T + 1]`` (TD-MPC2 layout, row 0 not read).
        terminated: per episode, whether it ended in a terminal state (no bootstrap at ``obs[T]``).
        gamma: the discount.

    Returns ``critic_eval/value_bias`` (mean of ``V(obs_t) - G_t`` over every state ``t < T``:
    positive means overvalued), ``critic_eval/value_abs_error`` (mean ``|V - G|``),
    ``critic_eval/value_corr`` (Pearson correlation of V and G across those states) and
    ``critic_eval/mean_return`` (mean ``G``, for scale).
    """
    if not values:
        return {}
    predicted, real = [], []
    for value, reward, ended in zip(values, rewards, terminated):
        value = value.detach().double().cpu()
        predicted.append(value[:-1])
        real.append(returns_to_go(reward.detach().cpu(), gamma, 0.0 if ended else float(value[-1])))
    predicted_t, real_t = torch.cat(predicted), torch.cat(real)
    error = predicted_t - real_t
    return {CRITIC_PREFIX + "value_bias": float(error.mean()),
            CRITIC_PREFIX + "value_abs_error": float(error.abs().mean()),
            CRITIC_PREFIX + "value_corr": _pearson(predicted_t, real_t),
            CRITIC_PREFIX + "mean_return": float(real_t.mean())}


@torch.no_grad()
def imagination_gap(wm: LatentWorldModel, actor_action, obs: torch.Tensor, action: torch.Tensor,
                    steps: int, task: TaskLike = None) -> dict[str, torch.Tensor]:
    """Rewards along one real episode next to what the model predicts for it, the probe of model
    exploitation: an actor that found actions the model overrates shows a closed-loop imagined
    reward far above the real one.

    Args:
        wm: the world model.
        actor_action: ``latent [1, L] -> action [1, A]``, the policy acting on a latent (deterministic).
        obs: the episode's observations ``[T + 1, obs_dim]``; action: its actions ``[T, A]`` (row ``t``
            taken at ``obs[t]``).
        steps: how many steps to compare (at most ``T``).
        task: task id ``[1]`` (multi-task) or None.

    Returns ``[steps]`` tensors:
        one_step: ``r_hat(E(obs[t]), a_t)``, the reward head at the real states.
        open_loop: the reward predicted along the model's rollout from ``E(obs[0])`` under the real actions.
        imagined_policy: the reward predicted when the policy acts on the model's own latents from
            ``E(obs[0])`` (what the actor is trained on, without critic or noise).
    """
    if action.shape[0] < steps or obs.shape[0] < steps + 1:
        raise ValueError(f"imagination_gap: the episode has {action.shape[0]} steps, fewer than steps={steps}")
    task_t = None if task is None else task.reshape(1)
    one_step = wm.predict_reward(wm.encode(obs[:steps], None if task is None else task_t.expand(steps)),
                                 action[:steps], None if task is None else task_t.expand(steps))
    open_loop = []
    z_data = z0 = wm.encode(obs[:1], task_t)
    for t in range(steps):
        open_loop.append(wm.predict_reward(z_data, action[t:t + 1], task_t))
        z_data = wm.next(z_data, action[t:t + 1], task_t)
    imagined = closed_loop_rewards(wm, actor_action, z0, steps, task_t)[:, 0]
    return {"one_step": one_step, "open_loop": torch.cat(open_loop), "imagined_policy": imagined}


@torch.no_grad()
def closed_loop_rewards(wm: LatentWorldModel, actor_action, z0: torch.Tensor, steps: int,
                        task: TaskLike = None) -> torch.Tensor:
    """Rewards ``[steps, B]`` the model predicts while the policy ``actor_action`` (``latent [B, L] ->
    action [B, A]``) acts on the model's own latents from ``z0 [B, latent_dim]``: the actor's training
    rollout, without critic or noise."""
    z, rewards = z0, []
    for _ in range(steps):
        action = actor_action(z)
        rewards.append(wm.predict_reward(z, action, task))
        z = wm.next(z, action, task)
    return torch.stack(rewards)
