"""World-model pretraining: plateau stopping, best-weight restore, exact resume."""

import weakref
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from pwm.algorithms.pwm import PWM
from pwm.data.buffer import EpisodeBuffer
from pwm.data.tdmpc2_format import heldout_mask
from pwm.models import ActorStochasticMLP, CriticEnsemble, FlowWorldModel, WorldModel
from pwm.envs.wrappers import TaskEnv
from pwm.training.loops import pretrain_world_model, train_offline
from pwm.training.pipelines import _release_ddp
from pwm.utils.common import load_checkpoint

HORIZON = 3


def agent(cls=WorldModel, seed: int = 0) -> PWM:
    torch.manual_seed(seed)
    wm = cls(obs_dim=2, act_dim=2, latent_dim=16, encoder_units=[16], units=[16, 16], num_bins=11, vmin=-5, vmax=5)
    return PWM(wm, ActorStochasticMLP(16, 2, units=[8]), CriticEnsemble(16, units=[8]), horizon=HORIZON,
               model_lr=3e-3, wm_dynamics_coef=20.0, wm_reward_coef=0.1)


def linear_buffer(episodes: int = 10, length: int = 20, heldout_fraction: float = 0.2) -> EpisodeBuffer:
    """Episodes of s' = 0.9 s + 0.5 a, r = s_0 (TD-MPC2 layout), some held out."""
    g = torch.Generator().manual_seed(0)
    obs = torch.zeros(episodes, length + 1, 2)
    obs[:, 0] = torch.randn(episodes, 2, generator=g)
    action = torch.rand(episodes, length + 1, 2, generator=g) * 2 - 1
    reward = torch.zeros(episodes, length + 1)
    for t in range(1, length + 1):
        obs[:, t] = 0.9 * obs[:, t - 1] + 0.5 * action[:, t]
        reward[:, t] = obs[:, t - 1, 0]
    buffer = EpisodeBuffer(2, 2, HORIZON)
    buffer.add_episodes(obs, action, reward, torch.zeros(episodes, dtype=torch.long),
                        heldout_mask(0, episodes, heldout_fraction))
    return buffer


def pretrain_cfg(**changes):
    cfg = {"iterations": 40, "heldout_windows": 64, "eval_every": 5, "window": 1, "patience": 2,
           "min_improvement": 0.0, "min_iterations": 0, "log_every": 5, "checkpoint_every": 10, "resume": True,
           "tensorboard": False, "wandb": False}
    return OmegaConf.create({**cfg, **changes})


def test_pretraining_stops_on_plateau_and_restores_the_best_weights(tmp_path, monkeypatch):
    """A held-out error that improves twice then worsens: stop after `patience` bad evaluations, keep eval 2."""
    errors = iter([1.0, 0.5, 0.6, 0.7, 0.1])
    snapshots = []

    def fake_quality(wm, *args, **kwargs):
        snapshots.append({k: v.clone() for k, v in wm.state_dict().items()})
        return {"wm_eval/heldout_error": next(errors)}

    monkeypatch.setattr("pwm.training.loops.world_model_quality", fake_quality)
    learner = agent()
    summary = pretrain_world_model(learner, linear_buffer(), tmp_path, pretrain_cfg(), batch_size=16, seed=0, meta={})
    assert summary["iterations"] == 20 and summary["converged"] is True  # evaluations at 5, 10, 15, 20
    assert summary["best_iteration"] == 10 and summary["heldout_error"] == 0.5
    for key, value in learner.wm.state_dict().items():
        assert torch.equal(value, snapshots[1][key]), key
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["finished"] and state["progress"]["iteration"] == 20
    # re-running a finished pretraining trains nothing more and reports the same result
    again = agent(seed=1)
    assert pretrain_world_model(again, linear_buffer(), tmp_path, pretrain_cfg(), 16, 0, {})["iterations"] == 20
    assert all(torch.equal(a, b) for a, b in zip(again.wm.state_dict().values(), learner.wm.state_dict().values()))


def test_pretraining_reports_the_mean_of_its_last_evaluations_also_when_rerun(tmp_path, monkeypatch):
    """``heldout_error_final``: the mean of the last ``window`` held-out errors (where training ended), beside
    the lowest one; a finished run asked again (a resumed A/B job's half-budget check) reports the same."""
    errors = iter([1.0, 0.5, 0.6, 0.7, 0.2, 0.2])
    monkeypatch.setattr("pwm.training.loops.world_model_quality",
                        lambda *args, **kwargs: {"wm_eval/heldout_error": next(errors)})
    cfg = pretrain_cfg(iterations=20, window=3, patience=100)
    summary = pretrain_world_model(agent(), linear_buffer(), tmp_path, cfg, 16, 0, {})  # evaluations at 5..20
    assert summary["heldout_error"] == 0.5 and summary["heldout_error_final"] == pytest.approx((0.5 + 0.6 + 0.7) / 3)
    again = pretrain_world_model(agent(), linear_buffer(), tmp_path, cfg, 16, 0, {})
    assert again["iterations"] == 20 and again["heldout_error_final"] == summary["heldout_error_final"]


def test_pretraining_without_heldout_episodes_runs_to_the_cap_unchecked(tmp_path):
    summary = pretrain_world_model(agent(), linear_buffer(heldout_fraction=0.0), tmp_path,
                                   pretrain_cfg(iterations=12), 16, 0, {})
    assert summary["iterations"] == 12 and summary["converged"] is None


def test_pretraining_reaching_the_cap_while_improving_is_not_converged(tmp_path):
    summary = pretrain_world_model(agent(), linear_buffer(), tmp_path,
                                   pretrain_cfg(iterations=30, patience=50), 16, 0, {})
    assert summary["iterations"] == 30 and summary["converged"] is False


def test_linear_pretraining_schedule_decays_the_world_model_rate_alone_then_restores_it(tmp_path):
    """lr at iteration k of a cap N: initial + (lr_final - initial) * k / N (hand values below), on the
    world model's optimizer only; after pretraining every rate is back at its start."""
    learner = agent()  # model_lr 3e-3
    seen = []
    update = learner.update_world_model

    def recording_update(*args, **kwargs):
        seen.append((learner.wm_optim.param_groups[0]["lr"], learner.actor_optim.param_groups[0]["lr"]))
        return update(*args, **kwargs)

    learner.update_world_model = recording_update
    actor_lr = learner.actor_optim.param_groups[0]["lr"]
    cfg = pretrain_cfg(iterations=10, patience=100, lr_schedule="linear", lr_final=1e-4)
    summary = pretrain_world_model(learner, linear_buffer(), tmp_path, cfg, 16, 0, {})
    assert summary["iterations"] == 10 and len(seen) == 10
    assert [wm_lr for wm_lr, _ in seen] == pytest.approx([3e-3 - 2.9e-4 * k for k in range(10)])
    assert all(lr == actor_lr for _, lr in seen)
    assert learner.wm_optim.param_groups[0]["lr"] == pytest.approx(3e-3)
    logged = pd.read_csv(tmp_path / "metrics.csv")["wm/lr"].dropna()
    assert logged.iloc[-1] == pytest.approx(3e-3 - 2.9e-4 * 9)  # the rate of the last logged update

    constant = agent()
    pretrain_world_model(constant, linear_buffer(), tmp_path / "constant", pretrain_cfg(iterations=4), 16, 0, {})
    assert constant.wm_optim.param_groups[0]["lr"] == 3e-3
    # the cap sets every rate: the run resumes under its own cap, not another (a constant rate extends)
    with pytest.raises(ValueError, match=r"pretrain_lr_schedule=\{'iterations': 10, .*'iterations': 20"):
        pretrain_world_model(agent(), linear_buffer(), tmp_path, {**cfg, "iterations": 20}, 16, 0, {})
    assert pretrain_world_model(agent(), linear_buffer(), tmp_path, cfg, 16, 0, {})["iterations"] == 10
    extended = pretrain_world_model(agent(), linear_buffer(), tmp_path / "constant", pretrain_cfg(iterations=8), 16, 0, {})
    assert extended["iterations"] == 8


def test_annealing_after_the_plateau_decays_the_rate_then_stops_and_resumes_exactly(tmp_path, monkeypatch):
    """anneal_iterations=10: the plateau (patience 2, evaluations every 5) is reached after 20 iterations;
    updates 20..29 then run at initial + (lr_final - initial) * (k + 1 - 20) / 10, training stops at 30 (not
    at the cap of 40) as converged, and keeps its best evaluation (the annealed one at 30). A run killed
    during the decay resumes it where it was."""
    def errors():
        return iter([1.0, 0.5, 0.6, 0.7, 0.4, 0.3])

    def record_rates(learner, seen):
        update = learner.update_world_model

        def recording_update(*args, **kwargs):
            seen.append(learner.wm_optim.param_groups[0]["lr"])
            return update(*args, **kwargs)

        learner.update_world_model = recording_update

    sequence = errors()
    monkeypatch.setattr("pwm.training.loops.world_model_quality",
                        lambda *args, **kwargs: {"wm_eval/heldout_error": next(sequence)})
    cfg = pretrain_cfg(anneal_iterations=10, lr_final=1e-4)
    learner, seen = agent(), []
    record_rates(learner, seen)
    summary = pretrain_world_model(learner, linear_buffer(), tmp_path / "full", cfg, 16, 0, {})
    assert summary["iterations"] == 30 and summary["converged"] is True and summary["plateau_iterations"] == 20
    assert summary["best_iteration"] == 30 and summary["heldout_error"] == 0.3
    assert seen == pytest.approx([3e-3] * 20 + [3e-3 - 2.9e-4 * (k + 1) for k in range(10)])
    assert learner.wm_optim.param_groups[0]["lr"] == pytest.approx(3e-3)  # what follows starts from the rate

    sequence = errors()
    killed, resumed_rates = agent(), []
    killed.update_world_model = crash_after(killed.update_world_model, 23)  # last checkpoint: 20, the plateau
    with pytest.raises(KeyboardInterrupt):
        pretrain_world_model(killed, linear_buffer(), tmp_path / "split", cfg, 16, 0, {})
    sequence = iter([0.4, 0.3])  # the evaluations after the checkpoint
    resumed = agent(seed=5)
    record_rates(resumed, resumed_rates)
    again = pretrain_world_model(resumed, linear_buffer(), tmp_path / "split", cfg, 16, 0, {})
    assert again["iterations"] == 30 and again["plateau_iterations"] == 20 and resumed_rates == seen[20:]
    for (key, a), b in zip(learner.wm.state_dict().items(), resumed.wm.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("key, value, message", [
    ("lr_schedule", "cosine", "pretrain.lr_schedule must be one of"),
    ("lr_final", 0.0, "pretrain.lr_final must be > 0"),
    ("anneal_iterations", 7, r"anneal_iterations must be >= 0 and a multiple of pretrain.eval_every \(5\), got 7"),
    ("anneal_iterations", -5, "pretrain.anneal_iterations must be >= 0"),
])
def test_bad_pretraining_schedule_settings_are_named(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        pretrain_world_model(agent(), linear_buffer(), tmp_path, pretrain_cfg(**{key: value}), 16, 0, {})
    assert not (tmp_path / "checkpoint.pt").exists()


def crash_after(function, calls: int):
    """``function`` that raises KeyboardInterrupt (a killed run) on its call number ``calls + 1``."""
    made = []

    def wrapped(*args, **kwargs):
        made.append(1)
        if len(made) > calls:
            raise KeyboardInterrupt
        return function(*args, **kwargs)

    return wrapped


def test_interrupted_pretraining_resumes_bit_identically(tmp_path):
    """Killed after iteration 13 (last checkpoint: 10), then re-run: the same weights as never stopping.
    Flow draws tau from torch's global RNG and batches from the sampler: both are restored."""
    cfg = pretrain_cfg(iterations=20, patience=100)
    full = agent(FlowWorldModel)
    pretrain_world_model(full, linear_buffer(), tmp_path / "full", cfg, 16, 0, {})

    killed = agent(FlowWorldModel)
    killed.update_world_model = crash_after(killed.update_world_model, 13)
    with pytest.raises(KeyboardInterrupt):
        pretrain_world_model(killed, linear_buffer(), tmp_path / "split", cfg, 16, 0, {})
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["progress"]["iteration"] == 10
    torch.manual_seed(123)  # a fresh process starts from another RNG state
    resumed = agent(FlowWorldModel, seed=5)
    pretrain_world_model(resumed, linear_buffer(), tmp_path / "split", cfg, 16, 0, {})
    for (key, a), b in zip(full.wm.state_dict().items(), resumed.wm.state_dict().values()):
        assert torch.equal(a, b), key


class LinearEnv(TaskEnv):
    """s' = 0.9 s + 0.5 a, r = s_0: the buffer's system as an environment (5-step episodes)."""

    name, obs_dim, act_dim, action_repeat, max_episode_steps = "linear", 2, 2, 1, 5

    def _reset(self, seed):
        self._state = np.full(2, 0.5)
        return self._state

    def _step(self, action):
        reward = float(self._state[0])
        self._state = 0.9 * self._state + 0.5 * action
        return self._state, reward, False, False, {"success": 0.0}


def offline_cfg(**changes):
    cfg = {"iterations": 30, "eval_every": 10, "eval_episodes": 1, "diagnostics_windows": 0, "checkpoint_every": 10,
           "resume": True, "train_world_model": True, "tensorboard": False, "wandb": False, "time_budget_s": None}
    return OmegaConf.create({**cfg, **changes})


def test_a_wall_clock_budget_stops_training_with_a_final_evaluation(tmp_path):
    # the budget counts the offset (pretraining seconds) too: 100 s already spent of 100 s
    summary = train_offline(agent(), linear_buffer(), LinearEnv(), tmp_path / "budget", offline_cfg(time_budget_s=100.0),
                            batch_size=8, seed=0, time_offset_s=100.0)
    assert summary["stopped_by_budget"] and summary["iterations"] == 1
    assert np.isfinite(summary["final_reward"])  # evaluated before stopping
    assert load_checkpoint(tmp_path / "budget" / "checkpoint.pt")["progress"]["iteration"] == 1
    summary = train_offline(agent(), linear_buffer(), LinearEnv(), tmp_path / "iters", offline_cfg(),
                            batch_size=8, seed=0, time_offset_s=100.0)
    assert not summary["stopped_by_budget"] and summary["iterations"] == 30


def test_the_policy_phase_batch_is_train_batch_size_else_the_callers(tmp_path):
    """train.batch_size sets the windows per policy update (the world model's batch is the caller's
    alg.batch_size); unset, the caller's; recorded in the summary; a bad value is named."""
    buffer = linear_buffer()
    sizes = []
    sample = buffer.sample

    def recording_sample(batch_size, *args, **kwargs):
        sizes.append(batch_size)
        return sample(batch_size, *args, **kwargs)

    buffer.sample = recording_sample
    summary = train_offline(agent(), buffer, LinearEnv(), tmp_path / "set", offline_cfg(iterations=3, batch_size=12,
                            train_world_model=False), batch_size=8, seed=0)
    assert summary["policy_batch_size"] == 12 and set(sizes) == {12} and len(sizes) == 3
    sizes.clear()
    summary = train_offline(agent(), buffer, LinearEnv(), tmp_path / "unset", offline_cfg(iterations=3), batch_size=8,
                            seed=0)
    assert summary["policy_batch_size"] == 8 and set(sizes) == {8}
    with pytest.raises(ValueError, match="train.batch_size must be >= 1, got 0"):
        train_offline(agent(), buffer, LinearEnv(), tmp_path / "bad", offline_cfg(batch_size=0), batch_size=8, seed=0)


def test_resuming_with_a_checkpoint_of_another_model_names_it(tmp_path):
    train_offline(agent(), linear_buffer(), LinearEnv(), tmp_path, offline_cfg(iterations=2, eval_every=2,
                                                                               checkpoint_every=2), batch_size=8, seed=0)
    torch.manual_seed(0)
    wider = PWM(WorldModel(obs_dim=2, act_dim=2, latent_dim=32, encoder_units=[16], units=[16, 16], num_bins=11,
                           vmin=-5, vmax=5), ActorStochasticMLP(32, 2, units=[8]), CriticEnsemble(32, units=[8]),
                horizon=HORIZON)
    with pytest.raises(ValueError, match=r"checkpoint.pt does not fit this run's model .*resume=false"):
        train_offline(wider, linear_buffer(), LinearEnv(), tmp_path, offline_cfg(iterations=4), batch_size=8, seed=0)


def test_both_variants_train_on_identical_batches_from_identical_initial_weights(tmp_path):
    """The A/B parity controls of spec section 7, checked on what the loop actually feeds the agents."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from pwm.algorithms.build import build_pwm
    from pwm.utils.common import seed_everything

    config_dir = str(Path(__file__).resolve().parent.parent / "scripts" / "cfg")
    fed, initial = {}, {}
    for alg in ("pwm_tiny", "pwm_tiny_flow"):
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose("config", overrides=[f"alg={alg}", "alg.horizon=3", "alg.batch_size=8"]).alg
        seed_everything(0)
        variant = build_pwm(cfg, obs_dim=2, act_dim=2, device="cpu")
        initial[alg] = {name: [p.detach().clone() for p in module.parameters()] for name, module in (
            ("encoder", variant.wm._encoder), ("reward", variant.wm._reward), ("actor", variant.actor),
            ("critic", variant.critic))}
        batches = fed.setdefault(alg, [])
        update = variant.update

        def recording_update(obs, action, reward, task=None, _update=update, _batches=batches, **kwargs):
            _batches.append((obs.clone(), action.clone(), reward.clone()))
            return _update(obs, action, reward, task, **kwargs)

        variant.update = recording_update
        train_offline(variant, linear_buffer(), LinearEnv(), tmp_path / alg, offline_cfg(iterations=5, eval_every=5),
                      batch_size=8, seed=3)
    base, flow = fed["pwm_tiny"], fed["pwm_tiny_flow"]
    assert len(base) == len(flow) == 5
    assert all(torch.equal(a, b) for pair in zip(base, flow) for a, b in zip(*pair))
    for name, tensors in initial["pwm_tiny"].items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, initial["pwm_tiny_flow"][name])), name


def test_interrupted_offline_training_resumes_bit_identically(tmp_path):
    """Policy extraction killed after iteration 7 (last checkpoint: 5), then re-run: the same weights
    (world model finetuned too) as never stopping."""
    cfg = offline_cfg(iterations=10, eval_every=5, checkpoint_every=5)
    full = agent(FlowWorldModel)
    train_offline(full, linear_buffer(), LinearEnv(), tmp_path / "full", cfg, batch_size=8, seed=0)
    killed = agent(FlowWorldModel)
    killed.update = crash_after(killed.update, 7)
    with pytest.raises(KeyboardInterrupt):
        train_offline(killed, linear_buffer(), LinearEnv(), tmp_path / "split", cfg, batch_size=8, seed=0)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["progress"]["iteration"] == 5
    torch.manual_seed(123)
    resumed = agent(FlowWorldModel, seed=5)
    train_offline(resumed, linear_buffer(), LinearEnv(), tmp_path / "split", cfg, batch_size=8, seed=0)
    for (key, a), b in zip(full.state_dict()["actor"].items(), resumed.state_dict()["actor"].values()):
        assert torch.equal(a, b), key
    for (key, a), b in zip(full.wm.state_dict().items(), resumed.wm.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.slow
def test_interrupted_online_training_resumes_bit_identically(tmp_path, monkeypatch):
    """train_singletask's loop killed in iteration 3 (last checkpoint: 2), then re-run: the same weights
    as never stopping; training episodes reset from seeds of the checkpointed generator."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from pwm.training import pipelines

    def config(run_dir):
        overrides = ["env=pendulum-swingup", "alg=pwm_tiny", "threads=1", f"general.run_dir={run_dir}",
                     "train.iterations=4", "train.seed_episodes=1", "train.updates_per_iteration=2",
                     "train.eval_every=2", "train.eval_episodes=1", "train.checkpoint_every=2",
                     "train.tensorboard=false", "train.diagnostics_windows=0"]
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "scripts" / "cfg"),
                                   version_base="1.3"):
            return compose("config", overrides=overrides)

    pipelines.run_singletask(config(tmp_path / "full"))
    build = pipelines.build_pwm

    def crashing_build(*args, **kwargs):
        built = build(*args, **kwargs)
        built.update = crash_after(built.update, 5)  # 2 updates per iteration: killed in iteration 3
        return built

    monkeypatch.setattr(pipelines, "build_pwm", crashing_build)
    with pytest.raises(KeyboardInterrupt):
        pipelines.run_singletask(config(tmp_path / "split"))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["progress"]["iteration"] == 2
    torch.manual_seed(123)
    pipelines.run_singletask(config(tmp_path / "split"))
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for part in ("world_model", "actor", "critic"):
        for (key, a), b in zip(full["agent"][part].items(), split["agent"][part].values()):
            assert torch.equal(a, b), (part, key)
    assert torch.equal(full["buffer"]["obs"], split["buffer"]["obs"])


def test_pretraining_frees_its_ddp_wrapper_while_the_process_group_lives(tmp_path):
    """A DDP wrapper that outlived destroy_process_group ended the gloo group in its own destructor,
    with the GIL held, and deadlocked against gloo's worker threads (CI hang of the torchrun test)."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        loss_module = torch.nn.Linear(3, 2)
        agent = SimpleNamespace(wm_loss=DistributedDataParallel(loss_module))
        wrapper = weakref.ref(agent.wm_loss)
        _release_ddp(agent)
        assert agent.wm_loss is loss_module
        assert wrapper() is None
    finally:
        dist.destroy_process_group()


def test_online_training_feeds_the_data_critic_the_replays_last_steps(tmp_path, monkeypatch):
    """alg.critic_data_recent_steps=N: each update's data windows start within the buffer's last N steps,
    while its training batch is drawn from the whole replay."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from pwm.training import pipelines

    overrides = ["env=pendulum-swingup", "alg=pwm_tiny", "threads=1", f"general.run_dir={tmp_path}",
                 "train.iterations=2", "train.seed_episodes=3", "train.updates_per_iteration=3",
                 "train.eval_every=2", "train.eval_episodes=1", "train.tensorboard=false",
                 "train.diagnostics_windows=0", "alg.critic_data_coef=0.1", "alg.critic_data_recent_steps=600"]
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "scripts" / "cfg"),
                               version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    seen = []
    build = pipelines.build_pwm

    def recording_build(*args, **kwargs):
        built = build(*args, **kwargs)
        update = built.update

        def recorded(obs, action, reward, task=None, train_world_model=True, data_windows=None):
            seen.append((obs, data_windows))
            return update(obs, action, reward, task, train_world_model, data_windows)

        built.update = recorded
        return built

    monkeypatch.setattr(pipelines, "build_pwm", recording_build)
    pipelines.run_singletask(cfg)
    buffer = load_checkpoint(tmp_path / "checkpoint.pt")["buffer"]
    stored = buffer["obs"]  # 5 episodes of 501 steps; the first iteration's updates saw 4 of them
    assert len(seen) == 6 and all(windows is not None for _, windows in seen)

    def first_step_index(obs):  # where each window's first observation sits in the buffer
        matches = (stored[None, :, :] == obs[0][:, None, :]).all(-1)
        return matches.float().argmax(-1)

    sizes = [4 * 501] * 3 + [5 * 501] * 3
    for (obs, windows), size in zip(seen, sizes):
        assert (first_step_index(windows[0]) >= size - 600).all()
    assert min(first_step_index(obs).min().item() for obs, _ in seen) < 4 * 501 - 600  # batches: whole replay
