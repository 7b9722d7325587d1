"""End-to-end runs of every script with tiny models (real simulators, real files)."""

import csv
import json
import math
import shutil
import socket
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import run_script
from pwm.data.tdmpc2_format import load_dataset, read_chunk
from pwm.experiments.crosscheck import crosscheck as cross_table
from pwm.experiments.crosscheck import main as crosscheck
from pwm.experiments.crosscheck import policy_episodes
from pwm.experiments.probe import main as probe
from pwm.training.evaluation import episode_diagnostics, load_agent

pytestmark = pytest.mark.slow
TINY_PRETRAIN = ("pretrain.iterations=6", "pretrain.log_every=3", "pretrain.checkpoint_every=3",
                 "pretrain.tensorboard=false")
TINY_EXTRACT = ("train.iterations=4", "train.eval_every=2", "train.eval_episodes=1", "train.checkpoint_every=2")


def test_collected_data_is_tdmpc2_format(mt30_data):
    files = sorted(mt30_data.glob("*.pt"))
    assert len(files) == 4
    chunk = read_chunk(files[0], num_tasks=30)
    assert chunk["obs"].shape == (1, 501, 24) and chunk["action"].shape == (1, 501, 6)  # padded to MT30's widest
    assert torch.isnan(chunk["action"][:, 0]).all() and torch.isnan(chunk["reward"][:, 0]).all()
    buffer = load_dataset(mt30_data, horizon=16, num_tasks=30)
    assert set(buffer.task[: len(buffer)].unique().tolist()) == {7, 12}  # pendulum-swingup, cup-catch in MT30 order


@pytest.mark.parametrize("alg", ["pwm_tiny", "pwm_tiny_flow"])
def test_pretrain_then_train_multitask_section14_command(mt30_data, tmp_path, alg):
    pre_dir = tmp_path / "pre"
    run_script("pretrain_world_model.py", f"alg={alg}", "task_set=mt30", f"general.data_dir={mt30_data}",
               f"general.run_dir={pre_dir}", *TINY_PRETRAIN)
    checkpoint = pre_dir / "checkpoint.pt"
    meta = torch.load(checkpoint, weights_only=False)["meta"]
    assert meta["tasks"][12] == "cup-catch" and meta["action_dims"][12] == 2 and meta["obs_dim"] == 24
    results = tmp_path / "results.csv"
    # the spec's command, with tiny-run overrides appended
    run_script("train_multitask.py", "-cn", "config_mt30", f"alg={alg}", "task=cup-catch",
               f"general.data_dir={mt30_data}", f"general.checkpoint={checkpoint}",
               f"general.run_dir={tmp_path / 'extract'}", f"general.results_csv={results}", *TINY_EXTRACT)
    rows = list(csv.DictReader(open(results)))
    assert rows[0]["task"] == "cup-catch" and rows[0]["variant"] == ("flow" if "flow" in alg else "baseline")
    summary = json.loads((tmp_path / "extract" / "summary.json").read_text())
    assert summary["iterations"] == 4 and summary["final_reward"] == float(rows[0]["final_reward"])
    # evaluate.py rebuilds the multi-task agent from the checkpoint alone: on the training's evaluation
    # seed it replays the last evaluation exactly
    run_script("evaluate.py", f"checkpoint={tmp_path}", "task_set=mt30", "episodes=1", "threads=1",
               f"out_dir={tmp_path / 'eval'}")
    table = list(csv.DictReader(open(tmp_path / "eval" / "evaluation.csv")))
    evaluated = [r for r in table if r["variant"] != "missing"]
    assert [(r["task"], r["variant"]) for r in evaluated] == [("cup-catch", rows[0]["variant"])]
    assert float(evaluated[0]["reward"]) == pytest.approx(summary["final_reward"], rel=1e-6)
    assert float(evaluated[0]["score"]) == pytest.approx(summary["final_reward"] / 10, rel=1e-6)
    assert float(evaluated[0]["pwm_published"]) == pytest.approx(471.6)  # PWM's released MT30 cup-catch
    assert len(table) == 30 and "cheetah-run" in {r["task"] for r in table if r["variant"] == "missing"}


def test_train_multitask_rejects_mismatched_checkpoint_and_unavailable_task(mt30_data, tmp_path):
    run_script("pretrain_world_model.py", "alg=pwm_tiny", f"general.data_dir={mt30_data}",
               f"general.run_dir={tmp_path / 'pre'}", *TINY_PRETRAIN)

    def extract(config, alg, task):
        return run_script("train_multitask.py", "-cn", config, f"alg={alg}", f"task={task}",
                          f"general.data_dir={mt30_data}", f"general.checkpoint={tmp_path / 'pre' / 'checkpoint.pt'}",
                          f"general.run_dir={tmp_path / 'x'}", f"general.results_csv={tmp_path / 'r.csv'}",
                          *TINY_EXTRACT, check=False)

    result = extract("config_mt30", "pwm_tiny_flow", "cup-catch")
    assert result.returncode != 0
    assert "world model is pwm.models.world_model.WorldModel" in result.stderr and "FlowWorldModel" in result.stderr
    result = extract("config_mt30", "pwm_tiny", "walker-fly")
    assert result.returncode != 0 and "'walker-fly' is not in task set 'mt30'" in result.stderr
    result = extract("config_mt80", "pwm_tiny", "cup-catch")
    assert result.returncode != 0 and "task set 'mt30'" in result.stderr
    assert not (tmp_path / "r.csv").exists()


def test_pretrain_with_torchrun_gloo(mt30_data, tmp_path):
    """Two processes on different batches: the run ends only if both ranks hold identical weights
    (run_pretrain compares them; without gradient averaging it raises)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_script("pretrain_world_model.py", "alg=pwm_tiny_flow", f"general.data_dir={mt30_data}",
               f"general.run_dir={tmp_path}", *TINY_PRETRAIN,
               launcher=(torchrun, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["progress"]["iteration"] == 6


def test_train_singletask_runs_and_resumes(tmp_path, capsys):
    args = ("env=pendulum-swingup", "alg=pwm_tiny_flow", f"general.run_dir={tmp_path}", "train.seed_episodes=1",
            "train.updates_per_iteration=2", "train.eval_every=2", "train.eval_episodes=1",
            "train.checkpoint_every=2", "train.tensorboard=true")
    run_script("train_singletask.py", *args, "train.iterations=2")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["progress"]["iteration"] == 2 and state["buffer"]["num_episodes"] == 3
    run_script("train_singletask.py", *args, "train.iterations=4", "train.video.episodes=1",
               "train.video.width=32", "train.video.height=24")
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3]
    assert rows[1]["eval/episode_reward"] != "" and float(rows[-1]["train/env_steps"]) == 5 * 500
    assert math.isfinite(float(rows[1]["critic_eval/value_bias"]))  # the critic scored on the evaluation episodes
    assert math.isfinite(float(rows[1]["wm_eval/imagined_policy_gap"]))  # the policy acting in its imagination
    assert list((tmp_path / "tensorboard").glob("events.*"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["variant"] == "flow"
    # the evaluation after the resume recorded its first episode: 501 states at 32x24
    video = Image.open(tmp_path / "videos" / "eval_0000003_ep0.gif")
    assert video.size == (32, 24) and 1 < video.n_frames <= 501
    run_script("evaluate.py", f"checkpoint={tmp_path / 'checkpoint.pt'}", "episodes=1", "threads=1",
               f"out_dir={tmp_path / 'eval'}")
    (row,) = list(csv.DictReader(open(tmp_path / "eval" / "evaluation.csv")))
    assert row["task"] == "pendulum-swingup" and row["variant"] == "flow"
    assert float(row["reward"]) == pytest.approx(summary["final_reward"], rel=1e-6)
    # the model-exploitation probe replays that evaluation episode (same reset seed, same return)
    probe([str(tmp_path / "checkpoint.pt"), "--episodes", "1", "--steps", "10", "--every", "5"])
    out = capsys.readouterr().out
    assert "pendulum-swingup flow" in out and f"return {float(row['reward']):.1f}, saturated actions " in out
    assert "imagined policy" in out and len([line for line in out.splitlines() if line.strip().startswith("5 ")]) == 1
    # the trained policy collects a dataset (policy=checkpoint)
    run_script("collect_data.py", "tasks=[pendulum-swingup]", "task_set=null", "policy=checkpoint", "episodes=2",
               f"checkpoints={{pendulum-swingup:'{tmp_path / 'checkpoint.pt'}'}}", f"out_dir={tmp_path / 'data'}")
    (chunk,) = [read_chunk(path) for path in (tmp_path / "data").glob("*.pt")]
    assert chunk["obs"].shape == (2, 501, 3)
    # the world-model cross-check: one run given twice scores alike in both columns, on its policy's
    # episodes (one per run) and on the dataset's held-out episode
    checkpoint = str(tmp_path / "checkpoint.pt")
    crosscheck([checkpoint, checkpoint, "--episodes", "1", "--windows", "16", "--data", str(tmp_path / "data"),
                "--heldout-fraction", "0.5", "--out", str(tmp_path / "crosscheck.csv")])
    table = pd.read_csv(tmp_path / "crosscheck.csv")
    assert len(table) == 3 * 2 and table.episodes.iloc[-1] == "held-out data"
    columns = [table[table.model == model].drop(columns="model").reset_index(drop=True)
               for model in table.model.unique()]
    assert len(columns) == 2 and columns[0][["latent_nmse_1", "latent_nmse_H"]].notna().all().all()
    pd.testing.assert_frame_equal(*columns)
    # each column is its own model: a copy whose velocity field is pushed off scores worse in its column only
    good, pushed = load_agent(checkpoint, device="cpu"), load_agent(checkpoint, device="cpu")
    with torch.no_grad():
        pushed.agent.wm._velocity[-1].bias += 1.0
    episodes = policy_episodes(good, 1, seed=1000)
    table = cross_table({"good": good, "pushed": pushed}, {"episodes": episodes}, windows=16, seed=0).set_index("model")
    direct = episode_diagnostics(good.agent, episodes, 16, 0)["wm_eval/latent_nmse_H"]
    assert table.loc["good", "latent_nmse_H"] == pytest.approx(direct)
    assert table.loc["pushed", "latent_nmse_H"] > direct + 1.0
