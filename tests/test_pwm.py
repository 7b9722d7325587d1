"""PWM algorithm: WM loss branches, TD(lambda), actor objective, guards, configs, a short training run."""

import copy
import math
import os
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pwm.algorithms.build import build_pwm, is_flow_config
from pwm.algorithms.pwm import PWM, compute_wm_loss, esnr_proxy, lambda_returns
from pwm.models.world_model import LatentWorldModel
from pwm.models import ActorStochasticMLP, CriticEnsemble, FlowWorldModel, WorldModel

CFG_DIR = os.path.join(os.path.dirname(__file__), "..", "scripts", "cfg")
TINY = dict(obs_dim=6, act_dim=2, latent_dim=16, encoder_units=[32], units=[32, 32], num_bins=11)


def load_alg(name: str):
    with initialize_config_dir(config_dir=os.path.abspath(CFG_DIR), version_base="1.3"):
        return compose(config_name=f"alg/{name}").alg


def make_pwm(cls=WorldModel, **kwargs) -> PWM:
    wm = cls(**TINY)
    actor = ActorStochasticMLP(16, 2, units=[32])
    critic = CriticEnsemble(16, units=[32])
    defaults = dict(horizon=4, critic_iterations=2, critic_batch_size=64, esnr_splits=2)
    return PWM(wm, actor, critic, **{**defaults, **kwargs})


def batch(horizon=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(horizon + 1, size, 6, generator=g), torch.rand(horizon, size, 2, generator=g) * 2 - 1,
            torch.randn(horizon, size, generator=g))


def test_baseline_branch_is_plain_gamma_weighted_mse():
    torch.manual_seed(0)
    wm = WorldModel(**TINY)
    # the baseline's dynamics loss is LatentWorldModel's own (the flow model overrides it)
    assert type(wm).latent_rollout_and_dynamics_loss is LatentWorldModel.latent_rollout_and_dynamics_loss
    obs, act, rew = batch()
    total, terms, zs = compute_wm_loss(wm, obs, act, rew, gamma=0.9)
    z, dyn, rew_loss = wm.encode(obs[0]), 0.0, 0.0
    targets = wm.encode(obs[1:])
    for t in range(4):
        rew_loss = rew_loss + 0.9**t * wm.two_hot.loss(wm.reward(z, act[t]), rew[t]).mean()
        z = wm.next(z, act[t])
        dyn = dyn + 0.9**t * torch.nn.functional.mse_loss(z, targets[t])
    assert terms["dynamics_loss"].item() == pytest.approx(dyn.item() / 4, rel=1e-5)
    assert terms["reward_loss"].item() == pytest.approx(rew_loss.item() / 4, rel=1e-5)
    assert total.item() == pytest.approx((dyn + rew_loss).item() / 4, rel=1e-5)
    assert zs.shape == (5, 8, 16)


def test_flow_branch_uses_helper_and_same_reward_loss():
    torch.manual_seed(0)
    wm = FlowWorldModel(**TINY, fm_tau_sampling="midpoint")
    obs, act, rew = batch()
    total, terms, zs = compute_wm_loss(wm, obs, act, rew, gamma=0.9)
    helper_zs, helper_loss = wm.latent_rollout_and_dynamics_loss(
        wm.encode(obs[0]), act, wm.encode(obs[1:]).detach(), 4, 0.9)
    assert torch.allclose(zs, helper_zs)
    assert terms["dynamics_loss"].item() == pytest.approx(helper_loss.item(), rel=1e-6)  # not divided again
    weights = 0.9 ** torch.arange(4.0)
    reward = (weights * wm.two_hot.loss(wm.reward(zs[:-1], act), rew).mean(-1)).sum() / 4
    assert terms["reward_loss"].item() == pytest.approx(reward.item(), rel=1e-6)
    assert total.item() == pytest.approx(helper_loss.item() + reward.item(), rel=1e-6)


def test_targets_carry_no_gradient():
    wm = FlowWorldModel(**TINY)
    obs, act, rew = batch()
    obs.requires_grad_(True)
    total, _, _ = compute_wm_loss(wm, obs, act, rew, gamma=0.99)
    total.backward()
    assert obs.grad[0].abs().sum() > 0 and obs.grad[1:].abs().sum() == 0


def test_lambda_returns_hand_computation():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[10.0], [20.0], [30.0]])  # V(z_1), V(z_2), V(z_3)
    g, lam = 0.5, 0.8
    g2 = 3 + g * 30
    g1 = 2 + g * ((1 - lam) * 20 + lam * g2)
    g0 = 1 + g * ((1 - lam) * 10 + lam * g1)
    assert torch.allclose(lambda_returns(rewards, values, g, lam), torch.tensor([[g0], [g1], [g2]]))
    # lam = 0 is one-step TD, lam = 1 the discounted return bootstrapped from V(z_H)
    assert torch.allclose(lambda_returns(rewards, values, g, 0.0), rewards + g * values)
    assert lambda_returns(rewards, values, g, 1.0)[0].item() == pytest.approx(1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 30)


def test_actor_objective_bootstraps_with_gamma_to_the_h():
    agent = make_pwm(horizon=3, gamma=0.5)
    agent.wm.predict_reward = lambda z, a, task=None: torch.ones(z.shape[0])
    agent.target_critic.value = lambda x: torch.full((x.shape[0],), 8.0)
    _, rewards, objective, _ = agent.rollout(torch.zeros(4, 16))
    assert rewards.shape == (3, 4)
    assert torch.allclose(objective, torch.full((4,), 1 + 0.5 + 0.25 + 0.125 * 8))


def test_wm_optimizer_covers_velocity_and_every_parameter():
    agent = make_pwm(FlowWorldModel)
    names = [g["name"] for g in agent.wm_optim.param_groups]
    assert "_velocity" in names and "_dynamics" not in names
    covered = {id(p) for g in agent.wm_optim.param_groups for p in g["params"]}
    assert covered == {id(p) for p in agent.wm.parameters()}


def test_nan_batch_is_skipped_and_counted():
    agent = make_pwm()
    before = [p.clone() for p in agent.wm.parameters()]
    obs, act, rew = batch()
    obs[2, 3, 1] = float("nan")
    metrics = agent.update_world_model(obs, act, rew)
    assert agent.nan_counts["wm"] == 1
    assert metrics["wm/grad_norm"] != metrics["wm/grad_norm"]  # NaN marks the skipped step
    assert all(torch.equal(p, q) for p, q in zip(before, agent.wm.parameters()))


def test_esnr_proxy_hand_computation():
    # param 0: mean 2, var 2; param 1: mean 1, var 8 -> (4 + 1) / (2 + 8)
    grads = torch.tensor([[1.0, -1.0], [3.0, 3.0]])
    assert esnr_proxy(grads) == pytest.approx(5 / 10)
    # a parameter with a near-zero variance no longer dominates (the per-parameter mean would be ~1e12)
    grads = torch.tensor([[1.0, 1.0], [3.0, 1.0 + 1e-6]])
    assert esnr_proxy(grads) == pytest.approx((4 + 1) / 2, rel=1e-4)


def test_split_gradients_equal_one_full_batch_pass():
    """esnr_splits averages equal-split gradients: the same gradient as one full-batch pass."""
    torch.manual_seed(0)
    agent = make_pwm(esnr_splits=4, critic_iterations=0)
    obs0 = torch.randn(8, 6)
    torch.manual_seed(1)
    z0 = agent.wm.encode(obs0).detach()
    losses = [-agent.rollout(z0[index])[2].mean() / agent.horizon for index in torch.arange(8).chunk(4)]
    torch.stack(losses).mean().backward()
    expected = [p.grad.clone() for p in agent.actor.parameters()]
    agent.actor.zero_grad()

    applied = []
    original = agent._guarded_step

    def capture(name, params, optim, max_norm, loss):
        if name == "actor":
            applied.extend(p.grad.clone() for p in params)
        return original(name, params, optim, max_norm, loss)

    agent._guarded_step = capture
    torch.manual_seed(1)
    agent.update_actor_critic(obs0)
    assert len(applied) == len(expected)
    for got, want in zip(applied, expected):
        assert torch.allclose(got, want, atol=1e-6)


def test_48M_config_has_the_paper_sizes():
    # Twin parity of every size is tested in test_configs.test_every_size_fills_the_shared_defaults.
    cfg48 = load_alg("pwm_48M")
    assert list(cfg48.world_model_config.encoder_units) == [1792] * 3
    assert list(cfg48.world_model_config.units) == [1792] * 2 and cfg48.world_model_config.latent_dim == 768


def test_build_from_config_and_unknown_key_error():
    cfg = load_alg("pwm_tiny_flow")
    agent = build_pwm(cfg, obs_dim=6, act_dim=2, tasks=["a", "b"], action_dims=[2, 1], device="cpu")
    assert isinstance(agent.wm, FlowWorldModel) and agent.wm.integrate_steps == 4 and is_flow_config(cfg)
    assert agent.wm.multitask and agent.actor.net[0].in_features == 32 + 8
    plain = OmegaConf.create(OmegaConf.to_container(cfg))  # no struct flag, as from a dict or a YAML load
    bad = OmegaConf.merge(plain, {"horizn": 3})
    with pytest.raises(ValueError, match="alg.horizn"):
        build_pwm(bad, obs_dim=6, act_dim=2)
    with pytest.raises(ValueError, match="alg.gamma"):
        build_pwm(OmegaConf.merge(plain, {"gamma": 1.5}), obs_dim=6, act_dim=2)
    with pytest.raises(ValueError, match="alg.batch_size must be >= 1, got 0"):
        build_pwm(OmegaConf.merge(plain, {"batch_size": 0}), obs_dim=6, act_dim=2)
    with pytest.raises(ValueError, match="alg.critic_batch_size"):
        build_pwm(OmegaConf.merge(plain, {"critic_batch_size": 0}), obs_dim=6, act_dim=2)


def synthetic_windows(horizon, size, generator):
    """A linear system s' = 0.9 s + 0.5 [a, a, a], reward = -|s_0|; learnable by a tiny model."""
    obs = [torch.randn(size, 6, generator=generator)]
    actions = torch.rand(horizon, size, 2, generator=generator) * 2 - 1
    rewards = []
    for t in range(horizon):
        rewards.append(-obs[-1][:, 0].abs())
        obs.append(0.9 * obs[-1] + 0.5 * actions[t].repeat(1, 3))
    return torch.stack(obs), actions, torch.stack(rewards)


@pytest.mark.parametrize("cls", [WorldModel, FlowWorldModel])
def test_short_training_run_losses_fall(cls):
    torch.manual_seed(0)
    agent = make_pwm(cls, model_lr=3e-3, critic_iterations=2)
    generator = torch.Generator().manual_seed(0)
    history = []
    for _ in range(120):
        metrics = agent.update(*synthetic_windows(4, 64, generator))
        history.append(metrics)
    first = sum(m["wm/total_loss"] for m in history[:10]) / 10
    last = sum(m["wm/total_loss"] for m in history[-10:]) / 10
    first_rew = sum(m["wm/reward_loss"] for m in history[:10]) / 10
    last_rew = sum(m["wm/reward_loss"] for m in history[-10:]) / 10
    assert last < 0.5 * first and last_rew < 0.5 * first_rew
    assert all(torch.isfinite(torch.tensor(m["actor/loss"])) for m in history)
    assert history[-1]["nan/wm_skipped_steps"] == 0
    assert history[-1]["actor/esnr"] > 0
    state = agent.state_dict()
    clone = make_pwm(cls)
    clone.load_state_dict(state)
    obs = torch.randn(3, 6)
    assert torch.equal(clone.act(obs, deterministic=True), agent.act(obs, deterministic=True))


def test_same_seed_gives_identical_shared_modules_across_variants():
    agents = []
    for name in ("pwm_tiny", "pwm_tiny_flow"):
        torch.manual_seed(11)
        agents.append(build_pwm(load_alg(name), obs_dim=6, act_dim=2, device="cpu"))
    base, flow = agents
    for part in ("actor", "critic"):
        for p, q in zip(getattr(base, part).parameters(), getattr(flow, part).parameters()):
            assert torch.equal(p, q), part
    for name in ("_encoder", "_reward"):
        for p, q in zip(getattr(base.wm, name).parameters(), getattr(flow.wm, name).parameters()):
            assert torch.equal(p, q), name


def test_wm_loss_weights_and_rho_hand_computation():
    """total = dynamics_coef * L_dyn + reward_coef * L_rew, with per-step weights rho^t replacing gamma^t."""
    torch.manual_seed(0)
    agent = make_pwm(gamma=0.99, wm_dynamics_coef=20.0, wm_reward_coef=0.1, wm_rho=0.5)
    obs, act, rew = batch()
    total, terms, _ = agent.wm_loss(obs, act, rew)
    plain_total, plain_terms, _ = compute_wm_loss(agent.wm, obs, act, rew, gamma=0.5)  # the spec's sum, weights 0.5^t
    assert terms["dynamics_loss"].item() == pytest.approx(plain_terms["dynamics_loss"].item(), rel=1e-6)
    assert terms["reward_loss"].item() == pytest.approx(plain_terms["reward_loss"].item(), rel=1e-6)
    plain_sum = plain_terms["dynamics_loss"] + plain_terms["reward_loss"]
    assert plain_total.item() == pytest.approx(plain_sum.item(), rel=1e-6)
    assert total.item() == pytest.approx(20.0 * terms["dynamics_loss"].item() + 0.1 * terms["reward_loss"].item(),
                                         rel=1e-6)
    gamma_weighted = compute_wm_loss(agent.wm, obs, act, rew, gamma=0.99)[1]
    assert gamma_weighted["reward_loss"].item() != pytest.approx(terms["reward_loss"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="alg.wm_rho"):
        make_pwm(wm_rho=0.0)


@pytest.mark.parametrize("cls", [WorldModel, FlowWorldModel])
def test_the_normalized_dynamics_loss_takes_its_own_weight(cls):
    """With normalize_dynamics_loss: total = wm_normalized_dynamics_coef * L_dyn + reward_coef * L_rew, and
    wm_dynamics_coef is not used; without it, the reverse."""
    obs, act, rew = batch()
    coefs = dict(wm_dynamics_coef=20.0, wm_normalized_dynamics_coef=0.3, wm_reward_coef=0.1)
    for normalize, used in ((True, 0.3), (False, 20.0)):
        torch.manual_seed(0)
        wm = cls(**TINY, normalize_dynamics_loss=normalize)
        agent = PWM(wm, ActorStochasticMLP(16, 2, units=[32]), CriticEnsemble(16, units=[32]), horizon=4, **coefs)
        total, terms, _ = agent.wm_loss(obs, act, rew)
        expected = used * terms["dynamics_loss"].item() + 0.1 * terms["reward_loss"].item()
        assert total.item() == pytest.approx(expected, rel=1e-6), normalize
    with pytest.raises(ValueError, match="alg.wm_normalized_dynamics_coef"):
        make_pwm(wm_normalized_dynamics_coef=0.0)


class LinearActor(torch.nn.Module):
    """a = (k * x_0, 0): a one-parameter policy for hand-computed gradients."""

    def __init__(self, k: float):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k))
        self.log_std = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x, deterministic=False):
        return torch.stack([self.k * x[..., 0], torch.zeros_like(x[..., 0])], dim=-1)


@pytest.mark.parametrize("detach, expected", [(False, 3 + 2 * 0.5), (True, 3 + 0.5)])
def test_detached_actor_input_cuts_only_the_policy_feedback_path(detach, expected):
    """1-D system z' = z + a, r = z + a, a = k z, H = 2, gamma = 1, V = 0: J = z0 (1 + k)(2 + k), so
    dJ/dk = z0 (3 + 2k); with the actor reading a detached z1 the a1 = k z1 path loses k dz1/dk: z0 (3 + k)."""
    agent = make_pwm(horizon=2, gamma=1.0, detach_actor_input=detach)
    agent.actor = LinearActor(0.5)
    agent.wm.next = lambda z, a, task=None: z + torch.nn.functional.pad(a[..., :1], (0, z.shape[-1] - 1))
    agent.wm.predict_reward = lambda z, a, task=None: z[..., 0] + a[..., 0]
    agent.target_critic.value = lambda x: torch.zeros(x.shape[:-1])
    z0 = torch.zeros(1, 16)
    z0[0, 0] = 1.0
    _, _, objective, _ = agent.rollout(z0)
    assert objective.item() == pytest.approx(1.5 * 2.5)
    (grad,) = torch.autograd.grad(objective.sum(), agent.actor.k)
    assert grad.item() == pytest.approx(expected)


def test_linear_learning_rate_schedule():
    agent = make_pwm(lr_schedule="linear", lr_final=1e-5, actor_lr=5e-4, model_lr=3e-4)
    agent.scale_model_lr(0.1)  # finetuning: the schedule starts from the scaled rate
    agent.set_training_progress(0.5)
    assert agent.actor_optim.param_groups[0]["lr"] == pytest.approx((5e-4 + 1e-5) / 2)
    assert agent.wm_optim.param_groups[0]["lr"] == pytest.approx((3e-5 + 1e-5) / 2)
    agent.set_training_progress(1.0)
    assert agent.critic_optim.param_groups[0]["lr"] == pytest.approx(1e-5)
    clone = make_pwm(lr_schedule="linear", lr_final=1e-5)
    clone.load_state_dict(agent.state_dict())  # the schedule's start survives a checkpoint
    clone.set_training_progress(0.0)
    assert clone.wm_optim.param_groups[0]["lr"] == pytest.approx(3e-5)
    constant = make_pwm(actor_lr=5e-4)
    constant.set_training_progress(0.9)
    assert constant.actor_optim.param_groups[0]["lr"] == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="alg.lr_schedule"):
        make_pwm(lr_schedule="cosine")


def test_esnr_is_measured_every_nth_actor_update_and_survives_a_checkpoint():
    agent = make_pwm(esnr_splits=2, esnr_every=3, critic_iterations=0)
    obs0 = torch.randn(8, 6)
    history = [agent.update_actor_critic(obs0) for _ in range(7)]
    for key in ("actor/esnr", "critic/value_latent_grad"):
        assert [not math.isnan(m[key]) for m in history] == [True, False, False, True, False, False, True]
    clone = make_pwm(esnr_splits=2, esnr_every=3, critic_iterations=0)
    clone.load_state_dict(agent.state_dict())
    assert [not math.isnan(clone.update_actor_critic(obs0)["actor/esnr"]) for _ in range(3)] == [False, False, True]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_world_model_loss_gives_the_eager_update():
    """compile_wm_loss=True: the same world-model steps as eager, to float tolerance."""
    agents = []
    for compiled in (False, True):
        torch.manual_seed(0)
        agents.append(make_pwm(compile_wm_loss=compiled))
    eager, compiled = agents
    for seed in range(3):
        metrics = [agent.update_world_model(*batch(seed=seed)) for agent in agents]
        assert metrics[1]["wm/total_loss"] == pytest.approx(metrics[0]["wm/total_loss"], rel=1e-5)
    assert type(compiled.wm_loss).__name__ == "OptimizedModule"
    for (name, a), b in zip(eager.wm.state_dict().items(), compiled.wm.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_entropy_bonus_adds_discounted_entropies_to_the_objective():
    """Same weights, same noise: the objective with alpha differs by exactly alpha * sum_t gamma^t H_t."""
    torch.manual_seed(0)
    plain = make_pwm(horizon=3, gamma=0.5)
    bonus = make_pwm(horizon=3, gamma=0.5, actor_entropy_coef=0.1)
    bonus.wm.load_state_dict(plain.wm.state_dict())
    bonus.actor.load_state_dict(plain.actor.state_dict())
    bonus.target_critic.load_state_dict(plain.target_critic.state_dict())
    z0 = plain.wm.encode(torch.randn(5, 6))
    torch.manual_seed(1)
    _, rewards, objective, none = plain.rollout(z0)
    torch.manual_seed(1)
    _, bonus_rewards, bonus_objective, entropies = bonus.rollout(z0)
    assert none is None and entropies.shape == (3, 5)
    assert torch.allclose(rewards, bonus_rewards)
    by_hand = objective + 0.1 * (entropies[0] + 0.5 * entropies[1] + 0.25 * entropies[2])
    assert torch.allclose(bonus_objective, by_hand, atol=1e-6)
    torch.manual_seed(1)
    _, log_prob = bonus.actor.sample_with_log_prob(z0)  # the first step's sample, same noise
    assert torch.allclose(entropies[0], -log_prob.sum(-1), atol=1e-6)


def test_entropy_bonus_pulls_a_saturated_actor_back():
    """Flat model, actor saturated at u ~ 6: the return gives no gradient; the bonus gives the bias of each
    action dimension d loss / d b = 2 alpha tanh(u) sum_t gamma^t / H (from -log(1 - tanh(u)^2)), ~ 2 alpha
    sum_t gamma^t / H, positive: gradient descent lowers the bias, out of saturation."""
    grads = {}
    for alpha in (0.0, 0.05):
        torch.manual_seed(0)
        agent = make_pwm(horizon=4, gamma=0.5, actor_entropy_coef=alpha)
        with torch.no_grad():
            agent.actor.net[-1].weight.zero_()
            agent.actor.net[-1].bias.fill_(6.0)
        agent.wm.predict_reward = lambda z, a, task=None: torch.zeros(z.shape[0])
        agent.target_critic.value = lambda x: torch.zeros(x.shape[:-1])
        _, _, objective, _ = agent.rollout(torch.zeros(8, 16))
        loss = -objective.mean() / agent.horizon
        grads[alpha] = torch.autograd.grad(loss, agent.actor.net[-1].bias) if loss.requires_grad else None
    assert grads[0.0] is None  # nothing in a flat model depends on the action
    grads[0.05] = grads[0.05][0]
    expected = 2 * 0.05 * (1 + 0.5 + 0.25 + 0.125) / 4
    assert torch.allclose(grads[0.05], torch.full((2,), expected), rtol=1e-3)


def test_entropy_bonus_skips_padded_action_dimensions():
    torch.manual_seed(0)
    wm = WorldModel(**{**TINY, "act_dim": 4}, tasks=["a", "b"], action_dims=[4, 2], task_dim=8)
    agent = PWM(wm, ActorStochasticMLP(24, 4, units=[32]), CriticEnsemble(24, units=[32]), horizon=1,
                esnr_splits=1, actor_entropy_coef=0.1)
    z0, task = wm.encode(torch.randn(2, 6), torch.tensor([1, 0])), torch.tensor([1, 0])
    torch.manual_seed(1)
    _, _, _, entropies = agent.rollout(z0, task)
    torch.manual_seed(1)
    _, log_prob = agent.actor.sample_with_log_prob(agent.policy_input(z0, task))
    assert torch.allclose(entropies[0], torch.stack([-log_prob[0, :2].sum(), -log_prob[1].sum()]), atol=1e-6)


def test_entropy_coef_is_checked():
    with pytest.raises(ValueError, match="actor_entropy_coef"):
        make_pwm(actor_entropy_coef=-0.1)

    class DeterministicActor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(16, 2)

        def forward(self, x, deterministic=False):
            return torch.tanh(self.net(x))

    with pytest.raises(ValueError, match="actor_entropy_coef=0.1 needs an actor with sample_with_log_prob"):
        PWM(WorldModel(**TINY), DeterministicActor(), CriticEnsemble(16, units=[32]), actor_entropy_coef=0.1)


def test_entropy_is_logged_by_the_actor_update():
    agent = make_pwm(actor_entropy_coef=0.01)
    obs, _, _ = batch()
    metrics = agent.update_actor_critic(obs[0])
    assert math.isfinite(metrics["actor/entropy"])
    assert math.isnan(make_pwm().update_actor_critic(obs[0])["actor/entropy"])


def test_tuned_entropy_coef_steps_log_alpha_on_the_entropy_excess_over_the_target():
    """With SGD at rate 1 in place of Adam, one step is ``log alpha -= mean(H - target * dims)``, by hand: the
    entropies [[1, 3], [-2, 0]] of samples with 2 and 1 unpadded action dimensions against a target of
    -0.5 per dimension (-1 and -0.5): mean(2, 3.5, -1, 0.5) = 1.25."""
    agent = make_pwm(actor_entropy_coef=0.1, actor_entropy_target=-0.5)
    agent.entropy_coef_optim = torch.optim.SGD([agent.log_entropy_coef], lr=1.0)
    agent._update_entropy_coef(torch.tensor([[1.0, 3.0], [-2.0, 0.0]]), torch.tensor([2.0, 1.0]))
    assert agent.log_entropy_coef.item() == pytest.approx(math.log(0.1) - 1.25, abs=1e-6)
    assert agent.entropy_coef == pytest.approx(0.1 * math.exp(-1.25), rel=1e-5)
    agent._update_entropy_coef(torch.tensor([[float("nan"), 0.0]]), torch.tensor([2.0, 2.0]))
    assert agent.nan_counts["entropy_coef"] == 1 and agent.entropy_coef == pytest.approx(0.1 * math.exp(-1.25), rel=1e-5)


@pytest.mark.parametrize("target, direction", [(-10.0, -1), (10.0, 1)])
def test_tuned_entropy_coef_falls_above_the_target_entropy_and_rises_below_it(target, direction):
    """Adam's first step moves log alpha by its learning rate, against the sign of the entropy's excess."""
    torch.manual_seed(0)
    agent = make_pwm(actor_entropy_coef=0.1, actor_entropy_target=target, actor_entropy_lr=0.01)
    obs, _, _ = batch()
    metrics = agent.update_actor_critic(obs[0])
    assert agent.log_entropy_coef.item() == pytest.approx(math.log(0.1) + direction * 0.01, abs=1e-5)
    assert metrics["actor/entropy_coef"] == pytest.approx(math.exp(math.log(0.1) + direction * 0.01), rel=1e-4)
    fixed = make_pwm(actor_entropy_coef=0.1)
    fixed.update_actor_critic(obs[0])
    assert fixed.entropy_coef == pytest.approx(0.1) and fixed.entropy_coef_optim is None


def test_the_target_entropy_counts_each_samples_unpadded_action_dimensions():
    torch.manual_seed(0)
    wm = WorldModel(**{**TINY, "act_dim": 4}, tasks=["a", "b"], action_dims=[4, 2], task_dim=8)
    agent = PWM(wm, ActorStochasticMLP(24, 4, units=[32]), CriticEnsemble(24, units=[32]), horizon=2,
                esnr_splits=1, critic_iterations=1, actor_entropy_coef=0.1, actor_entropy_target=-0.5)
    seen = []
    agent._update_entropy_coef = lambda entropy, action_dims: seen.append((entropy.shape, action_dims.tolist()))
    agent.update_actor_critic(torch.randn(3, 6), torch.tensor([1, 0, 1]))
    assert seen == [((2, 3), [2.0, 4.0, 2.0])]


def test_the_rollout_objective_uses_the_current_tuned_alpha():
    """A tuned agent whose alpha has moved to 0.3 gives the objective of an agent with alpha fixed at 0.3
    (same weights, same noise), not that of its starting 0.1."""
    torch.manual_seed(0)
    tuned = make_pwm(horizon=3, gamma=0.5, actor_entropy_coef=0.1, actor_entropy_target=-0.5)
    fixed = make_pwm(horizon=3, gamma=0.5, actor_entropy_coef=0.3)
    for name in ("wm", "actor", "target_critic"):
        getattr(fixed, name).load_state_dict(getattr(tuned, name).state_dict())
    with torch.no_grad():
        tuned.log_entropy_coef.fill_(math.log(0.3))
    z0 = tuned.wm.encode(torch.randn(5, 6))
    objectives = []
    for agent in (tuned, fixed):
        torch.manual_seed(1)
        objectives.append(agent.rollout(z0)[2])
    assert torch.allclose(objectives[0], objectives[1], atol=1e-6)


def test_the_tuned_alpha_and_its_optimizer_round_trip_through_a_checkpoint():
    obs, _, _ = batch()
    torch.manual_seed(0)
    agent = make_pwm(actor_entropy_coef=0.1, actor_entropy_target=-0.5)
    for _ in range(3):
        agent.update_actor_critic(obs[0])
    restored = make_pwm(actor_entropy_coef=0.1, actor_entropy_target=-0.5)
    restored.load_state_dict(agent.state_dict())
    assert restored.entropy_coef == pytest.approx(agent.entropy_coef) and restored.entropy_coef != pytest.approx(0.1)
    assert restored.entropy_coef_optim.state_dict()["state"][0]["step"] == 3
    old = agent.state_dict()
    del old["log_entropy_coef"], old["entropy_coef_optim"]  # a checkpoint from before the tuned alpha
    fresh = make_pwm(actor_entropy_coef=0.1, actor_entropy_target=-0.5)
    fresh.load_state_dict(old)
    assert fresh.entropy_coef == pytest.approx(0.1)


def test_entropy_target_settings_are_checked():
    with pytest.raises(ValueError, match=r"alg.actor_entropy_target=-0.5 tunes the entropy bonus, which needs "
                                         r"alg.actor_entropy_coef > 0"):
        make_pwm(actor_entropy_target=-0.5)
    with pytest.raises(ValueError, match="alg.actor_entropy_target has an invalid value: nan"):
        make_pwm(actor_entropy_coef=0.1, actor_entropy_target=float("nan"))
    with pytest.raises(ValueError, match="alg.actor_entropy_lr has an invalid value: 0.0"):
        make_pwm(actor_entropy_coef=0.1, actor_entropy_target=-0.5, actor_entropy_lr=0.0)


def test_saturated_fraction_counts_real_action_dimensions_at_the_bound():
    agent = make_pwm()
    obs, _, _ = batch()
    with torch.no_grad():
        agent.actor.net[-1].weight.zero_()
        agent.actor.net[-1].bias.copy_(torch.tensor([6.0, 0.0]))  # dim 0 saturated, dim 1 centred
    assert agent.update_actor_critic(obs[0])["actor/saturated_fraction"] == pytest.approx(0.5)
    wm = WorldModel(**{**TINY, "act_dim": 4}, tasks=["a", "b"], action_dims=[4, 2], task_dim=8)
    agent = PWM(wm, ActorStochasticMLP(24, 4, units=[32]), CriticEnsemble(24, units=[32]), horizon=2, esnr_splits=1)
    with torch.no_grad():
        agent.actor.net[-1].weight.zero_()
        agent.actor.net[-1].bias.copy_(torch.tensor([6.0, 6.0, 0.0, 0.0]))
    # task 1 has 2 real dims, both saturated; its 2 padded (unsaturated) dims must not count
    assert agent.update_actor_critic(torch.randn(4, 6), torch.tensor([1, 1, 1, 1]))["actor/saturated_fraction"] == 1.0


def test_data_value_targets_are_td_lambda_of_the_real_windows():
    """Inputs: the encoder's latents of obs[:-1]; targets: TD(lambda) of the data's rewards,
    bootstrapped with the target critic at the next real latents (hand computation, H = 2)."""
    agent = make_pwm(horizon=2, gamma=0.5, lam=0.5, critic_data_coef=1.0)
    agent.target_critic.value = lambda x: torch.full(x.shape[:-1], 8.0)
    obs, action, _ = batch(horizon=2, size=3)
    reward = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    inputs, targets = agent.data_value_targets(obs, action, reward)
    torch.testing.assert_close(inputs, agent.wm.encode(obs[:-1]).reshape(6, 16))
    last = reward[1] + 0.5 * 8.0
    first = reward[0] + 0.5 * (0.5 * 8.0 + 0.5 * last)
    torch.testing.assert_close(targets, torch.cat([first, last]))


@pytest.mark.parametrize("cls", [WorldModel, FlowWorldModel])
def test_predicted_data_latents_are_the_models_rollout_of_the_real_actions(cls):
    """critic_data_latents=predicted: inputs z_0 = enc(o_0), z_1 = next(z_0, a_0); the bootstrap values
    are the target critic's at the predicted z_1, z_2 (a critic that reads its input, H = 2)."""
    torch.manual_seed(0)
    agent = make_pwm(cls, horizon=2, gamma=0.5, lam=0.5, critic_data_coef=1.0, critic_data_latents="predicted")
    agent.target_critic.value = lambda x: x[..., 0] * 100.0
    obs, action, _ = batch(horizon=2, size=3)
    reward = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    inputs, targets = agent.data_value_targets(obs, action, reward)
    with torch.no_grad():
        z0 = agent.wm.encode(obs[0])
        z1 = agent.wm.next(z0, action[0])
        z2 = agent.wm.next(z1, action[1])
    assert not torch.allclose(z1, agent.wm.encode(obs[1]), atol=1e-3)  # the two kinds of latent differ here
    torch.testing.assert_close(inputs, torch.cat([z0, z1]))
    last = reward[1] + 0.5 * 100.0 * z2[:, 0]
    first = reward[0] + 0.5 * (0.5 * 100.0 * z1[:, 0] + 0.5 * last)
    torch.testing.assert_close(targets, torch.cat([first, last]))


def test_the_data_critic_loss_adds_with_its_weight():
    """One critic step (the loss is taken before it) from identical states and samples: the total
    at weight 3 exceeds the one at weight 1 by exactly 2 x the data loss; at 0 there is none."""
    obs, action, reward = batch()
    totals = {}
    for weight in (0.0, 1.0, 3.0):
        torch.manual_seed(0)
        agent = make_pwm(critic_iterations=1, critic_data_coef=weight)
        zs = torch.randn(5, 8, 16)
        rewards = torch.randn(4, 8)
        data = agent.data_value_targets(obs, action, reward) if weight else None
        totals[weight] = agent.update_critic(zs, rewards, data_targets=data)
    assert "critic/data_loss" not in totals[0.0]
    data_loss = totals[1.0]["critic/data_loss"]
    assert data_loss == pytest.approx(totals[3.0]["critic/data_loss"]) and data_loss > 0
    assert totals[3.0]["critic/loss"] - totals[1.0]["critic/loss"] == pytest.approx(2 * data_loss, rel=1e-5)
    assert totals[1.0]["critic/loss"] - totals[0.0]["critic/loss"] == pytest.approx(data_loss, rel=1e-5)


def test_with_the_data_loss_the_critic_learns_the_replays_values():
    """Imagined rewards 0, real rewards 1: only the data loss pulls the value at real states up."""
    obs, action, _ = batch(size=32)
    reward = torch.ones(4, 32)
    values = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        agent = make_pwm(critic_iterations=4, critic_data_coef=weight, critic_lr=1e-2)
        agent.wm.predict_reward = lambda z, a, task=None: torch.zeros(z.shape[:-1])
        for _ in range(30):
            agent.update(obs, action, reward, train_world_model=False)
        with torch.no_grad():
            values[weight] = agent.critic.value(agent.wm.encode(obs[0])).mean().item()
    assert abs(values[0.0]) < 0.2
    assert values[1.0] > 1.0


def test_value_latent_grad_is_the_mean_norm_of_the_target_critics_slope():
    """V'(z) = sum(z^2) has slope 2z: the metric is the mean of 2 ||z|| over the batch (hand computation)."""
    agent = make_pwm()
    agent.target_critic.value = lambda x: x.pow(2).sum(-1)
    z = torch.zeros(2, 16)
    z[0, 0], z[1, :2] = 3.0, torch.tensor([3.0, 4.0])
    with torch.no_grad():  # it must not depend on the caller's grad mode
        assert agent.value_latent_grad(z) == pytest.approx((2 * 3.0 + 2 * 5.0) / 2)


def test_value_model_gap_compares_the_encoded_and_the_predicted_next_latent():
    """V'(z) = 100 z_0: the gap is the batch mean of 100 (enc(o_1)_0 - next(enc(o_0), a_0)_0) (hand computation)."""
    torch.manual_seed(0)
    agent = make_pwm()
    agent.target_critic.value = lambda x: 100.0 * x[..., 0]
    obs, action, _ = batch()
    with torch.no_grad():
        expected = 100.0 * (agent.wm.encode(obs[1]) - agent.wm.next(agent.wm.encode(obs[0]), action[0]))[:, 0].mean()
    assert abs(expected.item()) > 0.1
    assert agent.value_model_gap(obs[:2], action[0]) == pytest.approx(expected.item(), rel=1e-5)


def test_update_logs_the_value_model_gap_on_diagnosed_iterations_only():
    agent = make_pwm(esnr_every=2)
    obs, action, reward = batch()
    gaps = [agent.update(obs, action, reward)["critic/value_model_gap"] for _ in range(3)]
    assert math.isfinite(gaps[0]) and math.isnan(gaps[1]) and math.isfinite(gaps[2])


def test_the_lower_bound_data_loss_counts_only_critics_below_their_target():
    """Every critic value 3: targets 5 give (5 - 3)^2 = 4 in both modes; targets 1 give 4 as a
    regression and nothing as a lower bound."""
    agent = make_pwm()
    agent.critic = lambda x: torch.full((2, x.shape[0]), 3.0)
    inputs = torch.zeros(10, 16)
    for target, mse, bound in ((5.0, 4.0, 4.0), (1.0, 4.0, 0.0)):
        targets = torch.full((10,), target)
        assert agent._sampled_critic_losses((inputs, targets, False))[0].item() == pytest.approx(mse)
        assert agent._sampled_critic_losses((inputs, targets, True))[0].item() == pytest.approx(bound)


def test_one_critic_pass_gives_each_sample_its_own_loss():
    """The imagined and the data losses from one pass over both samples equal those of a pass each, on the
    same draws (the data sample smaller than a batch: its own size, not the batch's)."""
    agent = make_pwm(critic_batch_size=6)
    agent.critic = lambda x: torch.stack([x[:, 0], 2 * x[:, 1]])  # two critics whose values tell inputs apart
    g = torch.Generator().manual_seed(0)
    imagined = (torch.randn(20, 16, generator=g), torch.randn(20, generator=g) * 3)
    data = (torch.randn(4, 16, generator=g), torch.randn(4, generator=g) * 3)
    torch.manual_seed(1)
    joint = agent._sampled_critic_losses((*imagined, False), (*data, True))
    torch.manual_seed(1)
    index, data_index = torch.randint(20, (6,)), torch.randint(4, (4,))
    separate = [(imagined[1][index] - agent.critic(imagined[0][index])).pow(2).mean(),
                (data[1][data_index] - agent.critic(data[0][data_index])).clamp(min=0.0).pow(2).mean()]
    assert [loss.item() for loss in joint] == pytest.approx([loss.item() for loss in separate], rel=1e-5)
    assert joint[0].item() != pytest.approx(joint[1].item(), rel=1e-3)  # distinct samples, distinct losses


def test_real_returns_below_the_imagined_ones_lower_values_only_as_a_regression():
    """Imagined rewards 1, real rewards 0: the regression pulls the values at real states down; the
    lower bound leaves them where the imagined targets alone put them, and it still raises values
    that real returns exceed (real rewards 1, imagined 0)."""
    obs, action, _ = batch(size=32)

    def value_after_training(imagined: float, real: float, **settings) -> float:
        torch.manual_seed(0)
        agent = make_pwm(critic_iterations=4, critic_lr=1e-2, **settings)
        agent.wm.predict_reward = lambda z, a, task=None: torch.full(z.shape[:-1], imagined)
        for _ in range(30):
            agent.update(obs, action, torch.full((4, 32), real), train_world_model=False)
        with torch.no_grad():
            return agent.critic.value(agent.wm.encode(obs[0])).mean().item()

    imagined_only = value_after_training(1.0, 0.0)
    regression = value_after_training(1.0, 0.0, critic_data_coef=1.0)
    bound = value_after_training(1.0, 0.0, critic_data_coef=1.0, critic_data_loss="lower_bound")
    assert imagined_only > 1.0
    assert regression < imagined_only - 0.5
    assert bound == pytest.approx(imagined_only, rel=0.1)
    assert value_after_training(0.0, 1.0, critic_data_coef=1.0, critic_data_loss="lower_bound") > 1.0


def test_an_unknown_data_critic_loss_is_refused():
    with pytest.raises(ValueError, match="alg.critic_data_loss"):
        make_pwm(critic_data_loss="huber")


def test_unknown_data_critic_latents_are_refused():
    with pytest.raises(ValueError, match="alg.critic_data_latents"):
        make_pwm(critic_data_latents="decoded")


def test_a_negative_data_critic_weight_is_refused():
    with pytest.raises(ValueError, match="alg.critic_data_coef"):
        make_pwm(critic_data_coef=-1.0)


def test_given_data_windows_the_data_critic_learns_from_them_not_from_the_batch():
    """update(data_windows=...) (critic_data_recent_steps): the data term's targets are those of the given
    windows (real rewards 5) and not of the training batch (real rewards 0)."""
    torch.manual_seed(0)
    agent = make_pwm(critic_data_coef=1.0, critic_data_recent_steps=100)
    obs, action, _ = batch()
    recent_obs, recent_action, _ = batch(seed=1)
    recent = (recent_obs, recent_action, torch.full((4, 8), 5.0))
    expected = agent.data_value_targets(*recent)[1].mean().item()
    own = agent.data_value_targets(obs, action, torch.zeros(4, 8))[1].mean().item()
    assert expected - own > 4.0
    metrics = agent.update(obs, action, torch.zeros(4, 8), train_world_model=False, data_windows=recent)
    assert metrics["critic/data_target_mean"] == pytest.approx(expected, rel=1e-5)


def test_recent_data_windows_are_refused_offline_and_when_negative():
    from pwm.training.loops import check_offline_agent

    with pytest.raises(ValueError, match="alg.critic_data_recent_steps"):
        make_pwm(critic_data_recent_steps=-1)
    check_offline_agent(make_pwm(critic_data_recent_steps=500))  # no data term: nothing to refuse
    with pytest.raises(ValueError, match="alg.critic_data_recent_steps=500: a fixed dataset"):
        check_offline_agent(make_pwm(critic_data_coef=0.1, critic_data_recent_steps=500))


def test_bc_penalty_gradient_matches_td3_bc_loss_by_hand():
    """The actor's gradient under actor_bc_coef=c is that of -mean(J) / mean|J| + c * mean_i ||tanh(mu(z_i)) - a_i||^2 / d,
    with the same rollout noise (J: the rollout objective per start state)."""
    torch.manual_seed(0)
    agent = make_pwm(horizon=3, gamma=0.5, esnr_splits=1, actor_grad_norm=1e9, actor_bc_coef=0.7)
    with torch.no_grad():  # zero-initialised reward and value heads would leave J flat in the action
        for param in [*agent.wm.parameters(), *agent.target_critic.parameters()]:
            param.add_(0.3 * torch.randn_like(param))
    reference = copy.deepcopy(agent)
    obs0, data_action = torch.randn(6, 6), torch.rand(6, 2) * 2 - 1
    applied, adam_step = {}, agent.actor_optim.step

    def recording_step(*args, **kwargs):  # the gradients the actor's Adam step receives
        applied.update({name: param.grad.clone() for name, param in agent.actor.named_parameters()})
        return adam_step(*args, **kwargs)

    agent.actor_optim.step = recording_step
    torch.manual_seed(1)
    metrics = agent.update_actor_critic(obs0, data_action=data_action)
    z0 = reference.wm.encode(obs0).detach()
    torch.manual_seed(1)
    _, _, objective, _ = reference.rollout(z0)
    mean_action = torch.tanh(reference.actor.net(z0))
    assert objective.std() > 0.1  # J depends on the state, so its gradient is not negligible beside the penalty's
    by_hand = -objective.mean() / objective.detach().abs().mean() + 0.7 * (mean_action - data_action).pow(2).mean()
    expected = torch.autograd.grad(by_hand, list(reference.actor.parameters()), allow_unused=True)
    for (name, param), grad in zip(reference.actor.named_parameters(), expected):
        torch.testing.assert_close(applied[name], grad if grad is not None else torch.zeros_like(param))
    with torch.no_grad():  # the metric is the error after the step
        after = (torch.tanh(agent.actor.net(z0)) - data_action).pow(2).mean().item()
    assert metrics["actor/data_action_error"] == pytest.approx(after, rel=1e-5)


def test_bc_penalty_pulls_the_policy_to_the_data_actions_and_skips_padded_dims():
    """A strong penalty makes the policy's mean action approach the data's; padded action dims do not count."""
    torch.manual_seed(0)
    wm = WorldModel(**{**TINY, "act_dim": 4}, tasks=["a", "b"], action_dims=[4, 2], task_dim=8)
    agent = PWM(wm, ActorStochasticMLP(24, 4, units=[32]), CriticEnsemble(24, units=[32]), horizon=2,
                esnr_splits=1, critic_iterations=1, critic_batch_size=16, actor_lr=3e-3, actor_bc_coef=50.0)
    obs0, task = torch.randn(8, 6), torch.tensor([0, 1] * 4)
    data_action = torch.rand(8, 4) * 1.6 - 0.8
    data_action[task == 1, 2:] = 0.0  # padded dims of task b
    errors = [agent.update_actor_critic(obs0, task, data_action=data_action)["actor/data_action_error"]
              for _ in range(150)]
    assert errors[-1] < 0.1 * errors[0]
    with torch.no_grad():
        mean_action = agent.actor(agent.policy_input(agent.wm.encode(obs0, task), task), deterministic=True)
    valid = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]]).repeat(4, 1)
    by_hand = (((mean_action - data_action) ** 2 * valid).sum(-1) / valid.sum(-1)).mean()
    shifted = data_action.clone()
    shifted[task == 1, 2:] = 5.0  # what the padded dims hold must not matter
    assert agent._data_action_error(agent.wm.encode(obs0, task), shifted, task).item() == pytest.approx(
        by_hand.item(), rel=1e-5)


def test_bc_coef_is_checked_and_needs_the_data_actions():
    with pytest.raises(ValueError, match="alg.actor_bc_coef"):
        make_pwm(actor_bc_coef=-0.1)
    with pytest.raises(ValueError, match="alg.actor_bc_coef=0.4 needs the data's actions"):
        make_pwm(actor_bc_coef=0.4).update_actor_critic(torch.randn(4, 6))
    agent = make_pwm(actor_bc_coef=0.4)  # update() passes the batch's first actions
    assert math.isfinite(agent.update(*batch())["actor/data_action_error"])


@pytest.mark.parametrize("cls", [WorldModel, FlowWorldModel])
def test_medium_matmul_precision_keeps_world_model_gradients_within_bfloat16_error(cls):
    """matmul_precision=medium (opt-in) lets float32 matmuls run in bfloat16 where the CPU has AMX: the
    world-model loss and gradients stay within bfloat16's error of float32's (8-bit mantissa: ~4e-3 per
    product), and highest restores float32 exactly."""
    from pwm.utils.common import set_matmul_precision

    torch.manual_seed(0)
    wm = cls(obs_dim=24, act_dim=6, latent_dim=64, encoder_units=[256], units=[256, 256], num_bins=51)
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(5, 256, 24, generator=g), torch.rand(4, 256, 6, generator=g) * 2 - 1
    rew = torch.randn(4, 256, generator=g)

    def loss_and_gradient():
        torch.manual_seed(1)  # flow's tau draws
        wm.zero_grad()
        loss = compute_wm_loss(wm, obs, act, rew, gamma=0.99)[0]
        loss.backward()
        return loss.item(), torch.cat([p.grad.reshape(-1) for p in wm.parameters() if p.grad is not None])

    exact_loss, exact = loss_and_gradient()
    try:
        set_matmul_precision("medium")
        assert torch.get_float32_matmul_precision() == "medium"
        fast_loss, fast = loss_and_gradient()
    finally:
        set_matmul_precision("highest")
    assert torch.get_float32_matmul_precision() == "highest"
    assert fast_loss == pytest.approx(exact_loss, rel=1e-2)
    assert ((fast - exact).norm() / exact.norm()).item() < 5e-2
    again_loss, again = loss_and_gradient()
    assert again_loss == exact_loss and torch.equal(again, exact)
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        set_matmul_precision("bf16")
