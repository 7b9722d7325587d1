"""Evaluation videos: the first evaluation episode(s) as GIF (pillow, always installed) or MP4
(imageio-ffmpeg, the ``video`` extra), written to the run directory and logged to TensorBoard/wandb."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pwm.utils.extras import require_extra

if TYPE_CHECKING:
    from pwm.envs.rollout import Episode
    from pwm.training.logger import RunLogger

VIDEO_FORMATS = ("gif", "mp4")


@dataclass
class VideoConfig:
    """The ``video`` keys of a ``train`` config section (also ``scripts/cfg/evaluate.yaml``)."""

    episodes: int = 0  # evaluation episodes recorded at each evaluation (0 = off)
    format: str = "gif"
    fps: int = 25
    width: int = 160
    height: int = 120

    def __post_init__(self) -> None:
        if self.episodes < 0:
            raise ValueError(f"video.episodes must be >= 0, got {self.episodes}")
        if self.format not in VIDEO_FORMATS:
            raise ValueError(f"video.format must be one of {VIDEO_FORMATS}, got {self.format!r}")
        for name in ("fps", "width", "height"):
            if getattr(self, name) < 1:
                raise ValueError(f"video.{name} must be >= 1, got {getattr(self, name)}")
        if self.episodes > 0 and self.format == "mp4":
            require_extra("imageio_ffmpeg", "video", "video.format=mp4 (or use video.format=gif)")

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty uint8 array [T, height, width, 3], got {frames.dtype} "
                         f"{list(frames.shape)}")
    return frames


def gif_bytes(frames: np.ndarray, fps: int) -> bytes:
    """``frames [T, height, width, 3]`` (uint8) as an endlessly looping GIF."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in _check_frames(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def write_video(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    """Write ``frames [T, height, width, 3]`` (uint8) to ``path`` (.gif or .mp4) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in VIDEO_FORMATS:
        raise ValueError(f"{path}: video files end in one of {VIDEO_FORMATS}")
    tmp = path.with_name(f".{path.stem}.tmp.{suffix}")  # the encoder picks its format by the suffix
    try:
        if suffix == "gif":
            tmp.write_bytes(gif_bytes(frames, fps))
        else:
            require_extra("imageio_ffmpeg", "video", "writing MP4 videos")
            import imageio.v2 as imageio

            # macro_block_size=1 keeps odd frame sizes instead of resizing them
            with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as writer:
                for frame in _check_frames(frames):
                    writer.append_data(frame)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class VideoRecorder:
    """Writes the rendered episodes of an evaluation to ``<out_dir>/<tag>[_<step>]_ep<i>.<format>`` and
    logs them under ``step`` (TensorBoard shows GIFs as animated images; wandb gets the file)."""

    def __init__(self, config: VideoConfig, out_dir: str | Path, logger: RunLogger | None = None,
                 tag: str = "eval"):
        self.config, self.out_dir, self.logger, self.tag = config, Path(out_dir), logger, tag

    @property
    def episodes(self) -> int:
        return self.config.episodes

    def record(self, episodes: list[Episode], step: int | None = None) -> list[Path]:
        paths = []
        stem = self.tag if step is None else f"{self.tag}_{step:07d}"
        for index, episode in enumerate(e for e in episodes if e.frames is not None):
            path = write_video(episode.frames, self.out_dir / f"{stem}_ep{index}.{self.config.format}",
                               self.config.fps)
            if self.logger is not None:
                self.logger.log_video(f"video/{self.tag}_ep{index}", episode.frames, step or 0, self.config.fps, path)
            paths.append(path)
        return paths


def make_recorder(video: VideoConfig | None, out_dir: str | Path, logger: RunLogger | None = None) -> VideoRecorder | None:
    """A recorder for ``video``; None when it is absent or records 0 episodes."""
    if video is None or not video.episodes:
        return None
    return VideoRecorder(video, out_dir, logger)
