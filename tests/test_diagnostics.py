"""World-model diagnostics on systems with known dynamics, the plateau rule and the held-out split."""

import math

import pytest
import torch
import torch.nn as nn

from pwm.algorithms.diagnostics import (
    imagination_gap,
    policy_imagination_gap,
    returns_to_go,
    value_calibration,
    world_model_quality,
)
from pwm.algorithms.pwm import PWM
from pwm.data.buffer import EpisodeBuffer
from pwm.data.tdmpc2_format import heldout_mask
from pwm.models import ActorStochasticMLP, CriticEnsemble, FlowWorldModel, WorldModel
from pwm.envs.rollout import Episode
from pwm.training.convergence import PlateauRule
from pwm.training.evaluation import critic_diagnostics

DECAY, ACTION_GAIN, REWARD_WEIGHTS = 0.9, 0.5, torch.tensor([2.0, -1.0])


def linear_system(horizon: int, size: int, seed: int = 0):
    """``s' = 0.9 s + 0.5 a`` (2-D state and action), ``r = w . a + s_0``; time-major windows."""
    g = torch.Generator().manual_seed(seed)
    obs = [torch.randn(size, 2, generator=g)]
    action = torch.rand(horizon, size, 2, generator=g) * 2 - 1
    reward = []
    for t in range(horizon):
        reward.append(action[t] @ REWARD_WEIGHTS + obs[-1][:, 0])
        obs.append(DECAY * obs[-1] + ACTION_GAIN * action[t])
    return torch.stack(obs), action, torch.stack(reward)


class OracleModel(nn.Module):
    """The linear system itself as a world model (identity encoder), with an optional dynamics bias."""

    def __init__(self, bias: float = 0.0, constant_encoder: bool = False):
        super().__init__()
        self.bias, self.constant_encoder = bias, constant_encoder

    def encode(self, obs, task=None):
        return torch.zeros_like(obs) if self.constant_encoder else obs

    def next(self, z, action, task=None):
        return DECAY * z + ACTION_GAIN * action + self.bias

    def predict_reward(self, z, action, task=None):
        return action @ REWARD_WEIGHTS + z[..., 0]


def test_perfect_model_scores_zero_error_and_full_correlation():
    obs, action, reward = linear_system(horizon=5, size=256)
    m = world_model_quality(OracleModel(), obs, action, reward)
    for key in ("latent_mse_1", "latent_mse_H", "latent_nmse_mean", "reward_mse_H_rollout", "heldout_error",
                "latent_vs_copy_1", "latent_vs_copy_H"):
        assert m[f"wm_eval/{key}"] == pytest.approx(0.0, abs=1e-10), key
    assert m["wm_eval/reward_corr_rollout"] == pytest.approx(1.0, abs=1e-6)
    assert m["wm_eval/latent_spread"] == pytest.approx(obs[0].std(0, unbiased=False).mean().item(), rel=1e-6)
    assert m["wm_eval/reward_action_grad"] == pytest.approx(REWARD_WEIGHTS.norm().item(), rel=1e-6)
    # d/da_0 sum_t g^t r_t: r_0 = w . a_0 gives w; a_0 moves s_t by 0.5 * 0.9^(t-1) in both dims and r_t reads s_0
    expected = REWARD_WEIGHTS.clone()
    expected += sum(0.99**t * ACTION_GAIN * DECAY ** (t - 1) for t in range(1, 5)) * torch.tensor([1.0, 0.0])
    assert m["wm_eval/return_action_grad"] == pytest.approx(expected.norm().item(), rel=1e-5)


def test_biased_dynamics_errors_match_hand_computation():
    bias, horizon = 0.1, 4
    obs, action, reward = linear_system(horizon, size=512)
    m = world_model_quality(OracleModel(bias=bias), obs, action, reward)
    # the open-loop error after t steps of z' = 0.9 z + 0.5 a + b is b * sum_{k<t} 0.9^k in every dimension
    error = [bias * sum(DECAY**k for k in range(t)) for t in range(1, horizon + 1)]
    assert m["wm_eval/latent_mse_1"] == pytest.approx(error[0] ** 2, rel=1e-5)
    assert m["wm_eval/latent_mse_H"] == pytest.approx(error[-1] ** 2, rel=1e-5)
    target_var = obs[1:].var(dim=1, unbiased=False).mean(-1)
    expected_nmse = torch.tensor(error) ** 2 / target_var
    assert m["wm_eval/latent_nmse_mean"] == pytest.approx(expected_nmse.mean().item(), rel=1e-5)
    # rewards read state dim 0: along the rollout they are off by the accumulated bias (0 at step 0)
    reward_error = torch.tensor([0.0] + error[:-1]) ** 2
    assert m["wm_eval/reward_mse_1"] == pytest.approx(0.0, abs=1e-10)
    assert m["wm_eval/reward_mse_H_rollout"] == pytest.approx(reward_error.mean().item(), rel=1e-5)
    assert m["wm_eval/reward_nmse_rollout"] == pytest.approx(
        reward_error.mean().item() / reward.var(unbiased=False).item(), rel=1e-5)
    # against copying the start latent: the error is b per dimension (norm b * sqrt(2)) after one step
    # and error[-1] * sqrt(2) after H, over the mean distance the (identity-encoded) state really moved
    moved_1, moved_H = (obs[1] - obs[0]).norm(dim=-1).mean(), (obs[-1] - obs[0]).norm(dim=-1).mean()
    assert m["wm_eval/latent_vs_copy_1"] == pytest.approx(error[0] * math.sqrt(2) / moved_1.item(), rel=1e-5)
    assert m["wm_eval/latent_vs_copy_H"] == pytest.approx(error[-1] * math.sqrt(2) / moved_H.item(), rel=1e-5)
    copy_nmse = (obs[1] - obs[0]).pow(2).mean() / obs[1].var(dim=0, unbiased=False).mean()
    assert m["wm_eval/copy_nmse_1"] == pytest.approx(copy_nmse.item(), rel=1e-5)


class CopyModel(OracleModel):
    """Predicts that nothing moves, on an encoder that keeps a share ``1 - slowness`` of each observation's
    own component and replaces the rest with the window's first observation: consecutive latents
    nearly equal when ``slowness`` is close to 1 (a slow-feature encoder)."""

    def __init__(self, anchor: torch.Tensor, slowness: float):
        super().__init__()
        self.anchor, self.slowness = anchor, slowness

    def encode(self, obs, task=None):
        return (1 - self.slowness) * obs + self.slowness * self.anchor

    def next(self, z, action, task=None):
        return z


def test_copy_scores_flag_a_slow_encoder_that_flatters_the_normalised_error():
    obs, action, reward = linear_system(horizon=4, size=512)
    fast = world_model_quality(CopyModel(obs[0], slowness=0.0), obs, action, reward)
    slow = world_model_quality(CopyModel(obs[0], slowness=0.99), obs, action, reward)
    # the slow encoder shrinks the copy's normalised error by orders of magnitude ...
    assert slow["wm_eval/latent_nmse_1"] < 0.01 * fast["wm_eval/latent_nmse_1"]
    # ... which is exactly the motion the encoder keeps: copy_nmse_1 says so, and is the model's own error here
    for m in (fast, slow):
        assert m["wm_eval/copy_nmse_1"] == pytest.approx(m["wm_eval/latent_nmse_1"], rel=1e-5)
        # against the copy prediction the model is exactly as good as copying, whatever the encoder
        assert m["wm_eval/latent_vs_copy_1"] == pytest.approx(1.0, rel=1e-6)
        assert m["wm_eval/latent_vs_copy_H"] == pytest.approx(1.0, rel=1e-6)


def test_collapsed_encoder_is_flagged_not_rewarded():
    obs, action, reward = linear_system(horizon=3, size=128)
    m = world_model_quality(OracleModel(constant_encoder=True), obs, action, reward)
    assert m["wm_eval/latent_spread"] == 0.0
    assert math.isnan(m["wm_eval/latent_nmse_1"])  # zero error on a collapsed latent is not "perfect"
    assert math.isnan(m["wm_eval/latent_vs_copy_1"]) and math.isnan(m["wm_eval/copy_nmse_1"])


def test_diagnostics_reject_misaligned_windows():
    obs, action, reward = linear_system(horizon=3, size=8)
    with pytest.raises(ValueError, match="expected obs"):
        world_model_quality(OracleModel(), obs[:-1], action, reward)


@pytest.mark.parametrize("cls", [WorldModel, FlowWorldModel])
def test_short_pretraining_improves_heldout_prediction_and_reward_correlation(cls):
    """A real (tiny) world model trained on the linear system gets better on held-out windows."""
    torch.manual_seed(0)
    wm = cls(obs_dim=2, act_dim=2, latent_dim=16, encoder_units=[32], units=[32, 32], num_bins=21,
             vmin=-5, vmax=5)
    agent = PWM(wm, ActorStochasticMLP(16, 2, units=[16]), CriticEnsemble(16, units=[16]), horizon=4,
                model_lr=3e-3, wm_dynamics_coef=20.0, wm_reward_coef=0.1)
    heldout = linear_system(horizon=4, size=512, seed=99)
    before = world_model_quality(agent.wm, *heldout)
    for step in range(200):
        agent.update_world_model(*linear_system(horizon=4, size=128, seed=step))
    after = world_model_quality(agent.wm, *heldout)
    assert math.isnan(before["wm_eval/reward_corr_rollout"])  # the zero-initialised head predicts a constant
    assert after["wm_eval/reward_corr_rollout"] > 0.9
    assert after["wm_eval/reward_nmse_rollout"] < 0.3 * before["wm_eval/reward_nmse_rollout"]
    assert after["wm_eval/latent_nmse_mean"] < 0.5 * before["wm_eval/latent_nmse_mean"]
    assert after["wm_eval/heldout_error"] < 0.5 * before["wm_eval/heldout_error"]


def test_diagnostics_score_in_eval_mode_and_give_the_mode_back():
    wm = WorldModel(obs_dim=2, act_dim=2, latent_dim=16, encoder_units=[32], units=[32, 32], num_bins=21)
    modes = []
    encode = wm.encode
    wm.encode = lambda obs, task=None: modes.append(wm.training) or encode(obs, task)
    obs, action, reward = linear_system(horizon=3, size=16)
    for training in (True, False):
        wm.train(training)
        world_model_quality(wm, obs, action, reward)
        policy_imagination_gap(wm, lambda z: torch.zeros(z.shape[0], 2), obs[0], reward)
        assert wm.training is training
    assert modes and not any(modes)


def test_plateau_rule_waits_for_patience_and_minimum_iterations():
    rule = PlateauRule(patience=2, min_improvement=0.1, min_iterations=10)
    assert rule.update(0, 1.0) and rule.best == 1.0
    assert rule.update(1, 0.95) and rule.best_iteration == 1  # a new lowest value (its weights are kept) ...
    assert rule.evaluations_since_improvement == 1  # ... but 5% is below the 10% that counts as progress
    assert rule.update(2, 0.8) and rule.evaluations_since_improvement == 0
    assert not rule.update(3, float("nan"))
    assert not rule.converged(3)  # one evaluation without improvement, patience is 2
    assert rule.update(4, 0.79)
    assert not rule.converged(4)  # patience reached, but only 5 of 10 iterations
    assert rule.converged(9)
    clone = PlateauRule(patience=2, min_improvement=0.1, min_iterations=10)
    clone.load_state_dict(rule.state_dict())
    assert clone == rule
    with pytest.raises(ValueError, match="pretrain.patience"):
        PlateauRule(patience=0, min_improvement=0.1, min_iterations=0)


def test_plateau_rule_averages_a_window_so_noise_does_not_stop_a_falling_error():
    """An error falling 2% per evaluation under +-30% noise: single values stall, 4-evaluation means do not."""
    noisy = [1.0 * 0.98**i * (1.3 if i % 2 else 0.7) for i in range(40)]
    single = PlateauRule(patience=3, min_improvement=0.05, min_iterations=0)
    windowed = PlateauRule(patience=3, min_improvement=0.05, min_iterations=0, window=4)
    stops = {}
    for i, value in enumerate(noisy):
        for name, rule in (("single", single), ("windowed", windowed)):
            rule.update(i, value)
            if rule.converged(i) and name not in stops:
                stops[name] = i
    assert stops["single"] < 10 and "windowed" not in stops
    assert windowed.best == min(noisy) and windowed.best_iteration == noisy.index(min(noisy))
    assert windowed.best_window_mean == pytest.approx(sum(noisy[-4:]) / 4)


def test_heldout_split_is_evenly_spaced_and_never_sampled_for_training():
    assert heldout_mask(0, 20, 0.1).nonzero().flatten().tolist() == [0, 10]
    assert heldout_mask(0, 2, 0.1).tolist() == [True, False]  # any fraction > 0 holds one out
    # continuing the count across chunks gives the same selection as one chunk
    assert torch.equal(torch.cat([heldout_mask(0, 7, 0.25), heldout_mask(7, 13, 0.25)]), heldout_mask(0, 20, 0.25))
    buffer = EpisodeBuffer(obs_dim=1, act_dim=1, horizon=2)
    episode_ids = torch.arange(4.0)
    obs = episode_ids[:, None, None].expand(4, 6, 1).clone()
    buffer.add_episodes(obs, torch.zeros(4, 6, 1), torch.zeros(4, 6), torch.zeros(4, dtype=torch.long),
                        heldout=torch.tensor([False, True, False, True]))
    assert buffer.num_heldout_episodes == 2 and buffer.num_windows == buffer.num_heldout_windows == 2 * 4
    train = buffer.sample(500, torch.Generator().manual_seed(0)).obs
    heldout = buffer.sample(500, torch.Generator().manual_seed(0), split="heldout").obs
    assert set(train.unique().tolist()) == {0.0, 2.0} and set(heldout.unique().tolist()) == {1.0, 3.0}
    restored = EpisodeBuffer(obs_dim=1, act_dim=1, horizon=2)
    restored.load_state_dict(buffer.state_dict())
    assert restored.num_heldout_windows == 8 and restored.num_heldout_episodes == 2


def test_imagination_gap_follows_the_real_states_the_model_and_the_policy():
    torch.manual_seed(0)
    wm = WorldModel(obs_dim=2, act_dim=2, latent_dim=16, encoder_units=[16], units=[16], num_bins=11)
    for param in wm.parameters():  # the reward head starts at zero: random weights make every input count
        nn.init.normal_(param, std=0.5)
    obs, action, _ = linear_system(horizon=5, size=1)
    obs, action = obs[:, 0], action[:, 0]  # one episode: [T + 1, 2], [T, 2]
    fixed = torch.tensor([[0.3, -0.7]])
    gap = imagination_gap(wm, lambda latent: fixed, obs, action, steps=4)
    assert all(v.shape == (4,) for v in gap.values())
    assert gap["one_step"].std() > 1e-3 and not torch.allclose(gap["open_loop"], gap["imagined_policy"])
    with torch.no_grad():
        assert torch.allclose(gap["one_step"], wm.predict_reward(wm.encode(obs[:4]), action[:4]))
        z1 = wm.next(wm.encode(obs[:1]), action[:1])
        assert torch.allclose(gap["open_loop"][1], wm.predict_reward(z1, action[1:2])[0])
        z1_policy = wm.next(wm.encode(obs[:1]), fixed)
        assert torch.allclose(gap["imagined_policy"][1], wm.predict_reward(z1_policy, fixed)[0])
    # a policy that repeats the episode's actions imagines exactly the open-loop rollout
    repeated = action[:1].expand(5, 2)
    same = imagination_gap(wm, lambda latent: action[:1], obs, repeated, steps=4)
    assert torch.allclose(same["imagined_policy"], same["open_loop"])
    with pytest.raises(ValueError, match="fewer than steps=9"):
        imagination_gap(wm, lambda latent: fixed, obs, action, steps=9)


def test_policy_imagination_gap_is_the_closed_loop_reward_error_of_the_policy():
    """State feedback a = -0.5 s on the linear system: the closed loop is s' = 0.65 s and r = w . a + s_0 =
    0.5 s_1. A model with dynamics bias b drifts by b * sum_{k<t} 0.65^k per dimension after t steps under
    the policy (0.9^k under the recorded actions), so its imagined reward is off by 0.5 times that."""
    horizon, gain, bias = 4, -0.5, 0.1
    start = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    states, real = [start], []
    for _ in range(horizon):  # the real system under the policy: what an evaluation episode records
        action = gain * states[-1]
        real.append(action @ REWARD_WEIGHTS + states[-1][:, 0])
        states.append(DECAY * states[-1] + ACTION_GAIN * action)
    real = torch.stack(real)  # [H, B]

    def policy(z):
        return gain * z

    exact = policy_imagination_gap(OracleModel(), policy, start, real)
    assert exact["wm_eval/imagined_policy_gap"] == pytest.approx(0.0, abs=1e-6)
    assert exact["wm_eval/imagined_policy_reward"] == pytest.approx(real.mean().item(), rel=1e-6)
    biased = policy_imagination_gap(OracleModel(bias=bias), policy, start, real)
    closed_loop = DECAY + ACTION_GAIN * gain
    drift = [bias * sum(closed_loop**k for k in range(t)) for t in range(horizon)]
    assert biased["wm_eval/imagined_policy_gap"] == pytest.approx(0.5 * sum(drift) / horizon, rel=1e-5)
    assert biased["wm_eval/imagined_policy_gap_final"] == pytest.approx(0.5 * drift[-1], rel=1e-5)
    assert biased["wm_eval/imagined_policy_reward"] == pytest.approx(
        real.mean().item() + 0.5 * sum(drift) / horizon, rel=1e-5)


def test_returns_to_go_match_hand_computation_with_and_without_bootstrap():
    reward = torch.tensor([float("nan"), 1.0, 2.0, 3.0])  # row 0 (NaN) is never read
    # G_2 = 3 + 0.5 * 4, G_1 = 2 + 0.5 * G_2, G_0 = 1 + 0.5 * G_1
    assert returns_to_go(reward, 0.5, final_value=4.0).tolist() == [3.25, 4.5, 5.0]
    assert returns_to_go(reward, 0.5, final_value=0.0).tolist() == [2.75, 3.5, 3.0]


def test_value_calibration_measures_overvaluation_against_real_returns():
    reward = torch.tensor([float("nan"), 1.0, 2.0, 3.0])
    exact = torch.tensor([3.25, 4.5, 5.0, 4.0])  # the last value bootstraps the time-limited episode
    calibrated = value_calibration([exact], [reward], [False], gamma=0.5)
    assert calibrated["critic_eval/value_bias"] == pytest.approx(0.0, abs=1e-12)
    assert calibrated["critic_eval/value_corr"] == pytest.approx(1.0)
    assert calibrated["critic_eval/mean_return"] == pytest.approx((3.25 + 4.5 + 5.0) / 3)
    # a terminated episode is not bootstrapped: the same values are then 0.5 * 4 too high at t = 2, ...
    ended = value_calibration([exact], [reward], [True], gamma=0.5)
    assert ended["critic_eval/value_bias"] == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    # values too high by 10 on one episode and too low by 2 on another (bias 4, mean |error| 6)
    second = torch.tensor([2.75, 3.5, 3.0, 0.0]) - 2.0
    mixed = value_calibration([exact + 10.0, second], [reward, reward], [False, True], gamma=0.5)
    # the first episode's bootstrap moves with its last value: G = exact + 10 * 0.5^(T - t)
    first_errors = [10.0 - 10.0 * 0.5 ** (3 - t) for t in range(3)]
    assert mixed["critic_eval/value_bias"] == pytest.approx((sum(first_errors) - 6.0) / 6)
    assert mixed["critic_eval/value_abs_error"] == pytest.approx((sum(first_errors) + 6.0) / 6)
    assert value_calibration([], [], [], gamma=0.5) == {}


def test_critic_diagnostics_score_the_agents_own_critic_on_encoded_states():
    torch.manual_seed(0)
    wm = WorldModel(obs_dim=2, act_dim=2, latent_dim=16, encoder_units=[16], units=[16], num_bins=11)
    agent = PWM(wm, ActorStochasticMLP(16, 2, units=[16]), CriticEnsemble(16, units=[16]), horizon=4)
    for param in agent.critic.parameters():  # the output layer starts at zero; after the target critic's copy,
        nn.init.normal_(param, std=0.5)       # so that the online critic (the one scored) differs from it
    obs, action, reward = linear_system(horizon=6, size=1)
    nan_row = torch.full((1, 2), float("nan"))
    episode = Episode(obs=obs[:, 0], action=torch.cat([nan_row, action[:, 0]]),
                      reward=torch.cat([torch.tensor([float("nan")]), reward[:, 0]]), success=0.0, terminated=False)
    metrics = critic_diagnostics(agent, [episode])
    with torch.no_grad():
        values = agent.critic.value(wm.encode(obs[:, 0]))
    expected = value_calibration([values], [episode.reward], [False], gamma=agent.gamma)
    assert metrics == pytest.approx(expected)
    assert metrics["critic_eval/value_bias"] != 0.0 and -1.0 < metrics["critic_eval/value_corr"] < 1.0
