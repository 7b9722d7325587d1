"""The config tree documents itself: every key has a comment, and every size composes completely."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "scripts" / "cfg"
KEY = re.compile(r"^(\s*)([A-Za-z_][\w.]*):(\s|$)")


def uncommented_keys(text: str) -> list[str]:
    """Lines defining a key without a comment. Hydra's own ``hydra:`` / ``defaults:`` blocks are
    skipped; ``_target_`` names a class, whose docstring is its comment."""
    missing, skip_indent = [], None
    for line in text.splitlines():
        match = KEY.match(line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        if skip_indent is not None and indent > skip_indent:
            continue
        skip_indent = None
        if key in ("hydra", "defaults"):
            skip_indent = indent
        elif key != "_target_" and "#" not in line:
            missing.append(line.strip())
    return missing


def test_the_checker_finds_an_uncommented_key():
    text = "a: 1  # fine\nb:\n  c: 2  # fine\nhydra:\n  run: x\ndefaults:\n  - alg: y\nd: 3\n"
    assert uncommented_keys(text) == ["b:", "d: 3"]


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_key_has_a_comment(path):
    assert uncommented_keys(path.read_text()) == []


@pytest.mark.parametrize("alg", sorted(p.stem for p in (CONFIG_DIR / "alg").glob("pwm_*.yaml")
                                       if p.stem != "pwm_defaults"))
def test_every_size_fills_the_shared_defaults(alg):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"alg={alg}"])
    assert OmegaConf.missing_keys(cfg.alg) == set()
    flow = alg.endswith("_flow")
    assert cfg.alg.world_model_config._target_.endswith("FlowWorldModel" if flow else ".WorldModel")
    if flow:  # a twin differs from its baseline only in the world-model class and the flow knobs
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            base = compose("config", overrides=[f"alg={alg.removesuffix('_flow')}"]).alg
        twin = OmegaConf.to_container(cfg.alg)
        for key in ("_target_", "integrate_steps", "fm_tau_sampling", "recompute_substeps", "latent_projection",
                    "detach_velocity_target", "endpoint_loss_coef", "detach_flow_matching_latents"):
            twin["world_model_config"].pop(key)
        base = OmegaConf.to_container(base)
        base["world_model_config"].pop("_target_")
        assert twin == base


def test_the_shared_defaults_alone_are_incomplete():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["alg=pwm_defaults"])
    assert "alg.world_model_config.latent_dim" in OmegaConf.missing_keys(cfg.alg)


@pytest.mark.parametrize("entry", ["config", "config_mt30", "pretrain", "ab"])
def test_objective_pwm_turns_off_exactly_the_three_added_settings(entry):
    """``+objective=pwm`` gives PWM's actor and critic objectives and the spec's dynamics loss on every entry
    point, and changes nothing else (sizes, the flow twin, the other settings)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        ours = OmegaConf.to_container(compose(entry, overrides=["alg=pwm_small_flow"]).alg)
        pwm = OmegaConf.to_container(compose(entry, overrides=["alg=pwm_small_flow", "+objective=pwm"]).alg)
    assert ((ours["actor_entropy_coef"], ours["actor_entropy_target"], ours["critic_data_coef"], ours["critic_data_loss"])
            == (0.1, -0.5, 0.1, "lower_bound"))
    assert ours["world_model_config"].pop("normalize_dynamics_loss") is True
    assert pwm["world_model_config"].pop("normalize_dynamics_loss") is False
    for key, value in {"actor_entropy_coef": 0.0, "actor_entropy_target": None, "critic_data_coef": 0.0,
                       "critic_data_loss": "mse"}.items():
        assert pwm.pop(key) == value
        ours.pop(key)
    assert pwm == ours
