"""TD-MPC2's custom DeepMind Control tasks of the MT30 set, written here from their published
definitions (TD-MPC2's paper and task list): dm_control's own models and observations, new rewards.

* ``walker-walk-backwards`` / ``walker-run-backwards``: stand upright and move at ``-speed`` or faster
  backwards (walker's walk / run speed).
* ``cheetah-run-backwards``: run backwards at 0.8 x cheetah's run speed.
* ``cheetah-run-front`` / ``cheetah-run-back``: run forwards at 0.6 x the run speed balanced on the
  front (back) leg, the other foot and the torso high.
* ``cheetah-jump``: stand up on one leg, either one, with little horizontal motion.
* ``hopper-hop-backwards``: hop backwards at half hopper's hop speed while standing.
* ``cup-spin``: swing the ball around the cup, fast and far from it, not in it.
* ``pendulum-spin``: spin the pendulum at 9 rad/s or faster.
* ``reacher-three-easy`` / ``reacher-three-hard``: dm_control's reacher task (sparse reward, target
  radius 0.05 / 0.015) with a three-link arm: links of 0.09, a free shoulder and two joints limited
  to +-80 degrees, one motor each.

The planar floors of walker and cheetah are doubled in length, as TD-MPC2 does, so a backwards run
of a whole episode does not leave the floor.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from dm_control.rl import control
from dm_control.suite import ball_in_cup, cheetah, hopper, pendulum, reacher, walker
from dm_control.utils import rewards

INF = float("inf")


def _longer_floor(xml: bytes | str, geom: str, factor: float) -> str:
    """Model XML with the planar floor geom ``geom`` ``factor`` times as long (its first size)."""
    text = xml.decode() if isinstance(xml, bytes) else xml
    pattern = re.compile(rf'(<geom name="{geom}"[^>]*size=")([\d.]+)')
    if not pattern.search(text):
        raise RuntimeError(f"dm_control's model has no floor geom {geom!r} to lengthen")
    return pattern.sub(lambda m: f"{m.group(1)}{float(m.group(2)) * factor:g}", text, count=1)


# ------------------------------------------------------------------------- walker
class WalkerBackwards(walker.PlanarWalker):
    """Walker's stand reward times a reward for horizontal velocity at or below ``-move_speed``."""

    def get_reward(self, physics):
        standing = rewards.tolerance(physics.torso_height(), bounds=(walker._STAND_HEIGHT, INF),
                                     margin=walker._STAND_HEIGHT / 2)
        upright = (1 + physics.torso_upright()) / 2
        stand_reward = (3 * standing + upright) / 4
        move_reward = rewards.tolerance(physics.horizontal_velocity(), bounds=(-INF, -self._move_speed),
                                        margin=self._move_speed / 2, value_at_margin=0.5, sigmoid="linear")
        return stand_reward * (5 * move_reward + 1) / 6


def _walker(speed: float) -> Callable[[np.random.RandomState | int | None], control.Environment]:
    def build(random):
        xml, assets = walker.get_model_and_assets()
        physics = walker.Physics.from_xml_string(_longer_floor(xml, "floor", 2.0), assets)
        return control.Environment(physics, WalkerBackwards(move_speed=speed, random=random),
                                   time_limit=walker._DEFAULT_TIME_LIMIT, control_timestep=walker._CONTROL_TIMESTEP)
    return build


# ------------------------------------------------------------------------ cheetah
_CHEETAH_UP_HEIGHT = 1.2


class CheetahGoal(cheetah.Cheetah):
    """Cheetah with one of TD-MPC2's goals: ``run-backwards``, ``run-front``, ``run-back`` or ``jump``."""

    def __init__(self, goal: str, move_speed: float, random=None):
        super().__init__(random=random)
        self._goal, self._move_speed = goal, move_speed

    def _height(self, physics, body: str) -> float:
        return physics.named.data.xpos[body, "z"]

    def _one_foot_up(self, physics, raised_foot: str, speed_bounds: tuple[float, float]) -> float:
        """Torso and ``raised_foot`` (the foot off the ground) high, speed within ``speed_bounds``."""
        height = rewards.tolerance((self._height(physics, "torso") + self._height(physics, raised_foot)) / 2,
                                   bounds=(_CHEETAH_UP_HEIGHT, INF), margin=_CHEETAH_UP_HEIGHT / 2)
        speed = rewards.tolerance(physics.speed(), bounds=speed_bounds, margin=self._move_speed,
                                  value_at_margin=0, sigmoid="linear")
        return (5 * height + speed) / 6

    def _run_on_one_leg(self, physics, raised_foot: str) -> float:
        up = lambda value: rewards.tolerance(value, bounds=(_CHEETAH_UP_HEIGHT, INF),  # noqa: E731
                                             margin=_CHEETAH_UP_HEIGHT / 2)
        up_reward = (3 * up(self._height(physics, raised_foot)) + 2 * up(self._height(physics, "torso"))) / 5
        speed = rewards.tolerance(physics.speed(), bounds=(self._move_speed, INF), margin=self._move_speed,
                                  value_at_margin=0, sigmoid="linear")
        return up_reward * (5 * speed + 1) / 6

    def get_reward(self, physics):
        if self._goal == "run-backwards":
            return rewards.tolerance(physics.speed(), bounds=(-INF, -self._move_speed), margin=self._move_speed,
                                     value_at_margin=0, sigmoid="linear")
        if self._goal == "run-front":  # on the front leg: the back foot is up
            return self._run_on_one_leg(physics, "bfoot")
        if self._goal == "run-back":
            return self._run_on_one_leg(physics, "ffoot")
        if self._goal == "jump":
            still = (-self._move_speed, self._move_speed)
            return (self._one_foot_up(physics, "bfoot", still) + self._one_foot_up(physics, "ffoot", still)) / 2
        raise ValueError(f"unknown cheetah goal {self._goal!r}")


def _cheetah(goal: str, speed: float) -> Callable[[np.random.RandomState | int | None], control.Environment]:
    def build(random):
        xml, assets = cheetah.get_model_and_assets()
        physics = cheetah.Physics.from_xml_string(_longer_floor(xml, "ground", 2.0), assets)
        return control.Environment(physics, CheetahGoal(goal, speed, random=random),
                                   time_limit=cheetah._DEFAULT_TIME_LIMIT)
    return build


# ------------------------------------------------------------------------- hopper
class HopperBackwards(hopper.Hopper):
    """Hopper's stand reward times a reward for hopping backwards at half its hop speed."""

    def __init__(self, random=None):
        super().__init__(hopping=True, random=random)

    def get_reward(self, physics):
        standing = rewards.tolerance(physics.height(), (hopper._STAND_HEIGHT, 2))
        hopping = rewards.tolerance(physics.speed(), bounds=(-INF, -hopper._HOP_SPEED / 2),
                                    margin=hopper._HOP_SPEED / 4, value_at_margin=0.5, sigmoid="linear")
        return standing * hopping


def _hopper_backwards(random) -> control.Environment:
    physics = hopper.Physics.from_xml_string(*hopper.get_model_and_assets())
    return control.Environment(physics, HopperBackwards(random=random), time_limit=hopper._DEFAULT_TIME_LIMIT,
                               control_timestep=hopper._CONTROL_TIMESTEP)


# ---------------------------------------------------------------------- ball in cup
_SPIN_DISTANCE = 0.5
_SPIN_BALL_SPEED = 6.0


class CupSpin(ball_in_cup.BallInCup):
    """Keep the ball out of the cup, far from it (>= 0.5) and fast (>= 6): swinging around it."""

    def initialize_episode(self, physics):
        # Mostly in the cup at the start (the stock task's reset keeps sampling until the ball does not
        # penetrate anything; here it also has to lie in the cup 90% of the time), so leaving it is part
        # of the task.
        start_outside = self.random.uniform() < 0.1
        while True:
            physics.named.data.qpos["ball_x"] = self.random.uniform(-0.2, 0.2)
            physics.named.data.qpos["ball_z"] = self.random.uniform(0.2, 0.5)
            physics.after_reset()
            if physics.data.ncon == 0 and (start_outside or physics.in_target()):
                break
        super(ball_in_cup.BallInCup, self).initialize_episode(physics)

    def get_reward(self, physics):
        distance = np.linalg.norm(physics.ball_to_target())
        velocity = np.linalg.norm(physics.named.data.qvel[["ball_x", "ball_z"]])
        far = rewards.tolerance(distance, bounds=(_SPIN_DISTANCE, INF), margin=_SPIN_DISTANCE / 2,
                                value_at_margin=0.5, sigmoid="linear")
        fast = rewards.tolerance(velocity, bounds=(_SPIN_BALL_SPEED, INF), margin=_SPIN_BALL_SPEED / 2,
                                 value_at_margin=0.5, sigmoid="linear")
        return (1 - physics.in_target()) * (far + 2 * fast) / 3


def _cup_spin(random) -> control.Environment:
    physics = ball_in_cup.Physics.from_xml_string(*ball_in_cup.get_model_and_assets())
    return control.Environment(physics, CupSpin(random=random), time_limit=ball_in_cup._DEFAULT_TIME_LIMIT,
                               control_timestep=ball_in_cup._CONTROL_TIMESTEP)


# ------------------------------------------------------------------------ pendulum
_PENDULUM_SPIN_SPEED = 9.0


class PendulumSpin(pendulum.SwingUp):
    """Angular speed of 9 rad/s or more, in either direction."""

    def get_reward(self, physics):
        return rewards.tolerance(np.linalg.norm(physics.angular_velocity()), bounds=(_PENDULUM_SPIN_SPEED, INF),
                                 margin=_PENDULUM_SPIN_SPEED / 2, value_at_margin=0.5, sigmoid="linear")


def _pendulum_spin(random) -> control.Environment:
    physics = pendulum.Physics.from_xml_string(*pendulum.get_model_and_assets())
    return control.Environment(physics, PendulumSpin(random=random), time_limit=pendulum._DEFAULT_TIME_LIMIT)


# ------------------------------------------------------------------------- reacher
_ARM_PATTERN = re.compile(r'<body name="arm".*?</body>\s*</body>\s*</body>', re.S)
_ACTUATOR_PATTERN = re.compile(r"<actuator>.*?</actuator>", re.S)
_THREE_LINK_ARM = """<body name="arm0" pos="0 0 .01">
      <geom name="arm0" type="capsule" fromto="0 0 0 0.09 0 0" size=".01" material="self"/>
      <joint name="shoulder0"/>
      <body name="arm1" pos=".09 0 0">
        <geom name="arm1" type="capsule" fromto="0 0 0 0.09 0 0" size=".01" material="self"/>
        <joint name="shoulder1" limited="true" range="-80 80"/>
        <body name="hand" pos=".09 0 0">
          <geom name="hand" type="capsule" fromto="0 0 0 0.09 0 0" size=".01" material="self"/>
          <joint name="wrist" limited="true" range="-80 80"/>
          <body name="finger" pos=".09 0 0">
            <camera name="hand" pos="0 0 .2" mode="track"/>
            <geom name="finger" type="sphere" size=".01" material="effector"/>
          </body>
        </body>
      </body>
    </body>"""
_THREE_MOTORS = """<actuator>
    <motor name="shoulder0" joint="shoulder0"/>
    <motor name="shoulder1" joint="shoulder1"/>
    <motor name="wrist" joint="wrist"/>
  </actuator>"""


def three_link_reacher_xml() -> str:
    """dm_control's reacher model with its two-link arm replaced by a three-link one."""
    xml, _ = reacher.get_model_and_assets()
    text = xml.decode() if isinstance(xml, bytes) else xml
    if not _ARM_PATTERN.search(text) or not _ACTUATOR_PATTERN.search(text):
        raise RuntimeError("dm_control's reacher model has changed: cannot find its arm to replace")
    text = _ARM_PATTERN.sub(_THREE_LINK_ARM, text, count=1)
    return _ACTUATOR_PATTERN.sub(_THREE_MOTORS, text, count=1)


def _reacher_three(target_size: float) -> Callable[[np.random.RandomState | int | None], control.Environment]:
    def build(random):
        _, assets = reacher.get_model_and_assets()
        physics = reacher.Physics.from_xml_string(three_link_reacher_xml(), assets)
        return control.Environment(physics, reacher.Reacher(target_size=target_size, random=random),
                                   time_limit=reacher._DEFAULT_TIME_LIMIT)
    return build


#: Task name -> ``build(random) -> dm_control Environment``.
CUSTOM_TASKS: dict[str, Callable[[np.random.RandomState | int | None], control.Environment]] = {
    "walker-walk-backwards": _walker(walker._WALK_SPEED),
    "walker-run-backwards": _walker(walker._RUN_SPEED),
    "cheetah-run-backwards": _cheetah("run-backwards", 0.8 * cheetah._RUN_SPEED),
    "cheetah-run-front": _cheetah("run-front", 0.6 * cheetah._RUN_SPEED),
    "cheetah-run-back": _cheetah("run-back", 0.6 * cheetah._RUN_SPEED),
    "cheetah-jump": _cheetah("jump", 0.5),
    "hopper-hop-backwards": _hopper_backwards,
    "cup-spin": _cup_spin,
    "pendulum-spin": _pendulum_spin,
    "reacher-three-easy": _reacher_three(reacher._BIG_TARGET),
    "reacher-three-hard": _reacher_three(reacher._SMALL_TARGET),
}
