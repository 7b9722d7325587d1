"""TD-MPC2's custom MT30 tasks: each builds and steps with the widths TD-MPC2's task list implies,
and its reward prefers the behaviour its name asks for (states set by hand, rewards compared)."""

import numpy as np
import pytest

from pwm.envs.custom_dmc import CUSTOM_TASKS
from pwm.envs.tasks import CUSTOM_DMC_ACTION_DIMS, make_env

WIDTHS = {"walker-walk-backwards": 24, "walker-run-backwards": 24, "cheetah-run-backwards": 17,
          "cheetah-run-front": 17, "cheetah-run-back": 17, "cheetah-jump": 17, "hopper-hop-backwards": 15,
          "cup-spin": 8, "pendulum-spin": 3, "reacher-three-easy": 8, "reacher-three-hard": 8}


@pytest.mark.parametrize("name", sorted(CUSTOM_TASKS))
def test_custom_task_builds_and_steps(name):
    env = make_env(name, seed=0)
    obs = env.reset(0)
    assert obs.shape == (WIDTHS[name],) and env.obs_dim == WIDTHS[name]
    assert env.act_dim == CUSTOM_DMC_ACTION_DIMS[name]
    total = 0.0
    for _ in range(5):
        obs, reward, terminated, truncated, _ = env.step(np.zeros(env.act_dim))
        assert np.isfinite(obs).all() and 0.0 <= reward <= 2.0  # action repeat 2, rewards in [0, 1]
        total += reward
    env.close()


def _reward(name, **state):
    """The task's reward after setting named joint positions (``q_<joint>``) and velocities (``v_<joint>``)."""
    env = make_env(name, seed=0)
    env.reset(0)
    physics, task = env._env.physics, env._env.task
    for key, value in state.items():
        kind, joint = key.split("_", 1)
        (physics.named.data.qpos if kind == "q" else physics.named.data.qvel)[joint] = value
    physics.forward()
    return float(task.get_reward(physics))


def test_backwards_locomotion_is_rewarded_backwards_only():
    for name, joint, speed in (("walker-walk-backwards", "rootx", 2.0), ("cheetah-run-backwards", "rootx", 9.0),
                               ("hopper-hop-backwards", "rootx", 2.0)):
        upright = {"q_rootz": 0.0} if name.startswith("hopper") else {}
        back = _reward(name, **upright, **{f"v_{joint}": -speed})
        forth = _reward(name, **upright, **{f"v_{joint}": speed})
        assert back > forth, (name, back, forth)
        assert forth < 0.2 * max(back, 1e-3) or forth == 0.0, (name, back, forth)


def test_cheetah_jump_and_one_leg_runs_reward_height():
    assert _reward("cheetah-jump", q_rootz=0.9) > _reward("cheetah-jump", q_rootz=0.0)
    assert _reward("cheetah-jump", q_rootz=0.9, v_rootx=3.0) < _reward("cheetah-jump", q_rootz=0.9)  # stay put
    # running forwards on the front leg: high back foot and torso (pitched nose-down) beat a low pose
    high = _reward("cheetah-run-front", q_rootz=0.9, q_rooty=0.6, v_rootx=7.0)
    low = _reward("cheetah-run-front", q_rootz=0.0, v_rootx=7.0)
    assert high > low
    assert _reward("cheetah-run-back", q_rootz=0.9, q_rooty=-0.6, v_rootx=7.0) > \
        _reward("cheetah-run-back", q_rootz=0.9, q_rooty=-0.6, v_rootx=-7.0)


def test_pendulum_spin_and_cup_spin_reward_speed():
    assert _reward("pendulum-spin", v_hinge=10.0) == pytest.approx(1.0)
    assert _reward("pendulum-spin", v_hinge=-10.0) == pytest.approx(1.0)  # either direction
    # linear tolerance below 9 rad/s with margin 4.5 and value 0.5 there: 1 - 0.5 * (9 - 1) / 4.5
    assert _reward("pendulum-spin", v_hinge=1.0) == pytest.approx(1 - 0.5 * 8 / 4.5)
    fast_far = _reward("cup-spin", q_ball_x=0.4, q_ball_z=-0.3, v_ball_x=5.0, v_ball_z=5.0)
    env = make_env("cup-spin", seed=0)
    env.reset(0)
    physics = env._env.physics
    target_x, _, target_z = physics.named.data.site_xpos["target"]
    offset_z = physics.named.data.xpos["ball", "z"] - physics.named.data.qpos["ball_z"]  # joint frame vs world
    in_cup = _reward("cup-spin", q_ball_x=target_x, q_ball_z=target_z - offset_z, v_ball_x=8.0, v_ball_z=0.0)
    assert fast_far > 0.5 and in_cup == 0.0  # fast, but in the cup: nothing


def test_three_link_reachers_reward_the_finger_on_the_target_within_their_radius():
    for name, radius in (("reacher-three-easy", 0.05), ("reacher-three-hard", 0.015)):
        env = make_env(name, seed=0)
        env.reset(0)
        physics, task = env._env.physics, env._env.task
        assert physics.model.nu == 3 and list(physics.named.model.jnt_range["shoulder1"]) == pytest.approx(
            [-np.deg2rad(80), np.deg2rad(80)])
        finger = physics.named.data.geom_xpos["finger", :2].copy()
        for offset, expected in ((0.0, 1.0), (radius + 0.01 - 0.005, 1.0), (radius + 0.01 + 0.02, 0.0)):
            physics.named.model.geom_pos["target", :2] = finger + [offset, 0.0]
            physics.forward()
            assert float(task.get_reward(physics)) == pytest.approx(expected), (name, offset)
