"""PWM algorithm: WM loss branches, TD(lambda), actor objective, guards, configs, a short training run."""

import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pwm.algorithms.build import build_pwm, is_flow_config
from pwm.algorithms.pwm import PWM, compute_wm_loss, esnr_proxy, lambda_returns
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
    assert not hasattr(wm, "latent_rollout_and_dynamics_loss")
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
    _, rewards, objective = agent.rollout(torch.zeros(4, 16))
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
    grads = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # param 0: mean 2, var 2 -> 2; param 1: 0
    assert esnr_proxy(grads) == pytest.approx((4 / 2 + 0) / 2)


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


def test_configs_differ_only_in_dynamics_keys():
    def flat(cfg):
        return {k: v for k, v in _flatten(OmegaConf.to_container(cfg)).items()}

    for size in ("tiny", "5M", "48M"):
        base, flow = flat(load_alg(f"pwm_{size}")), flat(load_alg(f"pwm_{size}_flow"))
        changed = {k for k in base.keys() | flow.keys() if base.get(k) != flow.get(k)}
        assert changed == {"world_model_config._target_", "world_model_config.integrate_steps",
                           "world_model_config.fm_tau_sampling"}
    cfg48 = load_alg("pwm_48M")
    assert list(cfg48.world_model_config.encoder_units) == [1792] * 3
    assert list(cfg48.world_model_config.units) == [1792] * 2 and cfg48.world_model_config.latent_dim == 768


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
