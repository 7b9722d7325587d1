"""Peak memory and time of loading an offline dataset, against the dataset's size.

    python benchmarks/load_memory.py                      # 2.1 GB in 8 files, MT30 layout (T+1 = 501, obs 24, act 6)
    python benchmarks/load_memory.py --gb 4 --files 16 --keep /tmp/data

Writes random episodes in TD-MPC2's layout (float32 obs/action/reward, int32 task ids, 30 task ids),
then loads them in a fresh process with ``load_dataset`` (a) whole, as pretraining does, and (b) for
one task, as per-task policy extraction does. Prints peak RSS above the process's RSS before loading,
divided by the bytes that end up loaded, and the seconds taken.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _process import in_fresh_process, status_mb


def write_dataset(root: Path, gb: float, files: int, length: int, obs_dim: int, act_dim: int, tasks: int) -> int:
    import torch

    from pwm.data.tdmpc2_format import write_episodes

    step_bytes = 4 * (obs_dim + act_dim + 1 + 1)
    per_file = max(1, int(gb * 1e9 / step_bytes / length / files))
    generator = torch.Generator().manual_seed(0)
    total = 0
    for index in range(files):
        obs = torch.randn(per_file, length, obs_dim, generator=generator)
        action = torch.rand(per_file, length, act_dim, generator=generator) * 2 - 1
        reward = torch.rand(per_file, length, generator=generator)
        action[:, 0], reward[:, 0] = float("nan"), float("nan")
        task = (torch.arange(per_file, dtype=torch.int32) % tasks)[:, None].expand(per_file, length).contiguous()
        write_episodes(root / f"chunk{index:03d}.pt", obs, action, reward, task)
        total += per_file * length * step_bytes
    return total


def _load(root: str, tasks: list[int] | None, queue) -> None:
    import tensordict  # noqa: F401  (the libraries the loader needs are not the data's memory)
    import torch

    from pwm.data.tdmpc2_format import load_dataset

    torch.set_num_threads(1)
    before = status_mb("VmRSS")
    start = time.perf_counter()
    buffer = load_dataset(root, horizon=16, num_tasks=30, tasks=tasks)
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    loaded = buffer.size * 4 * (buffer.obs_dim + buffer.act_dim + 1 + 1)  # the same steps in the file layout
    queue.put({"peak_above_start_mb": peak - before, "loaded_mb": loaded / 2**20, "seconds": seconds,
               "episodes": buffer.num_episodes})


def measure(root: Path, tasks: list[int] | None) -> dict:
    return in_fresh_process(_load, str(root), tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.1, help="dataset size to write")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--length", type=int, default=501, help="steps per episode, T+1 (MT30: 501, MT80: 101)")
    parser.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="pwm_load_memory_"))
    try:
        start = time.perf_counter()
        size = write_dataset(root, args.gb, args.files, args.length, obs_dim=24, act_dim=6, tasks=30)
        print(f"wrote {size / 1e9:.2f} GB in {args.files} files ({time.perf_counter() - start:.0f} s): {root}")
        for label, tasks in (("all tasks (pretraining)", None), ("one task of 30 (policy extraction)", [3])):
            result = measure(root, tasks)
            ratio = result["peak_above_start_mb"] / result["loaded_mb"]
            print(f"{label:<36} loaded {result['loaded_mb']:8.0f} MB ({result['episodes']} episodes) in "
                  f"{result['seconds']:5.1f} s; peak RSS above start {result['peak_above_start_mb']:8.0f} MB "
                  f"= {ratio:.2f}x the loaded data")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
