"""Task registry and environment wrappers on the real simulators."""

import numpy as np
import pytest

from pwm.envs import PaddedEnv, UnknownTaskError, action_dim, make_env, task_family, task_set


def test_task_sets_follow_tdmpc2_order():
    mt30, mt80 = task_set("mt30"), task_set("mt80")
    assert len(mt30) == 30 and len(set(mt30)) == 30 and len(mt80) == 80 and len(set(mt80)) == 80
    assert mt30[:3] == ["walker-stand", "walker-walk", "walker-run"] and mt30[12] == "cup-catch"
    assert mt80[:30] == mt30 and mt80[30] == "mw-assembly" and mt80[-1] == "mw-hand-insert"
    with pytest.raises(UnknownTaskError, match="mt31"):
        task_set("mt31")


def test_unknown_and_unavailable_tasks_are_named():
    with pytest.raises(UnknownTaskError, match="walker-fly"):
        make_env("walker-fly")
    with pytest.raises(UnknownTaskError, match="mw-juggle"):
        task_family("mw-juggle")
    assert action_dim("reacher-three-easy") == 3


def test_every_mt30_task_builds_with_tdmpc2s_widths():
    from pwm.envs.tasks import observation_dim, task_set

    widths = {name: (observation_dim(name), action_dim(name)) for name in task_set("mt30")}
    assert all(obs is not None for obs, _ in widths.values())
    assert max(obs for obs, _ in widths.values()) == 24 and max(act for _, act in widths.values()) == 6
    assert widths["reacher-three-easy"] == (8, 3) and widths["cheetah-run-backwards"] == (17, 6)


@pytest.mark.parametrize("name, obs_dim, act_dim, max_steps", [
    ("cup-catch", 8, 2, 500), ("mw-reach", 39, 4, 100), ("hopper", 11, 3, 1000)])
def test_wrappers_step_and_report(name, obs_dim, act_dim, max_steps):
    env = make_env(name, seed=0)
    assert (env.obs_dim, env.act_dim, env.max_episode_steps) == (obs_dim, act_dim, max_steps)
    obs = env.reset(seed=1)
    assert obs.shape == (obs_dim,) and obs.dtype == np.float32
    obs2, reward, terminated, truncated, info = env.step(np.zeros(act_dim))
    assert obs2.shape == (obs_dim,) and np.isfinite(reward) and "success" in info
    with pytest.raises(ValueError, match="expected"):
        env.step(np.zeros(act_dim + 1))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full(act_dim, np.nan))
    frame = env.render(width=64, height=48)  # what evaluation videos are made of
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
    assert np.array_equal(env.render(width=64, height=48), frame)  # same state, same frame
    assert env.render(width=32, height=32).shape == (32, 32, 3)
    env.close()


def test_dmc_episode_is_500_agent_steps_and_reset_seed_repeats():
    env = make_env("cup-catch", seed=0)
    first = env.reset(seed=5)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(np.zeros(2))
        steps, done = steps + 1, terminated or truncated
    assert steps == 500
    assert np.allclose(env.reset(seed=5), first)


def test_gym_locomotion_keeps_terminations():
    env = make_env("hopper", seed=0)
    env.reset(seed=0)
    for step in range(1000):
        _, _, terminated, truncated, _ = env.step(np.ones(3))
        if terminated or truncated:
            break
    assert terminated and step < 999  # full-throttle hopper falls over long before the time limit


def test_padded_env():
    env = PaddedEnv(make_env("cup-catch"), obs_dim=24, act_dim=6)
    obs = env.reset(seed=0)
    assert obs.shape == (24,) and np.all(obs[8:] == 0)
    assert env.step(np.ones(6))[0].shape == (24,)
    with pytest.raises(ValueError, match="smaller"):
        PaddedEnv(make_env("cup-catch"), obs_dim=4, act_dim=6)


def test_dataset_widths_are_checked_against_the_task_set():
    from pwm.data.tdmpc2_format import DatasetError, check_dataset_widths

    tasks = ["cartpole-balance", "walker-walk", "reacher-three-easy"]  # obs 5, 24, 8: padded to 24
    check_dataset_widths(tasks, [0, 1, 2], obs_dim=24, act_dim=6, where="data")
    check_dataset_widths(tasks, [0], obs_dim=24, act_dim=6, where="data")  # walker absent from the data: fine
    with pytest.raises(DatasetError, match=r"data: field 'obs' is 17 wide, but task 'walker-walk' \(id 1\) has 24"):
        check_dataset_widths(tasks, [0, 1], obs_dim=17, act_dim=6, where="data")
    with pytest.raises(DatasetError, match=r"'obs' is 30 wide, but this task set's data is padded to its widest task, 24"):
        check_dataset_widths(tasks, [0], obs_dim=30, act_dim=6, where="data")
    with pytest.raises(DatasetError, match=r"'action' is 4 wide, but task 'walker-walk' \(id 1\) has 6-dim actions"):
        check_dataset_widths(tasks, [1], obs_dim=24, act_dim=4, where="data")
    # MT30's data (24 wide) is not MT80's (39: Meta-World's observations)
    with pytest.raises(DatasetError, match="padded to its widest task, 39"):
        check_dataset_widths(task_set("mt80"), [0, 1], obs_dim=24, act_dim=6, where="data")
