"""Paired before/after timing of the world-model update: this checkout against an earlier commit.

    python benchmarks/bench_speedup.py                                # vs 4b47d51, pwm_5M and pwm_48M, baseline
    python benchmarks/bench_speedup.py --before 4b47d51 --alg pwm_5M --variant flow --rounds 5

The earlier commit is checked out into a temporary git worktree. Every measurement runs in a fresh
process whose ``PYTHONPATH`` points at one source tree (with that tree's own configs), and the two
trees alternate round by round, so a load change on the machine hits both about equally. Printed:
the median seconds per update of each tree and the median (min-max) of the per-round ratios
after / before; below 1 means this checkout is faster. The default ``--before`` is the commit on
which issue 11 measured 0.336 s per baseline update at 5M.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Uses only what every version of the package has had: build_pwm and update_world_model.
MEASURE = r"""
import json, sys, time
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pwm.algorithms.build import build_pwm
args = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(args["threads"])
with initialize_config_dir(config_dir=args["cfg_dir"], version_base="1.3"):
    alg = compose(config_name="alg/" + args["alg"]).alg
alg = OmegaConf.create(OmegaConf.to_container(alg))
alg.horizon = args["horizon"]
agent = build_pwm(alg, args["obs_dim"], args["act_dim"], device="cpu")
obs = torch.randn(args["horizon"] + 1, args["batch"], args["obs_dim"])
action = torch.rand(args["horizon"], args["batch"], args["act_dim"]) * 2 - 1
reward = torch.randn(args["horizon"], args["batch"])
agent.update_world_model(obs, action, reward)  # warm-up: allocator, optimizer state
start = time.perf_counter()
for _ in range(args["repeats"]):
    agent.update_world_model(obs, action, reward)
print(json.dumps({"wm_update_s": (time.perf_counter() - start) / args["repeats"]}))
"""


def measure(tree: Path, args: dict) -> float:
    """Seconds per world-model update with the package and configs of source tree ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    payload = json.dumps({**args, "cfg_dir": str(tree / "scripts" / "cfg")})
    result = subprocess.run([sys.executable, "-c", MEASURE, payload], env=env, cwd=tree,
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"measuring {args['alg']} in {tree} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["wm_update_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="4b47d51", help="the earlier commit to compare against")
    parser.add_argument("--alg", nargs="+", default=["pwm_5M", "pwm_48M"], help="baseline alg configs")
    parser.add_argument("--variant", choices=["baseline", "flow"], default="baseline",
                        help="flow: time each alg's _flow twin instead")
    parser.add_argument("--rounds", type=int, default=3, help="alternating before/after measurements")
    parser.add_argument("--repeats", type=int, default=5, help="timed updates per measurement")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--obs-dim", type=int, default=24)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    cli = parser.parse_args()
    if cli.rounds < 1 or cli.repeats < 1:
        parser.error("--rounds and --repeats must be >= 1")

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="pwm-before-") as tmp:
        before_tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(before_tree), cli.before],
                       cwd=REPO, check=True)
        try:
            print(f"world-model update, {cli.variant}, batch {cli.batch}, H {cli.horizon}, {cli.threads} threads, "
                  f"{cli.repeats} updates x {cli.rounds} alternating rounds; before = {cli.before}, after = {commit}"
                  " (working tree)\n")
            print(f"{'alg':<10}{'before s':>10}{'after s':>10}{'after/before':>14}{'  (min-max over rounds)':<24}")
            for alg in cli.alg:
                name = f"{alg}_flow" if cli.variant == "flow" else alg
                args = {"alg": name, "batch": cli.batch, "horizon": cli.horizon, "obs_dim": cli.obs_dim,
                        "act_dim": cli.act_dim, "repeats": cli.repeats, "threads": cli.threads}
                before, after = [], []
                for _ in range(cli.rounds):
                    before.append(measure(before_tree, args))
                    after.append(measure(REPO, args))
                ratios = [a / b for a, b in zip(after, before)]
                print(f"{name:<10}{statistics.median(before):>10.3f}{statistics.median(after):>10.3f}"
                      f"{statistics.median(ratios):>14.2f}  ({min(ratios):.2f}-{max(ratios):.2f})", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=REPO, check=False)


if __name__ == "__main__":
    main()
