"""World models, actor, critic and their layers."""

from pwm.models.actor import ActorStochasticMLP
from pwm.models.critic import CriticEnsemble
from pwm.models.flow_world_model import FlowWorldModel
from pwm.models.two_hot import TwoHot
from pwm.models.world_model import LatentWorldModel, WorldModel

__all__ = ["ActorStochasticMLP", "CriticEnsemble", "FlowWorldModel", "LatentWorldModel", "TwoHot", "WorldModel"]
