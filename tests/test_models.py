"""World models, flow dynamics, two-hot reward, actor and critic."""

import math

import pytest
import torch

from pwm.models import ActorStochasticMLP, CriticEnsemble, FlowWorldModel, TwoHot, WorldModel
from pwm.models.layers import SimNorm, project_onto_simplices
from pwm.models.two_hot import symexp, symlog

TINY = dict(obs_dim=10, act_dim=4, latent_dim=16, encoder_units=[32], units=[24, 24], num_bins=11)
MT = dict(TINY, tasks=["a", "b", "c"], action_dims=[4, 2, 3], task_dim=8)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("cls", [WorldModel, FlowWorldModel])
@pytest.mark.parametrize("kwargs", [TINY, MT], ids=["single", "multi"])
def test_world_model_shapes(cls, kwargs):
    wm = cls(**kwargs)
    task = torch.tensor([0, 1, 2, 1, 0]) if "tasks" in kwargs else None
    obs = torch.randn(5, 10)
    z = wm.encode(obs, task)
    action = torch.rand(5, 4) * 2 - 1
    assert z.shape == (5, 16)
    assert wm.next(z, action, task).shape == (5, 16)
    assert wm.reward(z, action, task).shape == (5, 11)
    z_next, reward = wm.step(z, action, task)
    assert z_next.shape == (5, 16) and reward.shape == (5, 11)
    assert wm.predict_reward(z, action, task).shape == (5,)
    # time-major inputs [T, B, D] share the per-sample task ids
    assert wm.encode(torch.randn(3, 5, 10), task).shape == (3, 5, 16)
    # encoder output lies on simplices of 8
    assert torch.allclose(z.reshape(5, 2, 8).sum(-1), torch.ones(5, 2), atol=1e-5)


def test_simnorm_groups_sum_to_one():
    x = torch.randn(3, 24)
    y = SimNorm(8)(x)
    assert torch.allclose(y.reshape(3, 3, 8).sum(-1), torch.ones(3, 3), atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        SimNorm(8)(torch.randn(3, 20))


def test_simplex_projection_by_hand_and_optimality():
    # hand cases (groups of 3): uniform shift, a vertex, one entry cut to 0
    x = torch.tensor([[0.5, 0.5, 0.5, 2.0, 0.0, 0.0, 0.6, 0.6, -1.0]])
    expected = torch.tensor([[1 / 3, 1 / 3, 1 / 3, 1.0, 0.0, 0.0, 0.5, 0.5, 0.0]])
    assert torch.allclose(project_onto_simplices(x, 3), expected, atol=1e-6)
    # SimNorm outputs are already in the set: unchanged
    z = SimNorm(8)(3 * torch.randn(50, 24))
    assert torch.allclose(project_onto_simplices(z, 8), z, atol=1e-6)
    # nearest point: no random point of the simplex is closer than the projection
    torch.manual_seed(0)
    y = 2 * torch.randn(20, 8)
    p = project_onto_simplices(y, 8)
    assert p.min() >= 0 and torch.allclose(p.sum(-1), torch.ones(20), atol=1e-5)
    candidates = torch.distributions.Dirichlet(torch.full((8,), 0.3)).sample((4000,))
    nearest = (y[:, None] - candidates[None]).norm(dim=-1).min(dim=1).values
    assert ((y - p).norm(dim=-1) <= nearest + 1e-6).all()
    with pytest.raises(ValueError, match="group_size"):
        project_onto_simplices(torch.randn(2, 10), 8)


def test_flow_latent_projection_keeps_rollouts_on_the_simplices():
    torch.manual_seed(0)
    wm = FlowWorldModel(**TINY, integrate_steps=2, latent_projection="simplex")
    wm.velocity = lambda z, a, t, task=None: torch.full_like(z, 0.4) - z  # leaves the simplices
    z = wm.encode(torch.randn(6, 10))
    out = wm.next(z, torch.zeros(6, 4))
    assert out.min() >= 0 and torch.allclose(out.reshape(6, 2, 8).sum(-1), torch.ones(6, 2), atol=1e-5)
    # the same model without projection leaves the set
    wm.latent_projection = "none"
    assert not torch.allclose(wm.next(z, torch.zeros(6, 4)).reshape(6, 2, 8).sum(-1), torch.ones(6, 2), atol=1e-2)
    with pytest.raises(ValueError, match="latent_projection"):
        FlowWorldModel(**TINY, latent_projection="sphere")


def test_bad_config_values_name_the_field():
    with pytest.raises(ValueError, match="latent_dim=20 must be divisible"):
        WorldModel(**dict(TINY, latent_dim=20))
    with pytest.raises(ValueError, match="integrate_steps"):
        FlowWorldModel(**TINY, integrate_steps=0)
    with pytest.raises(ValueError, match="fm_tau_sampling"):
        FlowWorldModel(**TINY, fm_tau_sampling="beta")
    with pytest.raises(ValueError, match="endpoint_loss_coef must be >= 0, got -1"):
        FlowWorldModel(**TINY, endpoint_loss_coef=-1)
    with pytest.raises(ValueError, match="action_dims"):
        WorldModel(**dict(MT, action_dims=[4, 2]))
    with pytest.raises(ValueError, match="obs_dim=10"):
        WorldModel(**TINY).encode(torch.randn(2, 9))
    with pytest.raises(ValueError, match="task id out of range"):
        WorldModel(**MT).encode(torch.randn(2, 10), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="needs a task id"):
        WorldModel(**MT).encode(torch.randn(2, 10))


@pytest.mark.parametrize("cls", [WorldModel, FlowWorldModel])
def test_action_mask_is_applied(cls):
    """Task 1 has 2 real action dims: its padded dims must not change dynamics or reward."""
    torch.manual_seed(0)
    wm = cls(**MT)
    torch.nn.init.normal_(wm._reward[-1].weight)  # the zero-initialised head would hide any dependence
    task = torch.tensor([1, 1, 0])
    z = wm.encode(torch.randn(3, 10), task)
    a = torch.rand(3, 4)
    a_other = a.clone()
    a_other[:, 2:] = torch.rand(3, 2)
    same = wm.next(z, a, task)[:2], wm.reward(z, a, task)[:2]
    other = wm.next(z, a_other, task)[:2], wm.reward(z, a_other, task)[:2]
    assert torch.allclose(same[0], other[0]) and torch.allclose(same[1], other[1])
    # task 0 uses all 4 dims, so the same change is visible there
    assert not torch.allclose(wm.next(z, a, task)[2], wm.next(z, a_other, task)[2])
    assert torch.equal(wm.mask_action(a, task)[:2, 2:], torch.zeros(2, 2))


def test_parameter_counts_differ_only_by_dynamics_head():
    """Flow adds units[0] weights for the time input; its velocity head drops the baseline's output
    LayerNorm (2 * latent_dim affine params), since a velocity must not be normalised. Nothing else differs."""
    for kwargs in (TINY, MT):
        base, flow = WorldModel(**kwargs), FlowWorldModel(**kwargs)
        assert n_params(flow) - n_params(base) == kwargs["units"][0] - 2 * kwargs["latent_dim"]
        for name in ("_encoder", "_reward"):
            assert n_params(getattr(flow, name)) == n_params(getattr(base, name))
        hidden_base = [m.weight.shape for m in base._dynamics if isinstance(m, torch.nn.Linear)]
        hidden_flow = [m.weight.shape for m in flow._velocity if isinstance(m, torch.nn.Linear)]
        assert [s[0] for s in hidden_base] == [s[0] for s in hidden_flow]  # same widths
        assert hidden_flow[0][1] == hidden_base[0][1] + 1  # +1 input for t


def test_shared_modules_start_identical_under_same_seed():
    torch.manual_seed(3)
    base = WorldModel(**MT)
    torch.manual_seed(3)
    flow = FlowWorldModel(**MT)
    for name in ("_encoder", "_reward", "_task_emb"):
        for p, q in zip(getattr(base, name).parameters(), getattr(flow, name).parameters()):
            assert torch.equal(p, q), name


def test_euler_integration_matches_hand_computation():
    torch.manual_seed(0)
    wm = FlowWorldModel(**MT, integrate_steps=4)
    task = torch.tensor([2, 0])
    z = torch.randn(2, 16)
    a = torch.rand(2, 4)
    masked = a * torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1]])
    emb = wm._task_emb(task)
    expected = z.clone()
    for t_k in (0.125, 0.375, 0.625, 0.875):
        inp = torch.cat([expected, masked, emb, torch.full((2, 1), t_k)], dim=-1)
        expected = expected + 0.25 * wm._velocity(inp)
    assert torch.allclose(wm.next(z, a, task), expected, atol=1e-6)


def test_euler_integration_of_a_linear_field():
    """With v(z, t) = -z exactly, K Euler steps give z (1 - 1/K)^K."""
    wm = FlowWorldModel(**TINY, integrate_steps=8)
    wm.velocity = lambda z, a, t, task=None: -z
    z = torch.randn(3, 16)
    assert torch.allclose(wm.next(z, torch.zeros(3, 4)), z * (1 - 1 / 8) ** 8, atol=1e-6)


def test_latent_clip_rescales_and_counts():
    wm = FlowWorldModel(**TINY, integrate_steps=1, latent_clip_norm=1.0)
    wm.velocity = lambda z, a, t, task=None: torch.zeros_like(z)
    z = torch.stack([torch.full((16,), 1.0), torch.full((16,), 0.01)])  # norms 4 and 0.04
    out = wm.next(z, torch.zeros(2, 4))
    assert torch.allclose(out[0].norm(), torch.tensor(1.0)) and torch.equal(out[1], z[1])
    assert wm.latent_clip_count.item() == 1


def _hand_flow_loss(wm, z0, actions, targets, gamma, taus):
    zs, total = [z0], 0.0
    for t in range(actions.shape[0]):
        z_s, z_t = zs[-1], targets[t]
        tau = taus[t]
        z_tau = (1 - tau) * z_s + tau * z_t
        v = wm.velocity(z_tau, actions[t], tau)
        total = total + gamma**t * ((v - (z_t - z_s)) ** 2).mean()
        zs.append(wm.next(z_s, actions[t]))
    return torch.stack(zs), total / actions.shape[0]


@pytest.mark.parametrize("mode", ["uniform", "midpoint"])
def test_flow_loss_matches_hand_computation(mode):
    torch.manual_seed(0)
    wm = FlowWorldModel(**TINY, fm_tau_sampling=mode)
    horizon, batch = 3, 5
    z0, targets = torch.randn(batch, 16), torch.randn(horizon, batch, 16)
    actions = torch.rand(horizon, batch, 4)
    torch.manual_seed(7)
    zs, loss = wm.latent_rollout_and_dynamics_loss(z0, actions, targets, horizon, 0.9)
    torch.manual_seed(7)
    if mode == "uniform":
        taus = [torch.rand(batch, 1) for _ in range(horizon)]
        assert len({round(float(x), 6) for x in torch.cat(taus)}) > 1  # really per-sample
    else:
        taus = [torch.full((batch, 1), 0.5)] * horizon
    hand_zs, hand_loss = _hand_flow_loss(wm, z0, actions, targets, 0.9, taus)
    assert zs.shape == (horizon + 1, batch, 16)
    assert torch.allclose(zs, hand_zs, atol=1e-6)
    assert torch.allclose(loss, hand_loss, atol=1e-6)


def test_flow_loss_gamma_weighting():
    """Zero velocity: step loss is mean((z_tgt - z_s)^2); the total weights it by gamma^t / H."""
    wm = FlowWorldModel(**TINY, fm_tau_sampling="midpoint")
    wm.velocity = lambda z, a, t, task=None: torch.zeros_like(z)
    z0 = torch.zeros(4, 16)
    targets = torch.stack([torch.full((4, 16), float(t + 1)) for t in range(3)])
    # zero velocity keeps every z_s at 0, so step t loses (t + 1)^2
    _, loss = wm.latent_rollout_and_dynamics_loss(z0, torch.zeros(3, 4, 4), targets, 3, 0.5)
    assert loss.item() == pytest.approx((1 * 1 + 0.5 * 4 + 0.25 * 9) / 3)


@pytest.mark.parametrize("detach", [False, True])
def test_detached_velocity_target_gives_z_source_gradient_only_through_the_field(detach):
    """A velocity field that ignores its input: dL/dz0 is then the target term's alone.

    L = mean((v - (z_tgt - z0))^2) with v constant, so dL/dz0 = 2 (v - z_tgt + z0) / N (N = B * L)
    when the target velocity carries gradient, and exactly 0 when it is detached.
    """
    wm = FlowWorldModel(**TINY, fm_tau_sampling="midpoint", detach_velocity_target=detach)
    bias = torch.linspace(-1.0, 1.0, 16)
    wm.velocity = lambda z, a, t, task=None: bias + 0.0 * z  # constant, but in the graph
    z0 = torch.randn(4, 16, requires_grad=True)
    targets = torch.randn(1, 4, 16)
    _, loss = wm.latent_rollout_and_dynamics_loss(z0, torch.zeros(1, 4, 4), targets, 1, 0.9)
    (grad,) = torch.autograd.grad(loss, z0)
    expected = torch.zeros(4, 16) if detach else 2.0 * (bias - targets[0] + z0.detach()) / z0.numel()
    assert torch.allclose(grad, expected, atol=1e-7)
    assert loss.item() == pytest.approx(((bias - targets[0] + z0.detach()) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("normalizer", ["variance", "motion"])
def test_detached_flow_matching_latents_train_the_field_alone_and_keep_the_rollouts_gradient(normalizer):
    """With ``detach_flow_matching_latents`` the dynamics loss (normalised, so its divisor is in the graph too)
    has the same value as without but gives the encoder's latents no gradient, only the field; the returned
    rollout still carries gradient to ``z0`` (the reward loss trains the encoder through it)."""
    losses, field_grads, z0_grads, rollout_grads = [], [], [], []
    for detach in (False, True):
        torch.manual_seed(0)
        wm = FlowWorldModel(**TINY, normalize_dynamics_loss=True, dynamics_loss_normalizer=normalizer,
                            detach_flow_matching_latents=detach)
        z0 = torch.randn(6, 16, requires_grad=True)
        torch.manual_seed(1)  # the same flow times tau in both models
        zs, loss = wm.latent_rollout_and_dynamics_loss(z0, torch.randn(3, 6, 4), torch.randn(3, 6, 16), 3, 0.9)
        params = list(wm._velocity.parameters())
        grads = torch.autograd.grad(loss, [z0, *params], allow_unused=True, retain_graph=True)
        losses.append(loss.item())
        z0_grads.append(grads[0])
        field_grads.append(torch.cat([g.flatten() for g in grads[1:]]))
        (rollout_grad,) = torch.autograd.grad(zs[-1].sum(), z0)
        rollout_grads.append(rollout_grad)
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert z0_grads[0].abs().sum() > 0 and (z0_grads[1] is None or z0_grads[1].abs().sum() == 0)
    assert torch.allclose(rollout_grads[1], rollout_grads[0]) and rollout_grads[1].abs().sum() > 0
    assert field_grads[1].abs().sum() > 0


@pytest.mark.parametrize("normalizer", ["variance", "motion"])
@pytest.mark.parametrize("cls", [WorldModel, FlowWorldModel])
def test_normalized_dynamics_loss_divides_each_step_by_hand_computed_divisor(cls, normalizer):
    """Known dynamics (baseline: z' = 0.5 z + 0.1; flow: zero velocity, z' = z), hand-computed per step:
    ``loss = (1/H) sum_t gamma^t mean(err_t^2) / (s_t + floor)``. ``variance``: ``s_t`` is the biased batch
    variance of the step's source ``zs[t]``; ``motion``: every step's ``s_t`` is how far the encoder's latent
    moved in the first step, ``mean (targets[0] - z0)^2``."""
    from pwm.models.world_model import VARIANCE_FLOOR

    wm = cls(**TINY, normalize_dynamics_loss=True, dynamics_loss_normalizer=normalizer,
             **({"fm_tau_sampling": "midpoint"} if cls is FlowWorldModel else {}))
    flow = cls is FlowWorldModel
    if flow:
        wm.velocity = lambda z, a, t, task=None: torch.zeros_like(z)
    else:
        wm.next = lambda z, a, task=None: 0.5 * z + 0.1
    torch.manual_seed(0)
    z0, targets, horizon, gamma = torch.randn(4, 16), torch.randn(3, 4, 16), 3, 0.5
    zs, loss = wm.latent_rollout_and_dynamics_loss(z0, torch.zeros(3, 4, 4), targets, horizon, gamma)
    hand, z = 0.0, z0
    for t in range(horizon):
        z_next = z if flow else 0.5 * z + 0.1
        error = (targets[t] - z) if flow else (z_next - targets[t])  # zero velocity: v - (z_tgt - z_s)
        if normalizer == "variance":
            divisor = ((z - z.mean(0)) ** 2).mean(0).mean()
        else:
            divisor = ((targets[0] - z0) ** 2).mean()
        hand += gamma**t * (error**2).mean() / (divisor + VARIANCE_FLOOR)
        z = z_next
    assert loss.item() == pytest.approx(hand.item() / horizon, rel=1e-5)
    wm.normalize_dynamics_loss = False
    _, plain = wm.latent_rollout_and_dynamics_loss(z0, torch.zeros(3, 4, 4), targets, horizon, gamma)
    assert plain.item() != pytest.approx(loss.item(), rel=1e-2)


@pytest.mark.parametrize("normalize", [False, True])
def test_normalized_flow_loss_gives_no_gradient_towards_shrinking_the_latents(normalize):
    """Scale every latent (sources and targets) by ``scale``, shrinking the latent space. With zero velocity the
    spec's loss falls as ``scale^2`` (dL/dscale = 2L at 1: shrinking pays); the normalised loss is flat in
    ``scale``, and its derivative is 0 only because the gradient also flows through the variance."""
    wm = FlowWorldModel(**TINY, fm_tau_sampling="midpoint", normalize_dynamics_loss=normalize)
    wm.velocity = lambda z, a, t, task=None: torch.zeros_like(z)
    torch.manual_seed(1)
    z0, targets = torch.randn(6, 16), torch.randn(2, 6, 16)
    scale = torch.ones((), requires_grad=True)
    _, loss = wm.latent_rollout_and_dynamics_loss(
        scale * z0, torch.zeros(2, 6, 4), scale * targets, 2, 0.9)
    (grad,) = torch.autograd.grad(loss, scale)
    if normalize:
        assert abs(grad.item()) < 1e-4 * loss.item()
    else:
        assert grad.item() == pytest.approx(2.0 * loss.item(), rel=1e-5)


def test_motion_normalized_flow_loss_gives_no_gradient_towards_slowing_the_latents():
    """Pull every latent towards the window's first one by ``slowness`` (consecutive latents converge while
    their spread across windows stays). With zero velocity the variance-normalised loss falls as the latents
    slow down (slowing pays); the motion-normalised one is flat in ``slowness``."""
    torch.manual_seed(2)
    z0, targets = torch.randn(6, 16), torch.randn(2, 6, 16)
    gradients = {}
    for normalizer in ("variance", "motion"):
        wm = FlowWorldModel(**TINY, fm_tau_sampling="midpoint", normalize_dynamics_loss=True,
                            dynamics_loss_normalizer=normalizer)
        wm.velocity = lambda z, a, t, task=None: torch.zeros_like(z)
        slowness = torch.zeros((), requires_grad=True)
        slowed = (1 - slowness) * targets + slowness * z0
        _, loss = wm.latent_rollout_and_dynamics_loss(z0, torch.zeros(2, 6, 4), slowed, 2, 0.9)
        (gradients[normalizer],) = torch.autograd.grad(loss, slowness)
        gradients[normalizer] /= loss.detach()
    assert gradients["variance"] < -0.5  # relative decrease per unit of slowness
    assert abs(gradients["motion"]) < 1e-4
    # The same through the encoder's start latent: with zero velocity a one-step loss is 1 wherever z0 is, so
    # the divisor's gradient cancels the numerator's pull of z0 towards the next latent (detached, it would not).
    wm = FlowWorldModel(**TINY, fm_tau_sampling="midpoint", normalize_dynamics_loss=True,
                        dynamics_loss_normalizer="motion")
    wm.velocity = lambda z, a, t, task=None: torch.zeros_like(z)
    start = z0.clone().requires_grad_(True)
    _, loss = wm.latent_rollout_and_dynamics_loss(start, torch.zeros(1, 6, 4), targets[:1], 1, 0.9)
    (grad,) = torch.autograd.grad(loss, start)
    assert loss.item() == pytest.approx(1.0, rel=1e-6) and grad.abs().max().item() < 1e-6


def test_unknown_dynamics_loss_normalizer_is_named():
    with pytest.raises(ValueError, match="dynamics_loss_normalizer"):
        WorldModel(**TINY, dynamics_loss_normalizer="spread")


def test_normalized_dynamics_loss_needs_two_windows():
    wm = WorldModel(**TINY, normalize_dynamics_loss=True)
    with pytest.raises(ValueError, match="normalize_dynamics_loss"):
        wm.latent_rollout_and_dynamics_loss(torch.zeros(1, 16), torch.zeros(2, 1, 4), torch.zeros(2, 1, 16), 2, 0.99)


def test_flow_loss_rejects_short_sequences():
    wm = FlowWorldModel(**TINY)
    with pytest.raises(ValueError, match="horizon=4"):
        wm.latent_rollout_and_dynamics_loss(torch.zeros(2, 16), torch.zeros(3, 2, 4), torch.zeros(3, 2, 16), 4, 0.99)


def test_two_hot_round_trip_and_loss():
    support = TwoHot(101, -10, 10)
    x = torch.tensor([-500.0, -3.3, -0.01, 0.0, 0.2, 7.5, 1000.0])
    target = support.encode(x)
    assert target.shape == (7, 101)
    assert torch.allclose(target.sum(-1), torch.ones(7))
    assert ((target > 0).sum(-1) <= 2).all()
    assert torch.allclose(support.decode(torch.log(target)), x, rtol=1e-4, atol=1e-4)
    # hand check: symlog(0.2) = log(1.2) = 0.18232 -> position 50.9116 -> bins 50/51 weights .0884/.9116
    pos = math.log(1.2) / 0.2 + 50
    assert target[4, 50].item() == pytest.approx(51 - pos, abs=1e-5)
    assert target[4, 51].item() == pytest.approx(pos - 50, abs=1e-5)
    # soft cross-entropy is minimised (= entropy of the target) by the target itself
    ce_self = support.loss(torch.log(target + 1e-12), x)
    ce_uniform = support.loss(torch.zeros(7, 101), x)
    assert (ce_self < ce_uniform).all()
    assert torch.allclose(symexp(symlog(x)), x)


def test_scalar_reward_head_when_num_bins_le_1():
    support = TwoHot(num_bins=1)
    assert support.out_dim == 1
    assert torch.allclose(support.decode(torch.tensor([[2.0], [-1.0]])), torch.tensor([2.0, -1.0]))
    assert torch.allclose(support.loss(torch.tensor([[2.0]]), torch.tensor([0.5])), torch.tensor([2.25]))
    wm = WorldModel(**dict(TINY, num_bins=0))
    assert wm.reward(torch.zeros(2, 16), torch.zeros(2, 4)).shape == (2, 1)


def test_actor_and_critic():
    torch.manual_seed(0)
    actor = ActorStochasticMLP(16, 4, units=[32])
    x = torch.randn(7, 16)
    a = actor(x)
    assert a.shape == (7, 4) and (a.abs() <= 1).all()
    assert torch.equal(actor(x, deterministic=True), actor(x, deterministic=True))
    critic = CriticEnsemble(16, units=[32], num_critics=3)
    assert critic(x).shape == (3, 7)
    for c in critic.critics:
        torch.nn.init.normal_(c[-1].weight)
    assert torch.allclose(critic.value(x), critic(x).min(0).values)
    with pytest.raises(ValueError, match="num_critics"):
        CriticEnsemble(16, num_critics=0)


def test_composed_mish_equals_torch_mish_and_its_gradient():
    from pwm.models.layers import Mish

    x = torch.linspace(-30, 30, 2001, dtype=torch.float32, requires_grad=True)
    ours = Mish()(x)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    reference = torch.nn.functional.mish(x)
    (grad_reference,) = torch.autograd.grad(reference.sum(), x)
    assert torch.allclose(ours, reference, atol=1e-6, rtol=1e-6)
    assert torch.allclose(grad_ours, grad_reference, atol=1e-6, rtol=1e-5)


def test_simnorm_equals_a_softmax_per_consecutive_group_with_its_gradient():
    x = torch.randn(5, 3, 64, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(5, 3, 64, dtype=torch.float64)
    ours = SimNorm(8)(x)
    reference = torch.cat([torch.softmax(x[..., i:i + 8], dim=-1) for i in range(0, 64, 8)], dim=-1)
    assert torch.allclose(ours, reference, atol=1e-12)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), x)
    assert torch.allclose(grad_ours, grad_reference, atol=1e-12)


def test_recomputed_substeps_give_the_same_rollout_and_gradients():
    from pwm.models import FlowWorldModel

    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        wm = FlowWorldModel(obs_dim=5, act_dim=2, latent_dim=16, encoder_units=[16], units=[16, 16], num_bins=11,
                            integrate_steps=3, recompute_substeps=recompute)
        z = wm.encode(torch.randn(4, 5))
        for _ in range(3):
            z = wm.next(z, torch.rand(4, 2) * 2 - 1)
        (z.pow(2).sum()).backward()
        grads.append((z.detach(), [p.grad.clone() for p in wm.parameters() if p.grad is not None]))
    (z_plain, g_plain), (z_recomputed, g_recomputed) = grads
    assert torch.allclose(z_plain, z_recomputed, atol=1e-6) and len(g_plain) == len(g_recomputed) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_plain, g_recomputed))


def test_flow_rollout_evaluates_loss_and_first_substep_in_one_call_exactly():
    """The training rollout stacks the flow-matching query and the first Euler sub-step into one call of
    the field; its latents, loss and gradients must equal one call each, written out by hand here
    (multi-task, so per-row task ids and action masks have to follow the stacked rows)."""
    from pwm.models import FlowWorldModel

    torch.manual_seed(0)
    wm = FlowWorldModel(obs_dim=5, act_dim=3, latent_dim=16, encoder_units=[16], units=[16, 16], num_bins=11,
                        integrate_steps=3, tasks=["a", "b"], action_dims=[3, 2], task_dim=4)
    horizon, batch, gamma = 4, 6, 0.9
    obs, action = torch.randn(horizon + 1, batch, 5), torch.rand(horizon, batch, 3) * 2 - 1
    task = torch.tensor([0, 1, 1, 0, 1, 0])

    def loss_and_grads(rollout):
        wm.zero_grad()
        torch.manual_seed(1)  # the same flow times tau
        z0, next_z = wm.encode(obs[0], task), wm.encode(obs[1:], task)
        zs, loss = rollout(z0, action, next_z, horizon, gamma, task)
        (loss + zs.pow(2).sum()).backward()
        return zs.detach(), loss.detach(), [p.grad.clone() for p in wm.parameters() if p.grad is not None]

    def one_call_each(z0, act_seq, next_z_seq, horizon, gamma, task):
        zs, loss, dt = [z0], 0.0, 1.0 / wm.integrate_steps
        for t in range(horizon):
            tau = torch.rand(batch, 1)
            z_tau = (1 - tau) * zs[-1] + tau * next_z_seq[t]
            velocity = wm.velocity(z_tau, act_seq[t], tau, task)
            loss = loss + gamma**t * (velocity - (next_z_seq[t] - zs[-1])).pow(2).mean()
            z = zs[-1]
            for k in range(wm.integrate_steps):
                z = z + dt * wm.velocity(z, act_seq[t], torch.full((1,), (k + 0.5) * dt), task)
            zs.append(z)
        return torch.stack(zs), loss / horizon

    fused, by_hand = loss_and_grads(wm.latent_rollout_and_dynamics_loss), loss_and_grads(one_call_each)
    assert torch.allclose(fused[0], by_hand[0], atol=1e-6)
    assert torch.allclose(fused[1], by_hand[1], atol=1e-6)
    assert len(fused[2]) == len(by_hand[2]) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused[2], by_hand[2]))


def test_flow_endpoint_loss_adds_the_baselines_mse_on_each_integrated_latent():
    """endpoint_loss_coef=c adds c * (1/H) sum_t gamma^t mean((zs[t+1] - E(obs[t+1]))^2) to the
    flow-matching loss, inside the shared divisor; the rollout itself is unchanged."""
    from pwm.models import FlowWorldModel
    from pwm.models.world_model import VARIANCE_FLOOR

    torch.manual_seed(0)
    wm = FlowWorldModel(obs_dim=5, act_dim=3, latent_dim=16, encoder_units=[16], units=[16, 16], num_bins=11,
                        integrate_steps=3, normalize_dynamics_loss=True)
    horizon, batch, gamma, coef = 4, 6, 0.9, 2.5
    obs, action = torch.randn(horizon + 1, batch, 5), torch.rand(horizon, batch, 3) * 2 - 1
    z0, next_z = wm.encode(obs[0]), wm.encode(obs[1:])

    def rollout():
        torch.manual_seed(1)  # the same flow times tau
        return wm.latent_rollout_and_dynamics_loss(z0, action, next_z, horizon, gamma)

    zs, flow_matching = rollout()
    wm.endpoint_loss_coef = coef
    zs_with_endpoint, total = rollout()
    divisors = [zs[t].var(0, unbiased=False).mean() + VARIANCE_FLOOR for t in range(horizon)]  # each source's spread
    endpoint = sum(gamma**t * (zs[t + 1] - next_z[t]).pow(2).mean() / divisors[t] for t in range(horizon)) / horizon
    assert torch.equal(zs_with_endpoint, zs)
    assert endpoint > 0.01 * flow_matching
    torch.testing.assert_close(total, flow_matching + coef * endpoint)


def test_recomputation_runs_inside_full_agent_updates():
    from omegaconf import OmegaConf

    from pwm.algorithms.build import build_pwm
    from pwm.utils.common import seed_everything

    from pathlib import Path

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "scripts" / "cfg"),
                               version_base="1.3"):
        merged = OmegaConf.create(OmegaConf.to_container(compose("config", overrides=["alg=pwm_tiny_flow"]).alg))
    results = []
    for recompute in (False, True):
        merged.world_model_config.recompute_substeps = recompute
        seed_everything(0)
        agent = build_pwm(merged, obs_dim=5, act_dim=2, device="cpu")
        obs, action, reward = torch.randn(17, 8, 5), torch.rand(16, 8, 2) * 2 - 1, torch.randn(16, 8)
        metrics = agent.update(obs, action, reward)  # world model, then actor (frozen model) and critic
        results.append((metrics["wm/total_loss"], [p.detach().clone() for p in agent.wm.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))


def test_actor_log_prob_is_the_tanh_gaussian_density():
    torch.manual_seed(0)
    actor = ActorStochasticMLP(5, 3, units=[16], init_log_std=-0.5)
    with torch.no_grad():
        actor.net[-1].bias.copy_(torch.tensor([0.0, 4.0, -12.0]))  # one dimension far into saturation
    x = torch.randn(64, 5)
    torch.manual_seed(1)
    action, log_prob = actor.sample_with_log_prob(x)
    torch.manual_seed(1)
    assert torch.equal(action, actor(x))  # the same reparameterised sample as the plain forward pass
    pre_tanh = torch.atanh(action[:, 0].double())  # invertible where tanh is not saturated
    std = math.exp(-0.5)
    mean = actor.net(x)[:, 0].double()
    by_hand = (-0.5 * ((pre_tanh - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
               - torch.log(1 - torch.tanh(pre_tanh) ** 2))
    assert torch.allclose(log_prob[:, 0].double(), by_hand, atol=1e-4)
    assert torch.isfinite(log_prob).all()
    # saturated dimension: -log(1 - tanh(u)^2) ~ 2|u| - 2 log 2, so log pi ~ +2|u| (the density piles up at the bound)
    assert (log_prob[:, 2] > 15).all()
    assert log_prob.shape == action.shape == (64, 3)
