"""Throughput and peak memory of world-model and policy updates: baseline vs flow at several K.

    python benchmarks/bench_updates.py                                  # pwm_5M, batch 256, H 16, K 2/4/8
    python benchmarks/bench_updates.py --alg pwm_tiny --repeats 5       # quick look
    python benchmarks/bench_updates.py --alg pwm_48M --device cuda --out bench.json

Every configuration runs in a fresh process (so its peak memory is its own). Two memory figures:
"tensor MB", the peak of live tensor memory during one world-model update (parameters, activations,
gradients, optimizer state, temporaries; torch's MemTracker, the CPU counterpart of
``torch.cuda.max_memory_allocated``), and "WM upd MB", the process's peak above the memory held
before the updates (peak RSS on CPU, which also counts what the C allocator keeps cached; CUDA:
``torch.cuda.max_memory_allocated``). glibc keeps freed blocks of up to 32 MB in its heap once it has
seen blocks that large freed (its adaptive mmap threshold), so the RSS figure also depends on how a
variant allocates; ``--malloc-mmap-threshold 65536`` fixes the threshold and RSS then follows the
live tensors. Ratios are flow / baseline
(time ratios > 1 = slower). Also printed: FLOPs of one world-model update (torch's FLOP counter) and
the achieved rate against this machine's own matmul rate on the update's shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from _process import in_fresh_process, reset_peak, status_mb

CFG_DIR = Path(__file__).resolve().parent.parent / "scripts" / "cfg"


def _measure(alg_name: str, integrate_steps: int | None, args: dict, recompute: bool, compiled: bool,
             matmul_precision: str, queue) -> None:
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pwm.algorithms.build import build_pwm
    from pwm.utils.common import resolve_device, set_matmul_precision

    torch.manual_seed(0)
    set_matmul_precision(matmul_precision)
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    with initialize_config_dir(config_dir=str(CFG_DIR), version_base="1.3"):
        alg = compose(config_name=f"alg/{alg_name}").alg
    alg = OmegaConf.create(OmegaConf.to_container(alg))
    alg.horizon, alg.esnr_splits = args["horizon"], args["esnr_splits"]
    if integrate_steps is not None:
        alg.world_model_config.integrate_steps = integrate_steps
        alg.world_model_config.recompute_substeps = recompute
    alg.compile_wm_loss = compiled
    device = resolve_device(args["device"])
    agent = build_pwm(alg, args["obs_dim"], args["act_dim"], device=str(device))
    batch, horizon = args["batch"], args["horizon"]
    obs = torch.randn(horizon + 1, batch, args["obs_dim"], device=device)
    action = torch.rand(horizon, batch, args["act_dim"], device=device) * 2 - 1
    reward = torch.randn(horizon, batch, device=device)

    warmup_s = []

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()  # warm-up (and compilation)
        warmup_s.append(time.perf_counter() - start)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args["repeats"]):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args["repeats"]

    before_mb = status_mb("VmRSS")
    reset_peak()
    wm_s = timed(lambda: agent.update_world_model(obs, action, reward))
    wm_peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                  else status_mb("VmHWM") - before_mb)
    wm_tensor_mb = _tensor_peak_mb(agent, lambda: agent.update_world_model(obs, action, reward))
    from torch.utils.flop_counter import FlopCounterMode

    wm_gflop = float("nan")
    if not compiled:  # the FLOP counter sees eager ops only; a compiled update does the same FLOPs
        with FlopCounterMode(display=False) as counter:
            agent.update_world_model(obs, action, reward)
        wm_gflop = counter.get_total_flops() / 1e9
    matmul_gflops = _matmul_rate(batch, int(alg.world_model_config.units[0]), device)
    esnr_every = agent.esnr_every
    agent.esnr_every = 10**9  # never measured: one pass per actor update
    policy_s = timed(lambda: agent.update_actor_critic(obs[0]))
    agent.esnr_every = 1  # measured on every update: M passes
    esnr_policy_s = timed(lambda: agent.update_actor_critic(obs[0]))
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put({"wm_gflop": wm_gflop, "wm_gflops": wm_gflop / wm_s, "matmul_gflops": matmul_gflops,
               "wm_update_s": wm_s, "policy_update_s": policy_s, "peak_mb": peak_mb, "wm_update_mb": wm_peak_mb,
               "wm_tensor_mb": wm_tensor_mb,
               "esnr_every": esnr_every, "esnr_overhead": (esnr_policy_s - policy_s) / esnr_every / policy_s,
               "wm_params": sum(p.numel() for p in agent.wm.parameters()), "device": str(device),
               "wm_first_update_s": warmup_s[0], "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")})


def _tensor_peak_mb(agent, update) -> float:
    """Peak live tensor memory (MB) of one ``update()`` of ``agent``'s world model, all categories."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:  # builds without torch.distributed
        return float("nan")
    tracker = MemTracker()
    tracker.track_external(agent.wm, agent.wm_optim)
    with tracker:
        update()
    return sum(stats["Total"] for stats in tracker.get_tracker_snapshot("peak").values()) / 2**20


def _matmul_rate(rows: int, width: int, device, seconds: float = 1.0) -> float:
    """This machine's fp32 matmul rate (GFLOP/s) on the update's typical shape ``[rows, width] x [width, width]``."""
    import torch

    a, b = torch.randn(rows, width, device=device), torch.randn(width, width, device=device)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * rows * width * width * count / (time.perf_counter() - start) / 1e9


def measure(alg_name: str, integrate_steps: int | None, args: dict, recompute: bool = False,
            compiled: bool = False, matmul_precision: str = "highest") -> dict:
    return in_fresh_process(_measure, alg_name, integrate_steps, args, recompute, compiled, matmul_precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alg", default="pwm_5M", help="baseline alg config; its _flow twin is the flow variant")
    parser.add_argument("--integrate-steps", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--obs-dim", type=int, default=24)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--esnr-splits", type=int, default=4)
    parser.add_argument("--recompute-steps", type=int, nargs="*", default=[4],
                        help="K values also measured with recompute_substeps=true (row flow-rc)")
    parser.add_argument("--compile-steps", type=int, nargs="*", default=[4],
                        help="K values also measured with compile_wm_loss=true (rows *-c; the baseline too when "
                             "any); pass none to skip: compiling takes minutes")
    parser.add_argument("--medium-steps", type=int, nargs="*", default=[],
                        help="K values also measured with matmul_precision=medium (rows *-m, the baseline too when "
                             "any): float32 matmuls in bfloat16, fast on CPUs with AMX")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="glibc's MALLOC_MMAP_THRESHOLD_ for the measuring processes: blocks this large or "
                             "larger are mapped and returned on free, so RSS follows live memory (default: glibc's "
                             "adaptive threshold, under which freed blocks of up to 32 MB stay in the heap)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    cli = parser.parse_args()
    if cli.malloc_mmap_threshold is not None:  # read by glibc when each spawned process starts
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(cli.malloc_mmap_threshold)
    args = {"batch": cli.batch, "horizon": cli.horizon, "obs_dim": cli.obs_dim, "act_dim": cli.act_dim,
            "repeats": cli.repeats, "esnr_splits": cli.esnr_splits, "threads": cli.threads, "device": cli.device}

    rows = [{"variant": "baseline", "K": "-", **measure(cli.alg, None, args)}]
    rows += [{"variant": "flow", "K": k, **measure(f"{cli.alg}_flow", k, args)} for k in cli.integrate_steps]
    rows += [{"variant": "flow-rc", "K": k, **measure(f"{cli.alg}_flow", k, args, recompute=True)}
             for k in cli.recompute_steps]
    if cli.compile_steps:
        rows += [{"variant": "base-c", "K": "-", **measure(cli.alg, None, args, compiled=True)}]
        rows += [{"variant": "flow-c", "K": k, **measure(f"{cli.alg}_flow", k, args, compiled=True)}
                 for k in cli.compile_steps]
        eager_gflop = {row["K"]: row["wm_gflop"] for row in rows if row["variant"] in ("baseline", "flow")}
        for row in rows:
            if row["variant"].endswith("-c"):
                row["wm_gflop"] = eager_gflop.get(row["K"], float("nan"))
                row["wm_gflops"] = row["wm_gflop"] / row["wm_update_s"]
    if cli.medium_steps:
        rows += [{"variant": "base-m", "K": "-", **measure(cli.alg, None, args, matmul_precision="medium")}]
        rows += [{"variant": "flow-m", "K": k, **measure(f"{cli.alg}_flow", k, args, matmul_precision="medium")}
                 for k in cli.medium_steps]
    base = rows[0]
    thresholds = {row["malloc_mmap_threshold"] for row in rows}  # as the measuring processes saw it
    allocator = "".join(f", MALLOC_MMAP_THRESHOLD_={value}" for value in thresholds if value is not None)
    print(f"{cli.alg}: batch {cli.batch}, H {cli.horizon}, device {base['device']}, {cli.repeats} repeats{allocator}\n")
    header = (f"{'variant':<9}{'K':>3}{'WM params':>12}{'WM upd/s':>10}{'x base':>8}"
              f"{'policy upd/s':>14}{'x base':>8}{'tensor MB':>11}{'x base':>8}{'WM upd MB':>11}{'x base':>8}"
              f"{'peak MB':>10}{'x base':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['variant']:<9}{row['K']:>3}{row['wm_params']:>12,}{1 / row['wm_update_s']:>10.2f}"
              f"{row['wm_update_s'] / base['wm_update_s']:>8.2f}{1 / row['policy_update_s']:>14.2f}"
              f"{row['policy_update_s'] / base['policy_update_s']:>8.2f}{row['wm_tensor_mb']:>11.0f}"
              f"{row['wm_tensor_mb'] / base['wm_tensor_mb']:>8.2f}{row['wm_update_mb']:>11.0f}"
              f"{row['wm_update_mb'] / base['wm_update_mb']:>8.2f}{row['peak_mb']:>10.0f}"
              f"{row['peak_mb'] / base['peak_mb']:>8.2f}")
    print("\n'x base' columns: time (or memory) relative to the baseline; > 1 means the flow variant costs more. "
          "flow-rc: recompute_substeps=true (sub-steps recomputed in backward). "
          "*-c: compile_wm_loss=true (torch.compile of the world-model loss). *-m: matmul_precision=medium "
          "(float32 matmuls in bfloat16; the matmul rate below is then bfloat16's). tensor MB: peak live tensors of "
          "one WM update; WM upd MB: the process's peak growth over the updates (RSS on CPU: allocator caching "
          "included).")
    for row in rows:
        if row["variant"].endswith("-c"):
            eager = next(r for r in rows if r["variant"] == row["variant"].replace("-c", "").replace("base", "baseline")
                         and r["K"] == row["K"])
            print(f"{row['variant']} K={row['K']}: compiled WM update {row['wm_update_s'] / eager['wm_update_s']:.2f}x "
                  f"the eager one; first (compiling) update {row['wm_first_update_s']:.0f} s")
        if row["variant"].endswith("-m"):
            exact = next((r for r in rows if r["variant"] == row["variant"].replace("-m", "").replace("base", "baseline")
                          and r["K"] == row["K"]), None)
            if exact is None:  # a K measured at medium precision only
                continue
            print(f"{row['variant']} K={row['K']}: WM update at matmul_precision=medium "
                  f"{row['wm_update_s'] / exact['wm_update_s']:.2f}x the float32 one, policy update "
                  f"{row['policy_update_s'] / exact['policy_update_s']:.2f}x")
    for row in rows:
        print(f"{row['variant']} K={row['K']}: {row['wm_gflop']:.1f} GFLOP per world-model update, "
              f"{row['wm_gflops']:.0f} GFLOP/s = {row['wm_gflops'] / row['matmul_gflops']:.2f} of this machine's "
              f"matmul rate on the same shapes ({row['matmul_gflops']:.0f} GFLOP/s)")
    for row in rows:
        print(f"ESNR ({cli.esnr_splits} splits on every {row['esnr_every']}th actor update), {row['variant']} K={row['K']}: "
              f"+{100 * row['esnr_overhead']:.1f}% per actor+critic update on average")
    if cli.out:
        cli.out.write_text(json.dumps({"args": args, "alg": cli.alg, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
