"""Around a run: evaluation videos, the normalised score, optional extras that fail early."""

import importlib.util
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from pwm.experiments.evaluate import mean_scores
from pwm.experiments.published import normalized_score, pwm_published, tdmpc2_final
from pwm.training.logger import RunLogger
from pwm.training.video import VideoConfig, VideoRecorder, write_video
from pwm.utils.extras import MissingExtraError, check_optional_extras


def _frames(count=5, height=12, width=16):
    """Frames that differ from each other (a GIF encoder merges identical neighbours)."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        frames[i, :, i % width] = (255, 40 * i % 256, 0)
    return frames


def test_normalized_score_is_tdmpc2s():
    assert normalized_score("walker-walk", 873.0, 0.0) == pytest.approx(87.3)
    assert normalized_score("mw-reach", 4200.0, 0.6) == pytest.approx(60.0)  # success, not reward
    assert math.isnan(normalized_score("hopper", 3000.0, 0.0))
    import pandas as pd

    frame = pd.DataFrame({"variant": ["a", "a", "a", "b"], "task": ["x", "x", "y", "x"],
                          "score": [10.0, 30.0, 50.0, float("nan")]})
    assert mean_scores(frame) == {"a": pytest.approx((20.0 + 50.0) / 2)}  # seeds of a task averaged first


def test_published_numbers_are_read():
    assert pwm_published("mt30")["cartpole-balance"] == pytest.approx(999.7)
    step, reward = tdmpc2_final()["cartpole-balance"]
    assert step > 100_000 and 900 < reward <= 1000


def test_gif_round_trips_every_frame(tmp_path):
    frames = _frames()
    path = write_video(frames, tmp_path / "v" / "a.gif", fps=20)
    image = Image.open(path)
    assert image.n_frames == 5 and image.size == (16, 12) and image.info["duration"] == 50
    image.seek(3)
    assert np.array_equal(np.asarray(image.convert("RGB")), frames[3])
    assert [p.name for p in path.parent.iterdir()] == ["a.gif"]  # no temp file left
    with pytest.raises(ValueError, match=r"uint8 array \[T, height, width, 3\]"):
        write_video(frames.astype(np.float32), tmp_path / "b.gif", fps=20)


def test_recorder_writes_files_and_tensorboard_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pwm.envs.rollout import Episode

    logger = RunLogger(tmp_path, tensorboard=True)
    recorder = VideoRecorder(VideoConfig(episodes=1), tmp_path / "videos", logger)
    episode = Episode(torch.zeros(5, 2), torch.zeros(5, 1), torch.zeros(5), 0.0, False, frames=_frames())
    paths = recorder.record([episode, Episode(torch.zeros(5, 2), torch.zeros(5, 1), torch.zeros(5), 0.0, False)], 7)
    logger.close()
    assert [p.name for p in paths] == ["eval_0000007_ep0.gif"]
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    (image,) = events.Images("video/eval_ep0")
    assert image.step == 7 and image.encoded_image_string[:6] == b"GIF89a"


def test_video_config_names_bad_field():
    with pytest.raises(ValueError, match="video.format"):
        VideoConfig(format="avi")
    with pytest.raises(ValueError, match="video.width"):
        VideoConfig(width=0)


def _without(monkeypatch, *missing):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))


def test_missing_extras_fail_before_the_run_with_the_install_command(monkeypatch, tmp_path):
    _without(monkeypatch, "wandb", "imageio_ffmpeg")
    with pytest.raises(MissingExtraError, match=r'train.wandb=true needs .*pip install -e "\.\[wandb\]"'):
        check_optional_extras(OmegaConf.create({"train": {"wandb": True}}))
    with pytest.raises(MissingExtraError, match=r'pretrain.wandb=true .*"\.\[wandb\]"'):
        check_optional_extras(OmegaConf.create({"pretrain": {"wandb": True}}))
    with pytest.raises(MissingExtraError, match=r'mp4.*"\.\[video\]"'):
        check_optional_extras(OmegaConf.create({"train": {"video": {"episodes": 1, "format": "mp4"}}}))
    check_optional_extras(OmegaConf.create({"train": {"wandb": False, "video": {"episodes": 1, "format": "gif"}}}))
    with pytest.raises(MissingExtraError, match=r"\.\[video\]"):
        write_video(_frames(), tmp_path / "a.mp4", fps=10)

    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from pwm.training.pipelines import run_singletask

    config_dir = str(Path(__file__).resolve().parent.parent / "scripts" / "cfg")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose("config", overrides=["alg=pwm_tiny", "env=cartpole-balance", "train.wandb=true",
                                           f"general.run_dir={tmp_path / 'run'}"])
    with pytest.raises(MissingExtraError, match="wandb"):
        run_singletask(cfg)
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_mp4_with_the_video_extra(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    path = write_video(_frames(count=6, height=24, width=32), tmp_path / "a.mp4", fps=10)
    assert sum(1 for _ in imageio.get_reader(str(path))) == 6
