"""Build a :class:`~pwm.algorithms.pwm.PWM` learner from an ``alg`` Hydra config."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pwm.algorithms.pwm import PWM
from pwm.utils.common import resolve_device

#: ``alg`` keys read by the training scripts rather than by the PWM learner.
SCRIPT_KEYS = {"batch_size", "world_model_config", "actor_config", "critic_config"}
PWM_KEYS = set(inspect.signature(PWM.__init__).parameters) - {"self", "world_model", "actor", "critic", "device"}


def build_pwm(
    alg_cfg: DictConfig | Mapping[str, Any],
    obs_dim: int,
    act_dim: int,
    tasks: Sequence[str] | None = None,
    action_dims: Sequence[int] | None = None,
    device: str = "auto",
) -> PWM:
    """Instantiate world model, actor and critic from ``alg_cfg`` and wrap them in a :class:`PWM`.

    ``obs_dim``, ``act_dim``, ``tasks`` and ``action_dims`` come from the environment or dataset, so the
    same config serves every task. Unknown keys raise an error naming them (typos do not pass silently).
    """
    cfg = alg_cfg if isinstance(alg_cfg, DictConfig) else OmegaConf.create(dict(alg_cfg))
    unknown = sorted(set(cfg.keys()) - SCRIPT_KEYS - PWM_KEYS)
    if unknown:
        raise ValueError(f"unknown alg config keys: {', '.join(f'alg.{k}' for k in unknown)}")
    if "batch_size" in cfg and not int(cfg.batch_size) >= 1:
        raise ValueError(f"alg.batch_size must be >= 1, got {cfg.batch_size}")
    # Drawn before the world model is built: the two WM variants consume different amounts of RNG,
    # and actor/critic must still start identical across them under one seed (A/B parity).
    policy_init_seed = int(torch.randint(2**62, ()).item())
    world_model = instantiate(
        cfg.world_model_config, obs_dim=obs_dim, act_dim=act_dim,
        tasks=list(tasks) if tasks else None, action_dims=list(action_dims) if action_dims else None,
        _convert_="all",
    )
    policy_in_dim = world_model.latent_dim + world_model.task_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(policy_init_seed)
        actor = instantiate(cfg.actor_config, in_dim=policy_in_dim, act_dim=act_dim, _convert_="all")
        critic = instantiate(cfg.critic_config, in_dim=policy_in_dim, _convert_="all")
    kwargs = {k: cfg[k] for k in PWM_KEYS if k in cfg}
    return PWM(world_model, actor, critic, device=resolve_device(device), **kwargs)


def is_flow_config(alg_cfg: DictConfig | Mapping[str, Any]) -> bool:
    """True when the config's world model is the flow-matching one."""
    return str(alg_cfg["world_model_config"]["_target_"]).endswith("FlowWorldModel")


def variant_name(alg_cfg: DictConfig | Mapping[str, Any]) -> str:
    """``flow`` or ``baseline``: which dynamics the config's world model has (the A/B names a flow
    variant further by its knobs, :func:`pwm.experiments.ab.variant_label`)."""
    return "flow" if is_flow_config(alg_cfg) else "baseline"


#: Settings that change a run's cost or how often it measures diagnostics, not its algorithm (results equal up
#: to float rounding and the order of random draws): a run may resume, or be reused, under other values.
COST_AND_DIAGNOSTIC_KEYS = {"compile_wm_loss", "world_model_config.recompute_substeps", "esnr_every", "esnr_splits"}


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _constructor_default(flat_config: Mapping[str, Any], key: str) -> Any:
    """The value a setting took before configs spelled it: its constructor's default (``inspect.Parameter.empty``
    if it has none). Settings join the code off, i.e. at the spec's behaviour, so this is what older runs ran."""
    section, _, name = key.rpartition(".")
    if not section:
        cls = PWM
    else:
        target = flat_config.get(f"{section}._target_")
        if target is None:
            return inspect.Parameter.empty
        module_name, _, class_name = str(target).rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
    for base in cls.__mro__:  # a subclass may pass the setting on to its parent in **kwargs
        parameter = inspect.signature(base.__init__).parameters.get(name)
        if parameter is not None:
            return parameter.default
    return inspect.Parameter.empty


def alg_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The ``alg`` settings in which ``current`` differs from a run's ``recorded`` config, as
    ``"alg.key: recorded -> current"`` (empty: the run is this config's; :data:`COST_AND_DIAGNOSTIC_KEYS` aside).

    A key ``recorded`` lacks predates that setting: the run ran with the setting's constructor default.
    """
    old, new = _flatten(recorded), _flatten(current)
    changes = []
    for key in sorted(new):
        if key in COST_AND_DIAGNOSTIC_KEYS:
            continue
        value = old[key] if key in old else _constructor_default(old, key)
        if value is inspect.Parameter.empty:
            continue  # a required setting the record lacks: nothing to compare against
        if value != new[key] and not (isinstance(value, (int, float)) and isinstance(new[key], (int, float))
                                      and float(value) == float(new[key])):
            changes.append(f"alg.{key}: {value!r} -> {new[key]!r}")
    return changes
