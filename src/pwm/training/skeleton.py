"""The loop skeleton that online training, offline policy extraction and world-model pretraining share.

A :class:`TrainingLoop` owns what every run does the same way: the iteration schedule (evaluate,
log, checkpoint), the batch sampler's and the global RNG states, resuming from ``<run_dir>/checkpoint.pt``
(every part's ``state_dict`` plus progress and RNGs, written atomically), the progress bar, the
training clock and the stop request. A loop in :mod:`pwm.training.loops` only says what one
iteration does (``step``), what an evaluation measures (``evaluate``) and what to do once finished
(``on_finish``), so a fix to resuming or scheduling lands once, for all three.

One iteration, in order: ``step(iteration)`` -> evaluation when due or when a stop was requested ->
log row (on rank 0; the mean of the step metrics since the last row, plus the evaluation) ->
checkpoint when due, at the last iteration or on a stop (then ``on_finish`` first, and the loop ends).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from pwm.training.logger import RunLogger
from pwm.utils.common import atomic_torch_save, load_checkpoint

Metrics = dict[str, float]


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


@dataclass
class Progress:
    """Loop position saved in checkpoints. ``train_elapsed_s`` counts only the seconds spent inside
    :meth:`TrainingLoop.clock` (the updates); ``elapsed_s`` counts whole iterations (evaluation included)."""

    iteration: int = 0
    env_steps: int = 0
    elapsed_s: float = 0.0
    train_elapsed_s: float = 0.0


@dataclass
class Schedule:
    """When a loop evaluates, logs and checkpoints (every N iterations, and always at the last one)."""

    iterations: int
    eval_every: int
    checkpoint_every: int
    log_every: int = 1

    def is_due(self, iteration: int, every: int) -> bool:
        return (iteration + 1) % every == 0 or iteration == self.iterations - 1


class BestWeights:
    """A copy of a module's weights at its best evaluation so far (checkpointed with the loop)."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] | None = None

    def keep(self, module: torch.nn.Module) -> None:
        self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def restore(self, module: torch.nn.Module) -> None:
        if self.weights is not None:
            module.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.weights

    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        self.weights = state


def mean_metrics(history: list[Metrics]) -> Metrics:
    """Per-key mean over a list of metric dicts, ignoring NaNs (NaN if a key is NaN everywhere)."""
    keys = {k for metrics in history for k in metrics}
    out = {}
    for key in keys:
        values = [m[key] for m in history if key in m and not math.isnan(m[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


class TrainingLoop:
    """Schedule, resume, RNGs, logging and checkpoints of one run (see the module docstring).

    Args:
        run_dir: where ``metrics.csv``, ``checkpoint.pt`` (and TensorBoard events) go.
        schedule: iterations and the evaluate / checkpoint / log periods.
        seed: seeds the batch sampler (``self.generator``, offset by ``rank``) and ``self.np_rng``.
        parts: named objects with ``state_dict`` / ``load_state_dict`` saved in every checkpoint under
            their name (e.g. ``{"agent": agent}``, ``{"world_model": wm, "wm_optim": optim}``).
        static: entries written into every checkpoint as they are (e.g. ``run_info``, ``meta``).
        identity: entries written into every checkpoint that a resumed one must hold unchanged (e.g. the cap
            of a decaying learning rate: resumed under another cap the run would be neither the old nor the new
            one); a mismatch is an error naming the entry. Checkpoints without the entry resume.
        resume: continue from ``checkpoint.pt`` when it exists. A run ended by a stop request runs no
            more iterations; one that reached its iteration count continues if ``schedule`` asks for more.
        rank: DDP rank; only rank 0 logs, shows a bar and writes checkpoints.
        logger_config: what TensorBoard / wandb record as the run's config.
    """

    def __init__(self, run_dir: str | Path, schedule: Schedule, *, seed: int, parts: dict[str, Stateful],
                 static: dict[str, Any] | None = None, identity: dict[str, Any] | None = None, resume: bool = True,
                 rank: int = 0, tensorboard: bool = False, wandb: bool = False,
                 logger_config: dict[str, Any] | None = None, desc: str = "") -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.schedule, self.parts = schedule, parts
        self.identity = dict(identity or {})
        self.static = {**(static or {}), **self.identity}
        self.is_main, self.desc = rank == 0, desc
        self.generator = torch.Generator().manual_seed(seed + rank)
        self.np_rng = np.random.default_rng(seed)
        self.progress = Progress()
        self.finished = False
        self.stop_requested = False
        if resume and self.checkpoint_path.exists():
            self._load()
        self.logger = RunLogger(self.run_dir, self.progress.iteration, tensorboard=tensorboard, wandb=wandb,
                                config=logger_config) if self.is_main else None
        self._bar: tqdm | None = None

    # -- state ---------------------------------------------------------------------------------------------
    def _load(self) -> None:
        state = load_checkpoint(self.checkpoint_path)
        for name, value in self.identity.items():
            if name in state and state[name] != value:
                raise ValueError(f"{self.checkpoint_path} is a run of {name}={state[name]!r}, this one has "
                                 f"{name}={value!r}; use another run directory, or resume=false to start over")
        for name, part in self.parts.items():
            if name not in state:
                continue  # a part that older checkpoints did not save keeps its fresh state
            try:
                part.load_state_dict(state[name])
            except (RuntimeError, KeyError, ValueError) as exc:
                raise ValueError(
                    f"{self.checkpoint_path} does not fit this run's model (its '{name}'; another task, observation "
                    f"width or alg size?): {str(exc).splitlines()[0]} ... Use another run directory, or resume=false "
                    "to start over") from exc
        self.progress = Progress(**state["progress"])
        rng = state.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            self.generator.set_state(rng["sampler"])
            if rng.get("numpy") is not None:
                self.np_rng.bit_generator.state = rng["numpy"]
        # a stop rule's decision (plateau, time budget) stands on resume; a run that only reached its
        # iteration count continues when asked for more iterations
        self.stop_requested = bool(state.get("stopped", state.get("finished", False)))
        self.finished = self.stop_requested or self.progress.iteration >= self.schedule.iterations

    def save(self) -> None:
        """Write the checkpoint atomically (rank 0 only)."""
        if not self.is_main:
            return
        state = {name: part.state_dict() for name, part in self.parts.items()}
        state.update(self.static)
        state.update({"progress": vars(self.progress), "finished": self.finished, "stopped": self.stop_requested,
                      "rng": {"torch": torch.get_rng_state(), "sampler": self.generator.get_state(),
                              "numpy": self.np_rng.bit_generator.state}})
        atomic_torch_save(state, self.checkpoint_path)

    # -- helpers for the loops -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def clock(self) -> Iterator[None]:
        """Count the enclosed seconds as training time (``progress.train_elapsed_s``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.progress.train_elapsed_s += time.perf_counter() - start

    def request_stop(self) -> None:
        """End the loop after this iteration, with an evaluation and a checkpoint."""
        self.stop_requested = True

    def show(self, **postfix: Any) -> None:
        """Values shown next to the progress bar."""
        if self._bar is not None:
            self._bar.set_postfix(**postfix)

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, step: Callable[[int], Metrics], evaluate: Callable[[int], Metrics] | None = None,
            on_finish: Callable[[], None] | None = None, log_extra: Callable[[], Metrics] | None = None) -> None:
        """Run the remaining iterations. ``step(i)`` trains and returns its metrics; ``evaluate(i)``
        returns evaluation metrics; ``on_finish()`` runs before the final checkpoint; ``log_extra()``
        adds values to every log row (e.g. cumulative counters)."""
        schedule = self.schedule
        last = schedule.iterations - 1
        bar = tqdm(range(self.progress.iteration, schedule.iterations), initial=self.progress.iteration,
                   total=schedule.iterations, desc=self.desc, dynamic_ncols=True,
                   disable=not self.is_main or self.finished)
        self._bar = bar
        history: list[Metrics] = []
        for iteration in ([] if self.finished else bar):
            start = time.perf_counter()
            history.append(step(iteration))
            evaluation: Metrics = {}
            if evaluate is not None and (schedule.is_due(iteration, schedule.eval_every) or self.stop_requested):
                evaluation = evaluate(iteration)
            self.progress.iteration = iteration + 1
            self.progress.elapsed_s += time.perf_counter() - start
            if self.logger is not None and (evaluation or schedule.is_due(iteration, schedule.log_every)):
                row = {**mean_metrics(history), **evaluation,
                       "time/train_elapsed_s": self.progress.train_elapsed_s, "time/elapsed_s": self.progress.elapsed_s}
                self.logger.log(iteration, {**row, **(log_extra() if log_extra is not None else {})})
                history = []
            if self.stop_requested or iteration == last:
                if on_finish is not None:
                    on_finish()
                self.finished = True
                self.save()
                break
            if schedule.is_due(iteration, schedule.checkpoint_every):
                self.save()
        bar.close()
        self._bar = None
        if self.logger is not None:
            self.logger.close()

    @property
    def rows(self) -> list[Metrics]:
        """Every logged row of the run (resumed rows included; empty off rank 0)."""
        return self.logger.rows if self.logger is not None else []
