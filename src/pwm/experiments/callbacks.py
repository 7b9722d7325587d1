"""Hydra callback that writes the A/B report when a run or a multirun ends."""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ABReportCallback(Callback):
    """Build the report over every run under ``general.root`` (all settings and sweeps run there).

    In a multirun this runs once, in the launching process, after every job (local or SLURM) ended.
    Under ``status_only=true`` it writes no report: it prints the jobs' totals
    (:func:`pwm.experiments.status.status_totals`), gathered as each job ends in this process.
    """

    def __init__(self) -> None:
        self._statuses: list[dict[str, Any]] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.get("status_only") and job_return.status == JobStatus.COMPLETED:
            self._statuses.append(job_return.return_value)

    def _status(self) -> None:
        from pwm.experiments.status import status_totals

        print(status_totals(self._statuses), flush=True)
        self._statuses = []

    def _report(self, config: DictConfig) -> None:
        from pwm.experiments.report import ConvergenceRule, LearnedBar, build_report
        from pwm.experiments.statistics import Criteria

        report_cfg = config.report
        report = build_report(
            config.general.root, report_cfg.dir, tuple(report_cfg.thresholds), report_cfg.bootstrap_reps,
            LearnedBar(report_cfg.learned_std_margin, report_cfg.learned_min_gain, report_cfg.learned_min_scale),
            Criteria(final_evals=report_cfg.final_evals, hold_evals=report_cfg.hold_evals,
                     tie_tolerance=report_cfg.tie_tolerance, confidence=report_cfg.confidence),
            convergence=ConvergenceRule(report_cfg.convergence, report_cfg.half_budget_tolerance,
                                        tuple(report_cfg.budget_dirs)))
        for comparison in report["comparisons"]:
            log.info("A/B %s vs baseline [%s, %s]: %s", comparison["flow_variant"], comparison["setting"],
                     comparison["model"], comparison["verdict"].upper())
        log.info("report: %s/report.md", config.report.dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._status() if config.get("status_only") else self._report(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._status() if config.get("status_only") else self._report(config)
