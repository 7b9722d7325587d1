"""benchmarks/bench_updates.py end to end on a tiny model: its table, ratios and allocator option."""

import subprocess
import sys

from conftest import REPO


def _bench(*extra: str) -> str:
    command = [sys.executable, str(REPO / "benchmarks" / "bench_updates.py"), "--alg", "pwm_tiny", "--batch", "8",
               "--horizon", "3", "--integrate-steps", "2", "--recompute-steps", "2", "--compile-steps",
               "--medium-steps", "2", "--repeats", "1", "--threads", "1", *extra]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_table_has_every_variant_against_the_baseline_and_the_allocator_setting_reaches_the_measurements():
    out = _bench("--malloc-mmap-threshold", "65536")
    assert "pwm_tiny: batch 8, H 3, device cpu, 1 repeats, MALLOC_MMAP_THRESHOLD_=65536" in out
    table = [fields for fields in map(str.split, out.splitlines())
             if len(fields) == 13 and fields[0] in ("baseline", "flow", "flow-rc")]
    rows = {fields[0] + fields[1]: fields for fields in table}
    assert set(rows) == {"baseline-", "flow2", "flow-rc2"}
    assert rows["baseline-"][4] == rows["baseline-"][6] == rows["baseline-"][8] == "1.00"  # ratios to itself
    # recomputing the Euler sub-steps in backward holds fewer live tensors than keeping them
    assert float(rows["flow-rc2"][7]) < float(rows["flow2"][7])
    assert "GFLOP per world-model update" in out and "ESNR" in out
    medium = {fields[0] + fields[1] for fields in map(str.split, out.splitlines())
              if len(fields) == 13 and fields[0].endswith("-m") and fields[1] in ("-", "2")}
    assert medium == {"base-m-", "flow-m2"} and "flow-m K=2: WM update at matmul_precision=medium" in out
