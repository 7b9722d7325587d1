"""Does a collection recipe write the same data on this CPU as on the CPUs seen before?

    python benchmarks/data_portability.py                      # every numerics, cartpole-balance, 3,000 SAC steps
    python benchmarks/data_portability.py --numerics vendor_neutral --sac-steps 1000

A study is finished over several sittings on whatever machine each one gets, and its runs are only
comparable on the same data (the A/B refuses a job whose dataset differs from its task's finished runs).
So the data of a recipe must not depend on the CPU. Each numerics of
:data:`pwm.data.collect.NUMERICS_ENVS`, plus ``native`` (no settings), collects the same short SAC replay
in a fresh process with one thread (SAC's updates run from step 100, so most of the replay comes from a
learner whose float results steer it); the fingerprint of each (:func:`dataset_fingerprint`) is compared
with the rows that other CPUs left in ``--csv``, and this CPU's rows replace its old ones there.

Prints, per numerics: the fingerprint, the seconds, and either ``same on N CPUs`` or the CPUs that got other
data. Commit the CSV: the next machine compares against it.
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
import time
from pathlib import Path

from pwm.data.collect import NUMERICS_ENVS, CollectConfig, collect_portably
from pwm.data.tdmpc2_format import dataset_fingerprint
from pwm.utils.common import atomic_write_text, cpu_model, cpuinfo_fields, git_commit

FIELDS = ("cpu", "cpu_vendor", "cpu_id", "numerics", "task", "sac_steps", "seed", "fingerprint", "seconds", "commit")
ROW_KEY = ("cpu", "cpu_id", "numerics", "task", "sac_steps", "seed")  # a new row replaces an old one of the same key


def cpu_identity() -> tuple[str, str]:
    """The vendor (``GenuineIntel``, ``AuthenticAMD``: MKL picks its code branches by vendor as well as by ISA)
    and ``family F model M stepping S`` (virtual machines often report a generic model name); ``unknown`` off
    Linux."""
    fields = cpuinfo_fields()
    if not fields:
        return "unknown", "unknown"
    family, model, stepping = (fields.get(key, "?") for key in ("cpu family", "model", "stepping"))
    return fields.get("vendor_id", "unknown"), f"family {family} model {model} stepping {stepping}"


def collect(numerics: str, task: str, sac_steps: int, seed: int, out_dir: Path) -> float:
    """Collect the recipe's replay into ``out_dir`` under ``numerics``; return the seconds it took."""
    config = CollectConfig(tasks=[task], out_dir=str(out_dir), policy="sac", sac_steps=sac_steps, seed=seed,
                           episodes_per_file=10_000, threads=1)
    start = time.perf_counter()
    collect_portably(config, None if numerics == "native" else numerics)  # native too in a fresh process: no leaks
    return time.perf_counter() - start


def compare(rows: list[dict], mine_only: dict) -> list[str]:
    """One line per row matching ``mine_only`` (this CPU and recipe): the same fingerprint as every other CPU's
    row of the same numerics and recipe, or which CPUs differ."""
    lines = []
    recipe = ("numerics", "task", "sac_steps", "seed")
    for mine in (row for row in rows if all(str(row[key]) == str(value) for key, value in mine_only.items())):
        others = [row for row in rows if (row["cpu"], row["cpu_id"]) != (mine["cpu"], mine["cpu_id"])
                  and all(str(row[key]) == str(mine[key]) for key in recipe)]
        differ = [f"{row['cpu']}, {row['cpu_id']} ({row['fingerprint'][:12]})" for row in others
                  if row["fingerprint"] != mine["fingerprint"]]
        verdict = (f"DIFFERS from {', '.join(differ)}" if differ else
                   f"same on {len(others) + 1} CPUs" if others else "no other CPU has run this recipe yet")
        lines.append(f"{mine['numerics']:>15}  {mine['fingerprint'][:12]}  {float(mine['seconds']):6.1f} s  {verdict}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numerics", nargs="+", default=[*NUMERICS_ENVS, "native"],
                        choices=[*NUMERICS_ENVS, "native"], help="numerics to collect under")
    parser.add_argument("--task", default="cartpole-balance")
    parser.add_argument("--sac-steps", type=int, default=3000, help="environment steps of the SAC learner")
    parser.add_argument("--seed", type=int, default=12345, help="the A/B's data seed")
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/results/data_portability.csv"))
    args = parser.parse_args()

    rows = list(csv.DictReader(args.csv.open())) if args.csv.exists() else []
    cpu, (vendor, cpu_id), commit = cpu_model(), cpu_identity(), git_commit(".") or "unknown"
    for numerics in args.numerics:
        with tempfile.TemporaryDirectory() as scratch:
            seconds = collect(numerics, args.task, args.sac_steps, args.seed, Path(scratch))
            fingerprint = dataset_fingerprint(scratch)
        row = {"cpu": cpu, "cpu_vendor": vendor, "cpu_id": cpu_id, "numerics": numerics, "task": args.task,
               "sac_steps": args.sac_steps, "seed": args.seed, "fingerprint": fingerprint,
               "seconds": f"{seconds:.1f}", "commit": commit}
        rows = [old for old in rows if any(str(old[field]) != str(row[field]) for field in ROW_KEY)] + [row]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(buffer.getvalue(), args.csv)  # after each numerics: an interrupted run keeps what it measured
    print(f"{cpu} ({vendor}, {cpu_id}); {args.task}, {args.sac_steps} SAC steps, seed {args.seed}; rows in {args.csv}")
    print("\n".join(compare(rows, {"cpu": cpu, "cpu_id": cpu_id, "task": args.task, "sac_steps": args.sac_steps,
                                   "seed": args.seed})))


if __name__ == "__main__":
    main()
