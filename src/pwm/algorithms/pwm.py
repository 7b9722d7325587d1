"""PWM: policy learning by backpropagating through a learned latent world model.

One training iteration on a batch of ``H + 1``-step windows ``(obs, action, reward, task)``:

1. World model: :func:`compute_wm_loss` (dynamics + reward), Adam step with grad clipping.
2. Actor: from encoded start states, roll the *frozen* world model ``H`` steps with the policy and
   maximise ``sum_{t<H} gamma^t r_t + gamma^H V'(z_H)`` by backpropagation through the rollout
   (``V'`` is the target critic, reduced over the ensemble); with ``actor_bc_coef``, that objective
   in units of its batch mean, minus a penalty on the distance to the batch's own actions.
3. Critic: regress every critic on TD(lambda) targets built from the rollout's rewards and target
   critic values (with ``critic_data_coef``, also on those of the batch's real windows), then
   Polyak-average the target critic.

Every update is NaN-guarded: a non-finite loss or gradient norm skips that optimizer step and is
counted in :attr:`PWM.nan_counts` (never silently zeroed).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from pwm.algorithms.diagnostics import open_loop_latents
from pwm.algorithms.returns import lambda_returns
from pwm.models.world_model import LatentWorldModel, TaskLike

LR_SCHEDULES = ("constant", "linear")
CRITIC_DATA_LOSSES = ("mse", "lower_bound")
CRITIC_DATA_LATENTS = ("encoded", "predicted")
#: World-model submodules handed to the WM optimizer; ``_velocity`` exists only on FlowWorldModel.
WM_MODULE_NAMES = ("_task_emb", "_encoder", "_dynamics", "_velocity", "_reward")


#: ``|tanh(mean)|`` above which ``actor/saturated_fraction`` counts an action dimension as saturated
#: (``1 - tanh^2 < 0.02``: the tanh passes under 2% of the gradient).
SATURATED_ACTION = 0.99


def discount_weights(horizon: int, gamma: float, device: torch.device | None = None) -> torch.Tensor:
    """``[gamma^0, ..., gamma^(H-1)]``."""
    return gamma ** torch.arange(horizon, dtype=torch.float32, device=device)


def compute_wm_loss(
    wm: LatentWorldModel,
    obs: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    gamma: float,
    task: TaskLike = None,
    dynamics_coef: float = 1.0,
    reward_coef: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """World-model loss on a batch of windows.

    Args:
        obs: ``[H + 1, B, obs_dim]``; action: ``[H, B, act_dim]``; reward: ``[H, B]``; task: ``[B]`` or None.
        gamma: base of the per-step loss weights ``gamma^t`` (the spec's discount; PWM passes
            ``alg.wm_rho`` instead when it is set, TD-MPC2's ``rho``).
        dynamics_coef, reward_coef: weights of the two terms. The defaults (1, 1) give the spec's
            ``L_wm = L_dyn + L_rew``; the alg configs set TD-MPC2's ``consistency_coef=20`` and
            ``reward_coef=0.1`` (see ``wm_dynamics_coef`` in ``scripts/cfg/alg/*.yaml``), because a
            squared error between SimNorm latents is ~100x smaller than a two-hot cross-entropy and,
            unweighted, the dynamics of the baseline barely train.

    Returns:
        total: ``dynamics_coef * L_dyn + reward_coef * L_rew``, each term already normalised by
            ``1/H`` (spec section 4). The spec's section 11 pseudocode divides the sum by H once
            more; we do not, in either branch, so the flow and baseline dynamics terms share one scale.
        terms: detached, unweighted ``{"dynamics_loss", "reward_loss"}``.
        zs: predicted latents ``[H + 1, B, latent_dim]``.

    Dynamics: ``wm.latent_rollout_and_dynamics_loss``: the flow-matching loss for FlowWorldModel,
    the baseline gamma-weighted MSE rollout for the MLP world model. Targets
    ``E(obs[1:])`` are computed without gradient (TD-MPC2's consistency target). Reward loss is the
    same in both branches: ``(1/H) sum_t gamma^t mean_B two_hot_loss(R(zs[t], a_t), r_t)``.
    """
    horizon = action.shape[0]
    if obs.shape[0] != horizon + 1 or reward.shape[0] != horizon:
        raise ValueError(
            f"compute_wm_loss: expected obs [H+1, ...], action [H, ...], reward [H, ...]; got obs "
            f"{tuple(obs.shape)}, action {tuple(action.shape)}, reward {tuple(reward.shape)}"
        )
    z0 = wm.encode(obs[0], task)
    with torch.no_grad():
        next_z = wm.encode(obs[1:], task)
    # The spec's guarded branch: the flow model's method computes the flow-matching loss, the
    # baseline's (LatentWorldModel's) the gamma-weighted MSE rollout.
    zs, dynamics_loss = wm.latent_rollout_and_dynamics_loss(z0, action, next_z, horizon, gamma, task)
    per_step_reward_loss = wm.two_hot.loss(wm.reward(zs[:-1], action, task), reward).mean(-1)
    reward_loss = (discount_weights(horizon, gamma, obs.device) * per_step_reward_loss).sum() / horizon
    terms = {"dynamics_loss": dynamics_loss.detach(), "reward_loss": reward_loss.detach()}
    return dynamics_coef * dynamics_loss + reward_coef * reward_loss, terms, zs


class WorldModelLoss(nn.Module):
    """:func:`compute_wm_loss` as a module, so the world-model update can be wrapped in
    ``DistributedDataParallel`` (which synchronises gradients of what its ``forward`` computes)."""

    def __init__(self, wm: LatentWorldModel, gamma: float, dynamics_coef: float = 1.0, reward_coef: float = 1.0):
        super().__init__()
        self.wm, self.gamma = wm, gamma
        self.dynamics_coef, self.reward_coef = dynamics_coef, reward_coef

    def forward(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, task: TaskLike = None):
        return compute_wm_loss(self.wm, obs, action, reward, self.gamma, task, self.dynamics_coef, self.reward_coef)


def wm_parameter_groups(wm: nn.Module) -> list[dict[str, Any]]:
    """Parameter groups for the WM optimizer: one per submodule in :data:`WM_MODULE_NAMES`.

    Raises if the model has trainable parameters outside those modules, so a new submodule can not
    silently go untrained.
    """
    groups = [
        {"params": list(getattr(wm, name).parameters()), "name": name}
        for name in WM_MODULE_NAMES
        if hasattr(wm, name)
    ]
    covered = {id(p) for group in groups for p in group["params"]}
    missing = [n for n, p in wm.named_parameters() if p.requires_grad and id(p) not in covered]
    if missing:
        raise ValueError(f"world-model parameters not covered by the optimizer: {missing}")
    return groups


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients accumulating in ``module``'s parameters (they still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def esnr_proxy(split_grads: torch.Tensor, eps: float = 1e-20) -> float:
    """Gradient signal-to-noise ratio from per-split gradients ``[M, P]`` (M >= 2).

    ``ESNR = ||mean_m g_m||^2 / sum_p var_m(g_{m,p})``: the squared norm of the mean gradient over M
    equal minibatch splits divided by the summed (unbiased) variance across the splits, the usual
    definition of a gradient SNR. Higher means the batch gradient direction is more consistent.
    (A per-parameter average of mean^2/var is heavy-tailed: one parameter with a tiny variance
    dominates it; this ratio of sums is not.)
    """
    mean = split_grads.mean(0)
    var = split_grads.var(0, unbiased=True)
    return (mean.pow(2).sum() / (var.sum() + eps)).item()


class PWM:
    """PWM learner: world model, actor, critic ensemble, target critic and their optimizers.

    Args:
        world_model: a :class:`~pwm.models.world_model.LatentWorldModel` (baseline or flow).
        actor: maps ``[..., latent_dim (+ task_dim)]`` to actions in ``[-1, 1]``.
        critic: :class:`~pwm.models.critic.CriticEnsemble` on the same inputs.
        horizon: H, latent rollout length for actor and world-model training.
        gamma: discount; lam: TD(lambda) parameter of the critic targets.
        model_lr, actor_lr, critic_lr: Adam learning rates.
        wm_grad_norm, actor_grad_norm, critic_grad_norm: gradient clipping norms.
        critic_iterations: critic gradient steps per iteration; critic_batch_size: samples per step.
        critic_tau: Polyak rate of the target critic (fraction of the online weights mixed in).
        esnr_splits: M >= 2 splits the actor batch into M equal parts, whose gradients are averaged
            (the same update as one pass) and also give the ESNR proxy; 1 disables it.
        esnr_every: measure the ESNR proxy (and pay for the M passes) and the critic's slope
            (:meth:`value_latent_grad`, :meth:`value_model_gap`) on every ``esnr_every``-th actor update only;
            the others take one pass.
        wm_dynamics_coef, wm_reward_coef: weights of the world-model loss terms (see :func:`compute_wm_loss`).
        wm_normalized_dynamics_coef: the dynamics weight used instead of ``wm_dynamics_coef`` when the world
            model's ``normalize_dynamics_loss`` is on. That loss is in units of the latent variance (about
            0.005-0.01 for SimNorm latents here), so the same weight would count it 100-200x more against
            the reward term. A sweep of this weight (0.2 / 1 / 5 / 20) on a cartpole-balance replay gave
            flow's reward head 6x less error at 0.2 than at 20 with no worse dynamics, and online at 0.2
            flow learned cartpole-balance, which it had not at 20 (``benchmarks/results/normalized_weight/``).
            The same weight serves ``dynamics_loss_normalizer="motion"`` (untuned there).
        wm_rho: base of the per-step weights ``rho^t`` of the world-model loss; None uses ``gamma`` (the
            spec's choice). TD-MPC2 uses 0.5, which puts the weight on the first steps of a rollout,
            where the predicted latents the reward head learns from are still close to the data; the
            MLP dynamics needs that, the flow dynamics (which corrects its own rollout's drift only
            where the loss has weight) suffers from it.
        detach_actor_input: PWM's ``detach``: the actor reads a detached latent in the rollouts, so
            the gradient reaches earlier steps only through the dynamics and reward, not back through
            the policy's own dependence on the state (a feedback path whose Jacobian product grows
            with the horizon and with the sharpness of the policy).
        actor_entropy_coef: weight ``alpha`` of an entropy bonus in the actor's objective,
            ``sum_t gamma^t (r_t + alpha * H_t)`` with ``H_t = -log pi(a_t | z_t)`` of the tanh-squashed
            Gaussian (SAC's and TD-MPC2's policy term; the critic's targets stay reward-only, as
            TD-MPC2's). 0 is PWM's and the spec's objective. Without it the tanh can saturate for good:
            online on cup-catch, flow's actor ended with pre-tanh means of 5-6 on every state, one
            constant action, ``1 - tanh^2`` of 8e-5 and an actor gradient of 3e-4, and its exploration
            noise no longer changed the action, so the data stopped covering anything else. The
            ``-log(1 - tanh(u)^2)`` part of ``-log pi`` pulls such a policy back (gradient ``2 alpha``
            per dimension at saturation, whatever the model says). With 0.01 flow's actor stayed out of
            saturation there; flow learned the task only with ``normalize_dynamics_loss`` as well
            (``benchmarks/results/entropy/`` and ``benchmarks/results/normalized/``). 0.01 is small
            against values near 130-200 (DMC rewards), and on reacher-easy two of three baseline seeds
            still drifted to 25-39% saturated actions, stopped exploring and stalled (255 and 334 at 100k
            steps); at 0.1 both learned (808 and 774; ``benchmarks/results/entropy01/``). With
            ``actor_entropy_target`` set, this is only alpha's starting value.
        actor_entropy_target: None keeps ``alpha`` fixed at ``actor_entropy_coef``. A number tunes it, as
            SAC does (Haarnoja et al., 2018, "Soft actor-critic algorithms and applications"): after each
            actor step ``log alpha`` takes an Adam step on ``log alpha * mean(H_t - target * d)``, ``d``
            a sample's number of (unpadded) action dimensions, so alpha falls while the policy's entropy
            is above ``target`` per dimension and rises while it is below. Why: a fixed alpha counts for
            more the smaller the values are.
            On cup-catch (baseline, seed 0, alpha 0.1) the policy found catches at 60-70k steps, its
            entropy down to -0.5; while the critic's values were still small (mean target 21-67) the
            bonus pushed the entropy back to 1.2 and the catches were lost (93 at 100k steps). At
            alpha 0.01 that seed learned (914), but two reacher-easy seeds saturated their tanh
            (25-39% of actions) and stalled. A target entropy holds neither extreme, whatever the value
            scale. SAC's rule is -1 per dimension; the runs that learned at alpha 0.1 held -0.5 to 0.3 per
            dimension (``benchmarks/results/entropy01/``, ``benchmarks/results/learning_notes.md``).
        actor_entropy_lr: Adam learning rate of ``log alpha`` under ``actor_entropy_target``. SAC uses
            3e-4 with one update per environment step; the online loop here makes about one update per
            ten steps, so the same reaction per environment step needs about ten times the rate.
        critic_data_coef: weight of a second critic loss on the replay's own windows: each critic step
            also regresses the critics on TD(lambda) targets of the batch's real transitions (encoder
            latents of the observations, the data's rewards, the target critic at the next latents).
            0 is PWM's and the spec's critic, which learns only from the policy's imagined rollouts.
            There a sparse reward can stay out of reach: online on cup-catch, flow's seed 1 valued
            states with the ball in the cup at 198 (the discounted sum of 2 per step), every other
            state at about 0, and its policy's 16-step rollouts from those never reached the cup, so
            its return was flat in the action for 100k steps (the runs that learned valued the other
            states at 140-170). Real episodes that did catch carry that value back along the swing.
            TD-MPC2 learns its values from the replay as well. At 1, that seed learned cup-catch with
            both variants, and flow swung up pendulum-swingup (``benchmarks/results/data_critic/``).
            The cost: the two targets disagree (current policy vs the data's policies), and the critic
            ends 3.5-19x steeper in the latent (``critic/value_latent_grad``). On cartpole-balance that
            cost flow the task (751 against 997 at 100k steps, one seed).
        critic_data_loss: how ``critic_data_coef``'s term treats those targets. ``"mse"``: a
            regression, so the critic learns a mix of the current policy's values (imagined targets)
            and the data-collecting policies' (real ones), and where the policy has got better than
            its data the real targets pull its values down. ``"lower_bound"``: only a critic below a
            real target is penalised, ``max(G - V, 0)^2``: what a past policy earned from a state,
            the current one can earn too (self-imitation learning's bound, Oh et al., 2018), so real
            returns raise values they exceed and never lower the others. Online, one seed each: it
            learned cup-catch seed 1 with flow without the regression's drops, but the baseline lost
            reacher-easy with it (166 against 787 at 100k), its critic 19x steeper
            (``benchmarks/results/data_critic/lower_bound/``). At ``critic_data_coef=0.1`` the lower bound
            kept the gains (flow: cup-catch seed 1 959, pendulum-swingup 698 at 100k) and lost neither
            task (baseline reacher-easy 848, flow cartpole-balance 999), its critics about as smooth as
            without (one seed each, ``benchmarks/results/data_critic/lower_bound_weight01/``).
        critic_data_latents: the states of ``critic_data_coef``'s term. ``"encoded"``: the encoder's latents
            of the window's observations. ``"predicted"``: the world model's open-loop rollout of the
            window's real actions from the encoder's first latent, the kind of latent the imagined targets
            and the actor's rollouts see. Why it exists: with encoded latents the critic can value the two
            kinds differently (:meth:`value_model_gap`). On reacher-easy (baseline, lower bound, weight 1),
            V changed by 8.2 on average between a state's encoded latent and its one-step prediction, 0.14
            apart against 1.3 between random states (0.5 without the data term). Predicted latents cut that
            to 2.5 but did not rescue the task (274 at 100k steps against 166 encoded, 787 without a data
            term; slope 255 against 499), so the gap was not the cause
            (``benchmarks/results/data_critic/predicted_latents/``).
        critic_data_recent_steps: where ``critic_data_coef``'s windows come from. 0: the training batch,
            drawn from the whole replay, whose returns are those of every policy that collected it.
            ``N > 0``: a separate batch from the replay's last ``N`` steps (online training), whose
            returns are close to the current policy's own, so a regression on them can also lower a
            value the current policy does not earn. Why: on reacher-easy (baseline, lower bound at 0.1)
            two of three seeds stalled (255 and 334 at 100k steps) with critics that valued the states
            of their failed episodes at 114-120 against a real discounted return of 0.1-9 (the imagined
            rollouts of 16 steps there predicted no reward, correctly; the values came from the critic's
            own bootstrap), and a lower bound cannot lower a value. Tried on seed 2 as a regression at weight 1 on the
            last 5,000 steps: it learned earlier (962 at 52.5k steps) but fell back (640 at 100k), its
            critic still overvaluing and valuing the model's predicted latents 4-5 above the encoder's
            (``critic/value_model_gap``), so the imagined targets kept what the real ones took away
            (``benchmarks/results/data_critic/recent/``). The entropy bonus at 0.1 fixed that seed
            instead (``actor_entropy_coef``).
        actor_bc_coef: weight of a behaviour-cloning penalty in the actor's loss, TD3+BC's form (Fujimoto &
            Gu, 2021): ``-J / mean|J| + actor_bc_coef * mean_i ||tanh(mu(z_i)) - a_i||^2 / d``, ``J`` the rollout
            objective per start state, ``(z_i, a_i)`` the batch's encoded first states and real actions and
            ``d`` their (unpadded) action dimensions; dividing by ``mean|J|`` (no gradient) makes the weight mean
            the same at every value scale. TD3+BC's alpha of 2.5 is 0.4 here. 0 is PWM's and the spec's
            actor. Why: in offline policy extraction nothing corrects a model where the policy leaves the
            data. On the study's replays (``pwm_tiny``) policies of both variants found actions the model
            paid and the task did not: the baseline imagined 1.5-1.8 reward per step on cartpole-balance
            where the task paid 0.66, and on cup-catch both variants ended holding the ball still (198)
            while their critics overvalued the states they visited by +99..+109 (``results/study_short_pretraining/NOTES.md``).
            The penalty keeps the policy near the data's actions, where the model was trained. On cup-catch
            there (seed 0, one run each, mean of the last 3 of 10 evaluations) 0.4 did not help: the baseline
            stayed at 198 (value bias +106), flow reached 888 at 400 updates and ended at 199. At 2.5 the
            baseline ended at 712 (750 at 500 updates, 198 for the next 200, then 591-790). Pretraining the
            world models longer did more for both variants (``scripts/cfg/study/cpu.yaml``), so the study
            leaves this off. The model's rewards along the data's own actions were right (0.06-0.07
            per step against 0.00-0.07 from states without the ball in the cup); along the policy's, they
            rose to 0.45 in 16 steps. ``actor/data_action_error`` logs the distance at every update.
        lr_schedule: ``"constant"``, or ``"linear"``: PWM's (and SHAC's) schedule, every learning rate
            decays linearly from its initial value to ``lr_final`` over a training run; the loops call
            :meth:`set_training_progress` (world-model pretraining keeps its rate constant, as PWM's).
        compile_wm_loss: run the world-model loss (forward and backward) through ``torch.compile``
            (needs a C++ compiler on CPU). Off by default: on a 2-thread CPU at 5M it made the baseline's
            update 1.38x slower and flow K=4's 0.95x, after 57 s / 150 s of compiling
            (``benchmarks/bench_updates.py``); measure before turning it on, e.g. on a GPU.
        device: torch device for all modules.
    """

    def __init__(
        self,
        world_model: LatentWorldModel,
        actor: nn.Module,
        critic: nn.Module,
        horizon: int = 16,
        gamma: float = 0.99,
        lam: float = 0.95,
        model_lr: float = 3e-4,
        actor_lr: float = 5e-4,
        critic_lr: float = 5e-4,
        wm_grad_norm: float = 20.0,
        actor_grad_norm: float = 1.0,
        critic_grad_norm: float = 100.0,
        critic_iterations: int = 8,
        critic_batch_size: int = 1024,
        critic_tau: float = 0.2,
        esnr_splits: int = 4,
        esnr_every: int = 1,
        wm_dynamics_coef: float = 1.0,
        wm_reward_coef: float = 1.0,
        wm_normalized_dynamics_coef: float = 0.2,
        wm_rho: float | None = None,
        detach_actor_input: bool = False,
        actor_entropy_coef: float = 0.0,
        actor_entropy_target: float | None = None,
        actor_entropy_lr: float = 3e-3,
        critic_data_coef: float = 0.0,
        critic_data_loss: str = "mse",
        critic_data_latents: str = "encoded",
        critic_data_recent_steps: int = 0,
        actor_bc_coef: float = 0.0,
        lr_schedule: str = "constant",
        lr_final: float = 1e-5,
        compile_wm_loss: bool = False,
        device: str | torch.device = "cpu",
    ):
        checks = {
            "horizon": horizon >= 1,
            "gamma": 0.0 < gamma <= 1.0,
            "lam": 0.0 <= lam <= 1.0,
            "critic_tau": 0.0 < critic_tau <= 1.0,
            "critic_iterations": critic_iterations >= 0,
            "critic_batch_size": critic_batch_size >= 1,
            "esnr_splits": esnr_splits >= 1,
            "esnr_every": esnr_every >= 1,
            "wm_dynamics_coef": wm_dynamics_coef > 0,
            "wm_reward_coef": wm_reward_coef > 0,
            "wm_normalized_dynamics_coef": wm_normalized_dynamics_coef > 0,
            "wm_rho": wm_rho is None or 0.0 < wm_rho <= 1.0,
            "actor_entropy_coef": actor_entropy_coef >= 0.0,
            "actor_entropy_target": actor_entropy_target is None or math.isfinite(actor_entropy_target),
            "actor_entropy_lr": actor_entropy_lr > 0,
            "critic_data_coef": critic_data_coef >= 0.0,
            "critic_data_loss": critic_data_loss in CRITIC_DATA_LOSSES,
            "critic_data_latents": critic_data_latents in CRITIC_DATA_LATENTS,
            "critic_data_recent_steps": critic_data_recent_steps >= 0,
            "actor_bc_coef": actor_bc_coef >= 0.0 and math.isfinite(actor_bc_coef),
            "lr_schedule": lr_schedule in LR_SCHEDULES,
            "lr_final": lr_final >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"alg.{name} has an invalid value: {locals()[name]!r}")
        self.device = torch.device(device)
        self.wm = world_model.to(self.device)
        self.actor = actor.to(self.device)
        self.critic = critic.to(self.device)
        self.target_critic = _clone_frozen(self.critic)
        self.horizon, self.gamma, self.lam = int(horizon), float(gamma), float(lam)
        self.wm_grad_norm, self.actor_grad_norm, self.critic_grad_norm = wm_grad_norm, actor_grad_norm, critic_grad_norm
        self.critic_iterations, self.critic_batch_size = int(critic_iterations), int(critic_batch_size)
        self.critic_tau, self.esnr_splits, self.esnr_every = float(critic_tau), int(esnr_splits), int(esnr_every)
        self.actor_updates = 0
        #: What computes the WM loss; distributed pretraining replaces it with a DDP wrapper of itself.
        self.wm_rho = float(wm_rho) if wm_rho is not None else self.gamma
        dynamics_coef = wm_normalized_dynamics_coef if self.wm.normalize_dynamics_loss else wm_dynamics_coef
        self.wm_loss: nn.Module = WorldModelLoss(self.wm, self.wm_rho, float(dynamics_coef), float(wm_reward_coef))
        if compile_wm_loss:  # shares the parameters; checkpoints keep saving self.wm
            self.wm_loss = torch.compile(self.wm_loss)
        self.wm_optim = torch.optim.Adam(wm_parameter_groups(self.wm), lr=model_lr)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.lr_schedule, self.lr_final = lr_schedule, float(lr_final)
        self.detach_actor_input = bool(detach_actor_input)
        self.actor_entropy_coef = float(actor_entropy_coef)
        self.actor_entropy_target = None if actor_entropy_target is None else float(actor_entropy_target)
        if self.actor_entropy_target is not None and self.actor_entropy_coef <= 0:
            raise ValueError(f"alg.actor_entropy_target={actor_entropy_target} tunes the entropy bonus, which "
                             f"needs alg.actor_entropy_coef > 0 as its starting value (got {actor_entropy_coef})")
        #: ``log alpha``, learned under ``actor_entropy_target`` (otherwise fixed at log actor_entropy_coef).
        self.log_entropy_coef = torch.tensor(math.log(self.actor_entropy_coef) if self.actor_entropy_coef > 0
                                             else -math.inf, device=self.device)
        self.entropy_coef_optim = None
        if self.actor_entropy_target is not None:
            self.log_entropy_coef.requires_grad_(True)
            self.entropy_coef_optim = torch.optim.Adam([self.log_entropy_coef], lr=actor_entropy_lr)
        self.critic_data_coef = float(critic_data_coef)
        self.critic_data_lower_bound = critic_data_loss == "lower_bound"
        self.critic_data_on_predicted_latents = critic_data_latents == "predicted"
        self.critic_data_recent_steps = int(critic_data_recent_steps)
        self.actor_bc_coef = float(actor_bc_coef)
        if self.actor_entropy_coef > 0 and not hasattr(self.actor, "sample_with_log_prob"):
            raise ValueError(f"alg.actor_entropy_coef={actor_entropy_coef} needs an actor with sample_with_log_prob "
                             f"(a stochastic one); {type(self.actor).__name__} has none")
        for group in self._param_groups():
            group["initial_lr"] = group["lr"]
        self.nan_counts = {"wm": 0, "actor": 0, "critic": 0}
        if self.entropy_coef_optim is not None:
            self.nan_counts["entropy_coef"] = 0

    # ------------------------------------------------------------------ helpers
    def _param_groups(self) -> Iterator[dict[str, Any]]:
        for optim in (self.wm_optim, self.actor_optim, self.critic_optim):
            yield from optim.param_groups

    def scale_model_lr(self, factor: float) -> None:
        """Multiply the world-model learning rate (e.g. a small lr for finetuning a pretrained model)."""
        for group in self.wm_optim.param_groups:
            group["lr"] *= factor
            group["initial_lr"] *= factor

    def set_training_progress(self, fraction: float) -> None:
        """Apply the learning-rate schedule at ``fraction`` (0 = start, 1 = end) of a training run.

        ``linear``: ``lr = initial + (min(lr_final, initial) - initial) * fraction`` for every optimizer
        group (a rate below ``lr_final`` is never raised); ``constant`` leaves the rates alone.
        """
        if self.lr_schedule == "constant":
            return
        _decay_linearly(self._param_groups(), fraction, self.lr_final)

    def set_pretraining_progress(self, fraction: float, lr_final: float) -> None:
        """World-model pretraining's linear schedule (``pretrain.lr_schedule=linear``) at ``fraction`` of
        its iteration cap: the same formula as :meth:`set_training_progress`, on the world model's
        optimizer groups alone and towards ``lr_final``."""
        _decay_linearly(self.wm_optim.param_groups, fraction, lr_final)

    def policy_input(self, z: torch.Tensor, task: TaskLike) -> torch.Tensor:
        """Actor/critic input: the latent, plus the (detached) task embedding in multi-task mode."""
        emb = self.wm.task_embedding(task, z)
        return z if emb is None else torch.cat([z, emb.detach()], dim=-1)

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _guarded_step(self, name: str, params: Sequence[torch.Tensor], optim: torch.optim.Optimizer,
                      max_norm: float, loss: torch.Tensor) -> float:
        """Clip and apply the gradients already in ``params``; skip and count if anything is non-finite."""
        grad_norm = nn.utils.clip_grad_norm_(params, max_norm)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            self.nan_counts[name] += 1
            optim.zero_grad(set_to_none=True)
            return float("nan")
        optim.step()
        optim.zero_grad(set_to_none=True)
        return grad_norm.item()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, task: TaskLike = None, deterministic: bool = False) -> torch.Tensor:
        """Actions ``[B, act_dim]`` for observations ``[B, obs_dim]``; padded action dims are zero."""
        return self.act_latent(self.wm.encode(obs.to(self.device), task), task, deterministic)

    def act_latent(self, z: torch.Tensor, task: TaskLike = None, deterministic: bool = False) -> torch.Tensor:
        """Actions ``[B, act_dim]`` for latents ``[B, latent_dim]`` (encoded or imagined)."""
        return self.wm.mask_action(self.actor(self.policy_input(z, task), deterministic=deterministic), task)

    # ------------------------------------------------------------------ updates
    def update_world_model(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                           task: TaskLike = None) -> dict[str, float]:
        """One WM gradient step on windows ``obs [H+1, B, obs_dim]``, ``action [H, B, A]``, ``reward [H, B]``."""
        start = self._sync()
        self.wm.train()
        loss, terms, _ = self.wm_loss(obs, action, reward, task)
        # Always backward, even on a non-finite loss: under DDP every rank must join the gradient
        # all-reduce; the non-finite gradients then make every rank skip the step together.
        loss.backward()
        params = [p for group in self.wm_optim.param_groups for p in group["params"]]
        grad_norm = self._guarded_step("wm", params, self.wm_optim, self.wm_grad_norm, loss)
        metrics = {f"wm/{k}": v.item() for k, v in terms.items()}
        metrics.update({"wm/total_loss": loss.item(), "wm/grad_norm": grad_norm,
                        "time/wm_update_s": self._sync() - start})
        if hasattr(self.wm, "latent_clip_count"):
            metrics["wm/latent_clips"] = float(self.wm.latent_clip_count.item())
        return metrics

    def rollout(self, z0: torch.Tensor, task: TaskLike = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Policy rollout in the frozen world model.

        Args:
            z0: start latents ``[B, latent_dim]`` (detached).

        Returns:
            zs ``[H + 1, B, latent_dim]``, predicted rewards ``[H, B]``, the actor objective
            ``sum_t gamma^t (r_t + alpha * H_t) + gamma^H V'(z_H)`` per sample ``[B]`` (all differentiable
            w.r.t. the actor), and the entropy estimates ``H_t = -log pi(a_t | z_t)`` ``[H, B]`` (None when
            ``actor_entropy_coef`` is 0: then the objective has no entropy term and none is computed).
        """
        zs, rewards, entropies = [z0], [], []
        with frozen(self.wm):
            for _ in range(self.horizon):
                z = zs[-1]
                actor_input = self.policy_input(z.detach() if self.detach_actor_input else z, task)
                if self.actor_entropy_coef > 0:
                    raw_action, log_prob = self.actor.sample_with_log_prob(actor_input)
                    # padded action dimensions of a multi-task model carry no entropy
                    entropies.append(-self.wm.mask_action(log_prob, task).sum(-1))
                else:
                    raw_action = self.actor(actor_input)
                action = self.wm.mask_action(raw_action, task)
                rewards.append(self.wm.predict_reward(z, action, task))
                zs.append(self.wm.next(z, action, task))
            terminal_value = self.target_critic.value(self.policy_input(zs[-1], task))
        rewards_t = torch.stack(rewards)
        entropies_t = torch.stack(entropies) if entropies else None
        per_step = rewards_t if entropies_t is None else rewards_t + self.entropy_coef * entropies_t
        objective = (discount_weights(self.horizon, self.gamma, z0.device)[:, None] * per_step).sum(0)
        objective = objective + self.gamma**self.horizon * terminal_value
        return torch.stack(zs), rewards_t, objective, entropies_t

    def update_actor_critic(self, obs0: torch.Tensor, task: TaskLike = None,
                            data_targets: tuple[torch.Tensor, torch.Tensor] | None = None,
                            data_action: torch.Tensor | None = None) -> dict[str, float]:
        """Actor step through ``H``-step latent rollouts from ``obs0`` ``[B, obs_dim]``, then critic steps
        (``data_targets``: see :meth:`update_critic`). ``data_action [B, act_dim]``: the actions the data
        took at ``obs0``, which ``actor_bc_coef``'s penalty pulls the policy towards (required when it is > 0)."""
        if self.actor_bc_coef > 0 and data_action is None:
            raise ValueError(f"alg.actor_bc_coef={self.actor_bc_coef} needs the data's actions at the start states")
        start = self._sync()
        self.actor.train()
        with torch.no_grad():
            z0 = self.wm.encode(obs0, task)
        diagnose = self._diagnoses_next_actor_update()
        measure_esnr = diagnose and z0.shape[0] >= 2 * self.esnr_splits
        self.actor_updates += 1
        splits = self.esnr_splits if measure_esnr else 1
        index_splits = torch.arange(z0.shape[0], device=z0.device).chunk(splits)
        params = [p for p in self.actor.parameters() if p.requires_grad]
        split_grads, all_zs, all_rewards, losses, entropies = [], [], [], [], []
        for index in index_splits:
            task_split = task[index] if torch.is_tensor(task) and task.dim() > 0 else task
            zs, rewards, objective, entropy = self.rollout(z0[index], task_split)
            if self.actor_bc_coef > 0:
                # TD3+BC's normalisation: the objective in units of its own batch mean, so that the penalty's
                # weight means the same whatever the task's value scale
                loss = (-objective.mean() / objective.detach().abs().mean().clamp_min(1e-6)
                        + self.actor_bc_coef * self._data_action_error(z0[index], data_action[index], task_split))
            else:
                loss = -objective.mean() / self.horizon
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            split_grads.append(torch.cat([
                (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)
            ]))
            all_zs.append(zs.detach())
            all_rewards.append(rewards.detach())
            losses.append(loss.detach())
            if entropy is not None:
                entropies.append(entropy.detach())
        stacked = torch.stack(split_grads)
        sizes = torch.tensor([len(i) for i in index_splits], dtype=stacked.dtype, device=stacked.device)
        mean_grad = (stacked * sizes[:, None]).sum(0) / sizes.sum()
        _assign_grads(params, mean_grad)
        actor_loss = (torch.stack(losses) * sizes).sum() / sizes.sum()
        actor_grad_norm = self._guarded_step("actor", params, self.actor_optim, self.actor_grad_norm, actor_loss)
        zs = torch.cat(all_zs, dim=1)
        rewards = torch.cat(all_rewards, dim=1)
        with torch.no_grad():  # a saturated tanh passes no gradient and ignores the exploration noise
            mean_action = self.actor(self.policy_input(z0, task), deterministic=True)
            valid = self.wm.mask_action(torch.ones_like(mean_action), task)
            saturated = ((mean_action.abs() > SATURATED_ACTION) * valid).sum() / valid.sum()
            data_action_error = (self._data_action_error(z0, data_action, task, mean_action).item()
                                 if data_action is not None else float("nan"))
        entropy = torch.cat(entropies, dim=1) if entropies else None  # [H, B]
        if entropy is not None and self.entropy_coef_optim is not None:
            self._update_entropy_coef(entropy, valid.sum(-1))
        latent_norms = zs.norm(dim=-1)  # [H + 1, B]
        metrics = {
            "critic/value_latent_grad": self.value_latent_grad(zs[-1], task) if diagnose else float("nan"),
            "actor/loss": actor_loss.item(),
            "actor/grad_norm": actor_grad_norm,
            "actor/esnr": esnr_proxy(stacked) if splits >= 2 else float("nan"),
            "actor/predicted_reward": rewards.mean().item(),
            "actor/log_std": _mean_log_std(self.actor),
            "actor/saturated_fraction": saturated.item(),
            "actor/data_action_error": data_action_error,
            "actor/entropy": entropy.mean().item() if entropy is not None else float("nan"),
            "actor/entropy_coef": self.entropy_coef,
            "rollout/latent_norm_mean": latent_norms.mean().item(),
            "rollout/latent_norm_max": latent_norms.max().item(),
            "rollout/latent_norm_final": latent_norms[-1].mean().item(),
            "rollout/nonfinite_latents": float((~torch.isfinite(zs)).any(-1).sum().item()),
            "time/actor_update_s": self._sync() - start,
        }
        metrics.update(self.update_critic(zs, rewards, task, data_targets))
        return metrics

    def _data_action_error(self, z: torch.Tensor, data_action: torch.Tensor, task: TaskLike,
                           mean_action: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the batch of ``||tanh(mu(z)) - a||^2 / d``: the squared distance of the policy's mean
        action at latents ``z [B, latent_dim]`` from the data's actions ``a [B, act_dim]``, per unpadded
        action dimension (``d``). ``mean_action`` reuses an already computed ``tanh(mu(z))``."""
        if mean_action is None:
            mean_action = self.actor(self.policy_input(z, task), deterministic=True)
        valid = self.wm.mask_action(torch.ones_like(mean_action), task)
        squared = (mean_action - data_action.to(mean_action.device)).pow(2) * valid
        return (squared.sum(-1) / valid.sum(-1)).mean()

    @property
    def entropy_coef(self) -> float:
        """The entropy bonus's current weight ``alpha`` (0 without a bonus)."""
        return math.exp(self.log_entropy_coef.item())

    def _update_entropy_coef(self, entropy: torch.Tensor, action_dims: torch.Tensor) -> None:
        """One Adam step of ``log alpha`` on ``log alpha * mean(H - target * action_dims)``: alpha falls while the
        entropy estimates ``entropy [H, B]`` exceed the target entropy of each sample's ``action_dims [B]``
        (its unpadded action dimensions) and rises while they fall short. Non-finite estimates skip the step
        (counted under ``nan_counts["entropy_coef"]``)."""
        excess = (entropy - self.actor_entropy_target * action_dims).mean()
        if not torch.isfinite(excess):
            self.nan_counts["entropy_coef"] += 1
            return
        self.entropy_coef_optim.zero_grad(set_to_none=True)
        (self.log_entropy_coef * excess.detach()).backward()
        self.entropy_coef_optim.step()

    def value_latent_grad(self, z: torch.Tensor, task: TaskLike = None) -> float:
        """Mean over ``z [B, latent_dim]`` of ``||dV'(z)/dz||``, the slope of the value the actor's objective
        ends on (the target critic at the rollouts' last latents). The actor's gradient passes through it, so
        a steep critic makes the actor's gradient large and erratic whatever the model's smoothness."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.target_critic.value(self.policy_input(z, task)).sum(), z)
        return grad.norm(dim=-1).mean().item()

    @property
    def uses_recent_data_windows(self) -> bool:
        """Whether the data critic's windows are to come from the replay's last steps
        (``critic_data_recent_steps``), which the online loop then samples separately."""
        return self.critic_data_coef > 0 and self.critic_data_recent_steps > 0

    def _diagnoses_next_actor_update(self) -> bool:
        """Whether the next actor update is one of every ``esnr_every``-th, which measure the diagnostics."""
        return self.actor_updates % self.esnr_every == 0

    def value_model_gap(self, obs: torch.Tensor, action: torch.Tensor, task: TaskLike = None) -> float:
        """Mean over a batch of ``V'(enc(o_1)) - V'(next(enc(o_0), a_0))`` for real transitions ``obs [2, B, obs_dim]``,
        ``action [B, A]``: how differently the target critic values the encoder's latent of a state and the
        model's one-step prediction of it. Near 0 when the critic values both kinds alike. A gap is value
        the actor can chase by steering its rollouts' predicted latents, rather than by solving the task."""
        with torch.no_grad():
            predicted = self.wm.next(self.wm.encode(obs[0], task), action, task)
            encoded = self.wm.encode(obs[1], task)
            values = self.target_critic.value(self.policy_input(torch.stack([encoded, predicted]), task))
            return (values[0] - values[1]).mean().item()

    def data_value_targets(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                           task: TaskLike = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic inputs ``[H * B, in_dim]`` and TD(lambda) targets ``[H * B]`` of the real windows
        ``obs [H+1, B, obs_dim]``, ``action [H, B, A]``, ``reward [H, B]`` (the ``critic_data_coef`` loss).

        The latents are the encoder's of ``obs``, or under ``critic_data_latents="predicted"`` the world
        model's open-loop rollout of the window's actions from the encoder's first latent: the kind of
        latent the imagined targets and the actor's rollouts see.
        """
        with torch.no_grad():
            if self.critic_data_on_predicted_latents:
                latents = open_loop_latents(self.wm, obs[0], action, task)
            else:
                latents = self.wm.encode(obs, task)
            return self._value_targets(latents, reward, task)

    def _value_targets(self, zs: torch.Tensor, rewards: torch.Tensor,
                       task: TaskLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat critic inputs of ``zs[:-1]`` and their TD(lambda) targets, bootstrapped with the target critic."""
        inputs = self.policy_input(zs, task)
        targets = lambda_returns(rewards, self.target_critic.value(inputs[1:]), self.gamma, self.lam)
        return inputs[:-1].reshape(-1, inputs.shape[-1]), targets.reshape(-1)

    def _sampled_critic_losses(self, *samples: tuple[torch.Tensor, torch.Tensor, bool]) -> list[torch.Tensor]:
        """Per ``(inputs, targets, lower_bound)``: the mean squared error of every critic on
        ``critic_batch_size`` samples drawn with replacement (with ``lower_bound``, only of the critics
        below their target). One critic pass over all the samples: at these widths a pass costs its
        calls more than its FLOPs, so the data term costs half what a pass of its own would."""
        indices = [torch.randint(inputs.shape[0], (min(self.critic_batch_size, inputs.shape[0]),),
                                 device=inputs.device) for inputs, _, _ in samples]
        values = self.critic(torch.cat([inputs[index] for (inputs, _, _), index in zip(samples, indices)]))
        losses, start = [], 0
        for (_, targets, lower_bound), index in zip(samples, indices):
            error = targets[index] - values[:, start:start + len(index)]  # values: [num_critics, samples]
            losses.append((error.clamp(min=0.0) if lower_bound else error).pow(2).mean())
            start += len(index)
        return losses

    def update_critic(self, zs: torch.Tensor, rewards: torch.Tensor, task: TaskLike = None,
                      data_targets: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
        """Fit the critics to TD(lambda) targets of a detached rollout (``zs [H+1, B, L]``, ``rewards [H, B]``).

        With ``critic_data_coef > 0`` and ``data_targets`` (from :meth:`data_value_targets`), every
        step's loss adds ``critic_data_coef`` times the same loss on a sample of those (one-sided under
        ``critic_data_loss="lower_bound"``).
        """
        start = self._sync()
        with torch.no_grad():
            flat_inputs, flat_targets = self._value_targets(zs, rewards, task)
        use_data = self.critic_data_coef > 0 and data_targets is not None
        losses, data_losses, grad_norms = [], [], []
        for _ in range(self.critic_iterations):
            if use_data:
                loss, data_loss = self._sampled_critic_losses((flat_inputs, flat_targets, False),
                                                              (*data_targets, self.critic_data_lower_bound))
                data_losses.append(data_loss.item())
                loss = loss + self.critic_data_coef * data_loss
            else:
                (loss,) = self._sampled_critic_losses((flat_inputs, flat_targets, False))
            if torch.isfinite(loss):
                loss.backward()
            grad_norms.append(self._guarded_step("critic", list(self.critic.parameters()), self.critic_optim,
                                                 self.critic_grad_norm, loss))
            losses.append(loss.item())
        with torch.no_grad():
            for target, online in zip(self.target_critic.parameters(), self.critic.parameters()):
                target.lerp_(online, self.critic_tau)
        nan = float("nan")
        return {
            "critic/loss": sum(losses) / len(losses) if losses else nan,
            "critic/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else nan,
            "critic/target_mean": flat_targets.mean().item(),
            **({"critic/data_loss": sum(data_losses) / len(data_losses) if data_losses else nan,
                "critic/data_target_mean": data_targets[1].mean().item()} if use_data else {}),
            "time/critic_update_s": self._sync() - start,
        }

    def update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, task: TaskLike = None,
               train_world_model: bool = True,
               data_windows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
        """One PWM iteration on a batch of windows; returns scalar metrics (NaN counts included).

        ``data_windows``: ``(obs, action, reward)`` windows for the ``critic_data_coef`` term instead of
        the batch's own (single-task; see ``critic_data_recent_steps``).
        """
        metrics = self.update_world_model(obs, action, reward, task) if train_world_model else {}
        data_targets = None
        if self.critic_data_coef > 0:
            data_targets = self.data_value_targets(*(data_windows or (obs, action, reward)), task)
        diagnose = self._diagnoses_next_actor_update()
        metrics.update(self.update_actor_critic(obs[0], task, data_targets, data_action=action[0]))
        metrics["critic/value_model_gap"] = self.value_model_gap(obs[:2], action[0], task) if diagnose else float("nan")
        metrics.update({f"nan/{name}_skipped_steps": float(count) for name, count in self.nan_counts.items()})
        return metrics

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "world_model": self.wm.state_dict(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "wm_optim": self.wm_optim.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "nan_counts": dict(self.nan_counts),
            "actor_updates": self.actor_updates,
            "log_entropy_coef": self.log_entropy_coef.detach().clone(),
            **({"entropy_coef_optim": self.entropy_coef_optim.state_dict()} if self.entropy_coef_optim else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wm.load_state_dict(state["world_model"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.wm_optim.load_state_dict(state["wm_optim"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.nan_counts.update(state.get("nan_counts", {}))
        self.actor_updates = int(state.get("actor_updates", 0))
        if "log_entropy_coef" in state:  # checkpoints before the tuned alpha hold none: alpha stays at its start
            with torch.no_grad():
                self.log_entropy_coef.copy_(state["log_entropy_coef"])
        if self.entropy_coef_optim is not None and "entropy_coef_optim" in state:
            self.entropy_coef_optim.load_state_dict(state["entropy_coef_optim"])


def _decay_linearly(groups: Iterator[dict[str, Any]] | Sequence[dict[str, Any]], fraction: float,
                    lr_final: float) -> None:
    """``lr = initial + (min(lr_final, initial) - initial) * fraction`` for each optimizer group, with
    ``fraction`` clipped to [0, 1]."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    for group in groups:
        initial = group["initial_lr"]
        group["lr"] = initial + (min(lr_final, initial) - initial) * fraction


def _mean_log_std(actor: nn.Module) -> float:
    """Mean exploration log-std of a Gaussian actor (NaN for actors without one)."""
    log_std = getattr(actor, "log_std", None)
    return float(log_std.detach().mean()) if log_std is not None else float("nan")


def _clone_frozen(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)
    clone.requires_grad_(False)
    return clone


def _assign_grads(params: Sequence[torch.Tensor], flat_grad: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat_grad[offset:offset + n].view_as(p).clone()
        offset += n
