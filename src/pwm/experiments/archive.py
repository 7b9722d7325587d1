"""A committable archive of finished A/B runs, so a long study survives the machine it ran on.

``save`` copies every finished run under ``<root>/runs`` (one with a ``summary.json``) into the
archive as ``summary.json`` plus gzipped ``metrics.csv.gz``, ``pretrain/metrics.csv.gz`` (and the
half-budget check's ``pretrain_half/metrics.csv.gz``) with floats
kept to 6 significant digits (about 60 KB a run; no checkpoints, no data). ``restore`` puts archived
runs back under a root where they are missing: an A/B job that finds its ``summary.json`` is done and
is skipped, so a study resumed on a fresh checkout runs only what the archive does not hold. A run folder
without ``summary.json`` that the archive holds finished (an interrupted attempt, or a run whose policies were
moved out to be extracted again) is moved to ``<root>/superseded/`` first, never deleted: its checkpoints may
hold hours of pretraining. To extract a run's policies again, remove them from the archive too. The
report reads archived runs directly (:func:`pwm.experiments.runs.load_runs` takes ``.csv.gz``).

    python -m pwm.experiments.archive save runs/study results/study/runs
    python -m pwm.experiments.archive restore results/study/runs runs/study
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from pwm.utils.common import atomic_write_text

METRICS = ("metrics.csv", "pretrain/metrics.csv", "pretrain_half/metrics.csv")  # the last: half-budget checks
#: Where :func:`restore` moves the unfinished folder of a run the archive holds finished (``<root>/superseded``,
#: outside ``runs/``, so no report or job reads it).
SUPERSEDED = "superseded"


def _runs_dir(root: Path) -> Path:
    return root / "runs" if (root / "runs").is_dir() else root


def _write_gzip_csv(source: Path, target: Path) -> None:
    text = pd.read_csv(source).to_csv(index=False, float_format="%.6g")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    with gzip.open(temporary, "wt", compresslevel=9) as handle:
        handle.write(text)
    temporary.replace(target)


def save(root: str | Path, archive: str | Path) -> int:
    """Archive the finished runs of ``root`` that the archive does not hold yet; returns how many."""
    runs, archive, count = _runs_dir(Path(root)), Path(archive), 0
    for summary in sorted(runs.rglob("summary.json")):
        run, target = summary.parent, archive / summary.parent.relative_to(runs)
        if (target / "summary.json").exists() or not (run / "metrics.csv").exists():
            continue
        for name in METRICS:
            if (run / name).exists():
                _write_gzip_csv(run / name, target / f"{name}.gz")
        atomic_write_text(summary.read_text(), target / "summary.json")  # last: it marks the run complete
        count += 1
    return count


def restore(archive: str | Path, root: str | Path) -> int:
    """Put archived runs back under ``<root>/runs`` where that run has no ``summary.json``; returns how many.
    A folder already there without one is moved to ``<root>/superseded/<its path>-<UTC time>`` first."""
    archive, runs, count = Path(archive), Path(root) / "runs", 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # a run before its further policies (policy<k> folders): restoring a run moves an attempt at it, theirs too
    for summary in sorted(archive.rglob("summary.json"), key=lambda path: (len(path.parts), path)):
        relative = summary.parent.relative_to(archive)
        target = runs / relative
        if (target / "summary.json").exists():
            continue
        if target.exists():  # an unfinished attempt at a run the archive holds finished: the archive wins
            aside = Path(root) / SUPERSEDED / f"{relative}-{stamp}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(target), str(aside))
            print(f"restore: {target} had no summary.json; moved to {aside}", file=sys.stderr)
        for name in METRICS:
            source = summary.parent / f"{name}.gz"
            if source.exists():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target / f"{name}.gz")
        atomic_write_text(summary.read_text(), target / "summary.json")
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("source", type=Path, help="save: the A/B root; restore: the archive")
    parser.add_argument("target", type=Path, help="save: the archive; restore: the A/B root")
    args = parser.parse_args()
    count = (save if args.action == "save" else restore)(args.source, args.target)
    print(f"{args.action}: {count} run(s) from {args.source} to {args.target}")


if __name__ == "__main__":
    main()
