"""benchmarks/wm_fit.py: the replay split, one short fit per variant, and errors on bad checkpoints."""

import math

import pandas as pd
import pytest
import torch

from conftest import load_benchmark
from pwm.data.buffer import EpisodeBuffer

EPISODES, LENGTH = 20, 21  # 20 episodes of T + 1 = 21 steps


@pytest.fixture(scope="module")
def wm_fit():
    return load_benchmark("wm_fit")


@pytest.fixture
def checkpoint(tmp_path):
    """A run checkpoint whose replay holds 20 episodes; episode k's observations all equal k."""
    buffer = EpisodeBuffer(obs_dim=3, act_dim=2, horizon=4, capacity=EPISODES * LENGTH)
    obs = torch.arange(EPISODES, dtype=torch.float32)[:, None, None].expand(EPISODES, LENGTH, 3).clone()
    obs += 0.01 * torch.randn(EPISODES, LENGTH, 3)
    buffer.add_episodes(obs, torch.rand(EPISODES, LENGTH, 2) * 2 - 1, torch.rand(EPISODES, LENGTH),
                        torch.zeros(EPISODES, dtype=torch.long))
    path = tmp_path / "checkpoint.pt"
    torch.save({"buffer": buffer.state_dict(), "agent": {}}, path)
    return path


def test_every_tenth_episode_of_the_replay_is_held_out(wm_fit, checkpoint):
    buffer = wm_fit.replay_buffer(checkpoint, horizon=16)
    assert buffer.num_episodes == EPISODES and buffer.num_heldout_episodes == 2
    assert buffer.num_heldout_windows == 2 * (LENGTH - 16) and buffer.num_windows == 18 * (LENGTH - 16)
    heldout_episodes = buffer.obs[buffer.window_starts("heldout").long(), 0].round().unique()
    train_episodes = buffer.obs[buffer.window_starts("train").long(), 0].round().unique()
    assert heldout_episodes.tolist() == [0.0, 10.0]
    assert set(train_episodes.tolist()).isdisjoint(heldout_episodes.tolist())


@pytest.mark.parametrize("variant", ["flow-normalized", "baseline"])
def test_a_short_fit_reports_every_evaluation_and_trains_the_model(wm_fit, checkpoint, variant):
    rows = wm_fit.fit(str(checkpoint), variant, "pwm_tiny", iterations=3, eval_every=2, seed=0)
    assert [row["iteration"] for row in rows] == [0, 2, 3]
    assert all(row["variant"] == variant for row in rows)
    assert set(rows[0]) == set(wm_fit.COLUMNS)
    assert all(math.isfinite(row[key]) for row in rows for key in ("latent_spread", "latent_nmse_1", "one_step_vs_copy"))
    assert rows[-1]["latent_nmse_1"] != rows[0]["latent_nmse_1"]  # the updates changed the model
    markdown = wm_fit.render_markdown(pd.DataFrame(rows), "python benchmarks/wm_fit.py x", "abc1234", "## Notes\nread me")
    assert f"| {variant} | 3 |" in markdown and "`abc1234`" in markdown
    assert markdown.index(f"| {variant} | 3 |") < markdown.index("## Notes\nread me")


def test_set_sweeps_every_combination_of_its_values_and_names_bad_settings(wm_fit):
    assert wm_fit.sweep_settings([]) == [[]]
    assert wm_fit.sweep_settings(["a=1,2", "b=x"]) == [["a=1", "b=x"], ["a=2", "b=x"]]
    for bad in ("wm_dynamics_coef", "=1", "wm_dynamics_coef=", "wm_dynamics_coef=1,,2"):
        with pytest.raises(ValueError, match=f"--set '{bad}': expected KEY=VALUE"):
            wm_fit.sweep_settings([bad])


def test_extra_overrides_reach_the_model_and_name_the_run(wm_fit, checkpoint):
    config = wm_fit.variant_config("flow-normalized", "pwm_tiny", ["wm_normalized_dynamics_coef=0.5"])
    assert config.wm_normalized_dynamics_coef == 0.5 and config.world_model_config.normalize_dynamics_loss
    plain = wm_fit.fit(str(checkpoint), "baseline", "pwm_tiny", iterations=2, eval_every=2, seed=0)
    reweighted = wm_fit.fit(str(checkpoint), "baseline", "pwm_tiny", iterations=2, eval_every=2, seed=0,
                            extra_overrides=["wm_dynamics_coef=1000"])
    assert {row["variant"] for row in reweighted} == {"baseline wm_dynamics_coef=1000"}
    assert reweighted[0]["latent_nmse_1"] == plain[0]["latent_nmse_1"]  # same start ...
    assert reweighted[-1]["latent_nmse_1"] != plain[-1]["latent_nmse_1"]  # ... trained under another weight


def test_variants_differ_only_in_their_named_knobs(wm_fit):
    configs = {name: wm_fit.variant_config(name, "pwm_tiny") for name in wm_fit.VARIANTS}
    assert configs["flow-detached"].world_model_config.detach_velocity_target
    assert not configs["flow"].world_model_config.detach_velocity_target
    for name in ("baseline-normalized", "flow-normalized", "flow-fieldonly-normalized"):
        assert configs[name].world_model_config.normalize_dynamics_loss
    assert configs["flow-fieldonly-normalized"].world_model_config.detach_flow_matching_latents
    assert not configs["flow-normalized"].world_model_config.detach_flow_matching_latents
    assert not configs["baseline"].world_model_config.normalize_dynamics_loss


def test_a_checkpoint_without_a_replay_or_with_uneven_episodes_is_named(wm_fit, tmp_path, checkpoint):
    bare = tmp_path / "bare.pt"
    torch.save({"agent": {}}, bare)
    with pytest.raises(ValueError, match="bare.pt holds no replay buffer"):
        wm_fit.replay_buffer(bare, 4)
    state = torch.load(checkpoint, weights_only=False)
    state["buffer"]["num_episodes"] = 8  # 420 steps are not 8 equal episodes
    uneven = tmp_path / "uneven.pt"
    torch.save(state, uneven)
    with pytest.raises(ValueError, match="do not split into 8 equal episodes"):
        wm_fit.replay_buffer(uneven, 4)


@pytest.mark.parametrize("variant", ["flow", "baseline"])
def test_frozen_encoder_is_the_checkpoints_and_does_not_train(wm_fit, checkpoint, tmp_path, variant):
    from pwm.algorithms.build import build_pwm

    torch.manual_seed(123)  # an encoder no fit starts from by itself
    trained = build_pwm(wm_fit.variant_config("baseline", "pwm_tiny"), 3, 2, device="cpu").wm
    state = torch.load(checkpoint, weights_only=False)
    state["agent"] = {"world_model": trained.state_dict()}
    with_model = tmp_path / "with_model.pt"
    torch.save(state, with_model)

    frozen = wm_fit.fit(str(with_model), variant, "pwm_tiny", iterations=3, eval_every=3, seed=0, frozen_encoder=True)
    free = wm_fit.fit(str(with_model), variant, "pwm_tiny", iterations=3, eval_every=3, seed=0)
    assert {row["variant"] for row in frozen} == {f"{variant} frozen-encoder"}
    assert frozen[0]["latent_spread"] != free[0]["latent_spread"]  # the checkpoint's encoder, not the seed's
    assert frozen[0]["latent_spread"] == frozen[-1]["latent_spread"]  # and it stays as it is ...
    assert frozen[0]["latent_nmse_1"] != frozen[-1]["latent_nmse_1"]  # ... while the dynamics trains

    wm = build_pwm(wm_fit.variant_config(variant, "pwm_tiny"), 3, 2, device="cpu").wm
    wm_fit.freeze_encoder(wm, with_model)
    assert all(torch.equal(a, b) for a, b in zip(wm._encoder.state_dict().values(), trained._encoder.state_dict().values()))
    assert not any(p.requires_grad for p in wm._encoder.parameters())
    assert all(p.requires_grad for p in wm._reward.parameters())

    wider = build_pwm(wm_fit.variant_config("baseline", "pwm_small"), 3, 2, device="cpu").wm
    with pytest.raises(ValueError, match="--frozen-encoder: .*with_model.pt's _encoder does not fit"):
        wm_fit.freeze_encoder(wider, with_model)
    with pytest.raises(ValueError, match="--frozen-encoder: .*checkpoint.pt holds no world model"):
        wm_fit.freeze_encoder(wider, checkpoint)


def test_linear_schedule_names_the_run_and_changes_only_the_training(wm_fit, checkpoint):
    constant = wm_fit.fit(str(checkpoint), "baseline", "pwm_tiny", iterations=3, eval_every=3, seed=0)
    linear = wm_fit.fit(str(checkpoint), "baseline", "pwm_tiny", iterations=3, eval_every=3, seed=0,
                        lr_schedule="linear", lr_final=1e-5)
    assert {row["variant"] for row in constant} == {"baseline"}
    assert {row["variant"] for row in linear} == {"baseline lr=linear"}
    assert linear[0]["heldout_error"] == constant[0]["heldout_error"]  # same start ...
    assert linear[-1]["heldout_error"] != constant[-1]["heldout_error"]  # ... trained at other rates


def test_plot_writes_one_png_and_no_partial_file(wm_fit, checkpoint, tmp_path):
    rows = wm_fit.fit(str(checkpoint), "baseline", "pwm_tiny", iterations=2, eval_every=1, seed=0)
    wm_fit.plot(pd.DataFrame(rows), tmp_path / "wm_fit.png")
    assert (tmp_path / "wm_fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".png"] == ["wm_fit.png"]
