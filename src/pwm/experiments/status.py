"""How far an A/B grid has got: each job's progress and the time it still needs, without running anything.

A study runs over several sittings (``scripts/run_study.sh``), and before each one the question is what is
done, what stopped part way and how long the rest takes. ``python scripts/ab_compare.py -m status_only=true
hydra/launcher=basic <the grid's overrides>`` (or ``bash scripts/run_study.sh status``) walks the same jobs
as the real run, so the list is the one Hydra would launch; each job reads its run folder:

- ``done``: its ``summary.json`` is complete (the rule :func:`pwm.experiments.ab.run_ab_job` skips by);
- ``started``: some phase has progress (an interrupted or running job; it resumes from its checkpoints);
- ``waiting``: nothing yet;
- ``refused``: its folder holds a run of another model, alg settings or pretraining budget (a preset's cap
  changed), or policies extracted under other policy settings (``pwm.experiments.ab.check_policy_settings``):
  the job would stop with that message until the folder (or those policies) is moved.

A job's phases, in the order it runs them: the half-budget check (seeds of ``pretrain.half_budget_seeds``),
world-model pretraining, policy extraction. Progress is read from each phase's ``metrics.csv`` (its last
logged iteration and wall-clock seconds). Time left is an estimate at the seconds per iteration measured so
far: a started phase at its own rate, the rest at the rate of every run of the same variant and model size
under the root (pretraining and checks pooled; policy extraction from finished runs). A phase with no such
measurement leaves the job's time unknown. Pretraining counts to its cap: the plateau rule may stop it
sooner unless ``pretrain.min_iterations`` equals the cap, so the estimate is an upper bound then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pwm.experiments.runs import POLICY_FOLDER, metrics_file, model_size

#: Phase folders of a run and their names in the status, in the order a job runs them.
PHASES = (("pretrain_half", "check"), ("pretrain", "pretrain"), ("", "policy"))


@dataclass(frozen=True)
class Progress:
    """How far one phase got: ``iterations`` done of ``total``, in ``elapsed_s`` wall-clock seconds."""

    iterations: int
    total: int
    elapsed_s: float = 0.0


@dataclass
class JobStatus:
    """One A/B job's state (``done`` | ``started`` | ``waiting`` | ``refused``), its phases' progress and
    time left, and for ``refused`` the reason (``note``)."""

    task: str
    setting: str
    variant: str
    seed: int
    model: str
    state: str
    phases: dict[str, Progress] = field(default_factory=dict)
    last_reward: float | None = None  # the last evaluation's (the report averages the last few)
    remaining_s: float | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "setting": self.setting, "variant": self.variant, "seed": self.seed,
                "model": self.model, "state": self.state, "last_reward": self.last_reward,
                "remaining_s": self.remaining_s, "note": self.note,
                "phases": {name: vars(progress) for name, progress in self.phases.items()}}


def summary_is_complete(summary: dict[str, Any], expected_iterations: int) -> bool:
    """A finished run: its policy extraction ran the expected updates, or stopped at its wall-clock budget."""
    return summary.get("iterations") == expected_iterations or bool(summary.get("stopped_by_budget"))


def complete_summary(run_dir: Path, expected_iterations: int) -> dict[str, Any] | None:
    """The ``summary.json`` of the policy in ``run_dir`` if it finished (:func:`summary_is_complete`), else None."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary_is_complete(summary, expected_iterations) else None


def csv_progress(path: Path) -> tuple[int, float] | None:
    """Iterations done and wall-clock seconds of the phase whose ``metrics.csv`` (or ``.csv.gz``) is ``path``:
    its last logged ``iteration`` + 1 and ``time/elapsed_s``; None when nothing was logged."""
    found = metrics_file(path)
    if found is None:
        return None
    try:
        rows = pd.read_csv(found, usecols=["iteration", "time/elapsed_s"]).dropna()
    except (ValueError, pd.errors.EmptyDataError):  # a header only, or a file from before these columns
        return None
    if rows.empty:
        return None
    last = rows.iloc[-1]
    return int(last["iteration"]) + 1, float(last["time/elapsed_s"])


def _summed_progress(paths: list[Path]) -> tuple[int, float] | None:
    """:func:`csv_progress` summed over the logs of one phase run several times (a job's policies)."""
    found = [progress for progress in map(csv_progress, paths) if progress is not None]
    return (sum(done for done, _ in found), sum(seconds for _, seconds in found)) if found else None


def _run_model(run_dir: Path) -> str:
    for name in ("job.json", "summary.json"):
        if (run_dir / name).exists():
            record = json.loads((run_dir / name).read_text())
            if record.get("model"):
                return record["model"]
            if record.get("alg"):
                return model_size(record)
    return "unknown"


def measured_rates(root: str | Path) -> dict[tuple[str, str], dict[str, float]]:
    """Seconds per iteration of every ``(variant, model)`` under ``<root>/runs``: ``pretrain`` (world-model
    pretraining and half-budget checks, pooled over every logged iteration) and ``policy`` (finished runs)."""
    totals: dict[tuple[str, str], dict[str, list[float]]] = {}
    for run_dir in sorted(Path(root, "runs").glob("*/*/*/seed*")):
        key = (run_dir.parent.name, _run_model(run_dir))
        sums = totals.setdefault(key, {"pretrain": [0.0, 0.0], "policy": [0.0, 0.0]})
        for folder in ("pretrain_half", "pretrain"):
            progress = csv_progress(run_dir / folder / "metrics.csv")
            if progress is not None:
                sums["pretrain"][0] += progress[1]
                sums["pretrain"][1] += progress[0]
        if (run_dir / "summary.json").exists():
            progress = csv_progress(run_dir / "metrics.csv")
            if progress is not None:
                sums["policy"][0] += progress[1]
                sums["policy"][1] += progress[0]
    return {key: {phase: seconds / iterations for phase, (seconds, iterations) in sums.items() if iterations > 0}
            for key, sums in totals.items()}


def job_status(run_dir: Path, *, task: str, setting: str, variant: str, seed: int, model: str,
               pretrain_iterations: int, policy_iterations: int, half_budget_check: bool,
               rates: dict[tuple[str, str], dict[str, float]], policies: int = 1) -> JobStatus:
    """The state of the job whose run folder is ``run_dir`` (see the module docstring); ``policies``: the
    policies it extracts from its world model (``train.policy_seeds``), whose updates the policy phase counts."""
    status = JobStatus(task, setting, variant, seed, model, "waiting")
    policy_dirs = [run_dir] + [run_dir / POLICY_FOLDER.format(index=index) for index in range(1, policies)]
    summaries = [complete_summary(folder, policy_iterations) for folder in policy_dirs]
    if all(summary is not None for summary in summaries):
        status.state, status.remaining_s = "done", 0.0
        status.last_reward = float(summaries[0]["final_reward"])  # the summary keeps the last evaluation's
        return status
    totals = {"check": max(1, pretrain_iterations // 2) if half_budget_check else 0,
              "pretrain": pretrain_iterations, "policy": policy_iterations * policies}
    logged = {name: csv_progress(run_dir / folder / "metrics.csv") if name != "policy" else
              _summed_progress([folder / "metrics.csv" for folder in policy_dirs])
              for folder, name in PHASES if totals[name]}
    started = [name for name, progress in logged.items() if progress is not None]
    measured = rates.get((variant, model), {})
    remaining: float | None = 0.0
    for name, progress in logged.items():
        done, elapsed = progress if progress is not None else (0, 0.0)
        # a later phase began: this one ended (the plateau rule may end it before its cap), unless it has no log
        # (a halved cap's job takes its double's check as its pretraining, then runs its own check)
        if progress is not None and started and list(logged).index(name) < list(logged).index(started[-1]):
            done = totals[name]
        done = min(done, totals[name])
        status.phases[name] = Progress(done, totals[name], elapsed)
        rate = elapsed / done if done else measured.get("policy" if name == "policy" else "pretrain")
        if done < totals[name] and remaining is not None:
            remaining = None if rate is None else remaining + (totals[name] - done) * rate
    status.state = "started" if started else "waiting"
    status.remaining_s = remaining
    return status


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def status_line(status: JobStatus) -> str:
    """One line per job, e.g. ``started  reacher-easy default flow-K4-uniform seed0: pretrain 40000/80000 ...``."""
    head = f"{status.state:8s} {status.task} {status.setting} {status.variant} seed{status.seed}"
    if status.state == "done":
        return f"{head}: last evaluation {status.last_reward:.1f}"
    if status.state == "refused":
        return f"{head}: {status.note}"
    phases = ", ".join(f"{name} {p.iterations}/{p.total}" for name, p in status.phases.items())
    return f"{head}: {phases}; left {format_duration(status.remaining_s)}"


def status_totals(statuses: list[dict[str, Any]]) -> str:
    """One line over jobs given as :meth:`JobStatus.as_dict`: how many are in each state, and the time left
    summed over jobs (one job per core: the wall-clock on N cores is about this over N)."""
    states = [status["state"] for status in statuses]
    left = [status["remaining_s"] for status in statuses if status["state"] in ("started", "waiting")]
    unknown = sum(seconds is None for seconds in left)
    total = sum(seconds for seconds in left if seconds is not None)
    refused = f", {states.count('refused')} refused (see above; not in the time left)" if "refused" in states else ""
    return (f"{len(states)} jobs: {states.count('done')} done, {states.count('started')} started, "
            f"{states.count('waiting')} waiting{refused}; "
            f"left at the measured rates: {format_duration(total)} of job time"
            + (f", plus {unknown} jobs of a variant with no rate measured yet" if unknown else ""))
