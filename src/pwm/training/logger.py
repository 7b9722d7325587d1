"""Run logging: a wide CSV (one row per iteration), TensorBoard, and optional Weights & Biases."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from pwm.utils.common import atomic_write_text
from pwm.utils.extras import require_extra


class RunLogger:
    """Log scalar metrics per iteration to ``<run_dir>/metrics.csv`` (+ TensorBoard, + wandb).

    The CSV has an ``iteration`` column then one column per metric; a metric missing in a row (e.g.
    evaluation, logged every N iterations) is left empty. When a new metric appears the file is
    rewritten atomically with the wider header. Resuming at iteration ``k`` keeps rows ``< k``.
    """

    def __init__(self, run_dir: str | Path, resume_iteration: int = 0, tensorboard: bool = True,
                 wandb: bool = False, wandb_project: str = "pwm-flow", config: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        self.rows: list[dict[str, float]] = []
        self.columns: list[str] = ["iteration"]
        if self.csv_path.exists() and resume_iteration > 0:
            with open(self.csv_path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(reader.fieldnames or ["iteration"])
                self.rows = [{k: (int(v) if k == "iteration" else float(v)) for k, v in row.items() if v != ""}
                             for row in reader if int(row["iteration"]) < resume_iteration]
        self._rewrite()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_iteration or None)
        self._wandb = None
        if wandb:
            require_extra("wandb", "wandb", "wandb=true")
            import wandb as wandb_module

            self._wandb = wandb_module.init(project=wandb_project, config=config, dir=str(self.run_dir),
                                            resume="allow", name=self.run_dir.name)

    def _rewrite(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(self._format(row) for row in self.rows)
        atomic_write_text(buffer.getvalue(), self.csv_path)

    @staticmethod
    def _format(row: dict[str, float]) -> dict[str, str]:
        return {k: repr(v) for k, v in row.items()}  # repr round-trips floats exactly, nan/inf included

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        row = {"iteration": int(iteration), **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += sorted(new)
            self._rewrite()
        else:
            with open(self.csv_path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self.columns).writerow(self._format(row))
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, iteration)
        if self._wandb is not None:
            self._wandb.log(metrics, step=iteration)

    def log_video(self, tag: str, frames: np.ndarray, step: int, fps: int, path: str | Path) -> None:
        """Log a rendered episode ``frames [T, height, width, 3]`` already written to ``path``: to TensorBoard
        as an animated GIF image (what ``SummaryWriter.add_video`` writes, without its moviepy
        dependency) and to wandb as the file."""
        if self._tb is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            from pwm.training.video import gif_bytes

            image = Summary.Image(height=int(frames.shape[1]), width=int(frames.shape[2]), colorspace=3,
                                  encoded_image_string=gif_bytes(frames, fps))
            self._tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        if self._wandb is not None:
            import wandb as wandb_module

            self._wandb.log({tag: wandb_module.Video(str(path), format=Path(path).suffix.lstrip("."))}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
