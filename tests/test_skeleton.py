"""The loop skeleton: schedule, log averaging, stop requests, checkpoints and resuming a finished run."""

import pytest
import torch

from pwm.training.skeleton import BestWeights, Schedule, TrainingLoop
from pwm.utils.common import load_checkpoint


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def run(tmp_path, iterations=10, stop_at=None, resume=True, log_every=1):
    counter, calls = Counter(), {"eval": [], "finish": 0}
    loop = TrainingLoop(tmp_path, Schedule(iterations, eval_every=4, checkpoint_every=3, log_every=log_every),
                        seed=0, parts={"counter": counter}, static={"meta": {"a": 1}}, resume=resume)

    def step(i):
        with loop.clock():
            counter.value += 1
        if i == stop_at:
            loop.request_stop()
        return {"loss": float(i)}

    def evaluate(i):
        calls["eval"].append(i)
        return {"eval/score": 10.0 * i}

    def finish():
        calls["finish"] += 1

    loop.run(step, evaluate, on_finish=finish)
    return loop, counter, calls


def test_evaluates_when_due_and_at_the_last_iteration(tmp_path):
    loop, counter, calls = run(tmp_path)
    assert calls["eval"] == [3, 7, 9]
    assert counter.value == 10 and loop.progress.iteration == 10 and loop.finished
    assert calls["finish"] == 1
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["finished"] and state["counter"] == {"value": 10} and state["meta"] == {"a": 1}
    assert loop.progress.train_elapsed_s <= loop.progress.elapsed_s


def test_log_rows_average_the_steps_since_the_last_row(tmp_path):
    loop, _, _ = run(tmp_path, log_every=2)
    rows = {r["iteration"]: r for r in loop.rows}
    assert sorted(rows) == [1, 3, 5, 7, 9]  # every 2nd iteration; evaluations (3, 7, 9) fall on them
    assert rows[1]["loss"] == pytest.approx(0.5)  # mean of steps 0 and 1
    assert rows[3]["loss"] == pytest.approx(2.5) and rows[3]["eval/score"] == 30.0
    assert "eval/score" not in rows[5]


def test_a_stop_request_evaluates_checkpoints_and_ends(tmp_path):
    loop, counter, calls = run(tmp_path, stop_at=5)
    assert calls["eval"] == [3, 5] and calls["finish"] == 1
    assert counter.value == 6 and load_checkpoint(tmp_path / "checkpoint.pt")["counter"] == {"value": 6}


def test_a_finished_run_resumes_to_nothing_and_an_unfinished_one_continues(tmp_path):
    run(tmp_path / "done", stop_at=5)
    loop, counter, calls = run(tmp_path / "done", stop_at=None)
    assert counter.value == 6 and calls["eval"] == [] and calls["finish"] == 0  # restored, nothing more run
    assert len(loop.rows) == 6  # the rows of the first run are kept for the summary

    run(tmp_path / "fresh", stop_at=5)
    loop, counter, _ = run(tmp_path / "fresh", resume=False)
    assert counter.value == 10 and loop.progress.iteration == 10

    loop, counter, calls = run(tmp_path / "fresh", iterations=12)  # reached its count, asked for more: continues
    assert counter.value == 12 and calls["eval"] == [11] and not loop.stop_requested


def test_resume_restores_the_sampler_and_global_rng(tmp_path):
    loop = TrainingLoop(tmp_path, Schedule(3, 10, 1), seed=7, parts={})
    loop.run(lambda i: {"x": float(torch.rand(1, generator=loop.generator))} if i < 2 else loop.request_stop() or {})
    expected_sampler, expected_global = torch.rand(4, generator=loop.generator), torch.rand(4)
    again = TrainingLoop(tmp_path, Schedule(5, 10, 1), seed=7, parts={})
    assert torch.equal(torch.rand(4, generator=again.generator), expected_sampler)
    assert torch.equal(torch.rand(4), expected_global)


def test_a_checkpoint_of_another_model_is_a_named_error(tmp_path):
    module = torch.nn.Linear(3, 2)
    loop = TrainingLoop(tmp_path, Schedule(1, 1, 1), seed=0, parts={"model": module})
    loop.run(lambda i: {})
    with pytest.raises(ValueError, match=r"checkpoint.pt does not fit this run's model \(its 'model'.*resume=false"):
        TrainingLoop(tmp_path, Schedule(1, 1, 1), seed=0, parts={"model": torch.nn.Linear(4, 2)})


def test_best_weights_round_trip():
    module, best = torch.nn.Linear(2, 2), BestWeights()
    best.restore(module)  # nothing kept yet: no change, no error
    best.keep(module)
    kept = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.add_(1.0)
    other = BestWeights()
    other.load_state_dict(best.state_dict())
    other.restore(module)
    assert torch.equal(module.weight, kept)


def test_settings_read_a_config_section_and_name_a_bad_key():
    from omegaconf import OmegaConf

    from pwm.training.settings import OfflineSettings, PretrainSettings
    from pwm.training.video import VideoConfig

    section = OmegaConf.create({"iterations": 10, "eval_every": 5, "checkpoint_every": 5, "time_budget_s": 30,
                                "video": {"episodes": 1}, "finetune_lr_scale": 0.1})  # extra keys are ignored
    settings = OfflineSettings.from_cfg(section)
    assert settings.iterations == 10 and settings.time_budget_s == 30.0 and isinstance(settings.time_budget_s, float)
    assert settings.video == VideoConfig(episodes=1) and settings.eval_episodes == 5  # a default
    assert OfflineSettings.from_cfg(settings) is settings
    with pytest.raises(ValueError, match=r"train\.eval_every must be >= 1, got 0"):
        OfflineSettings.from_cfg({**section, "eval_every": 0})
    with pytest.raises(ValueError, match=r"train\.iterations must be int, got '10'"):
        OfflineSettings.from_cfg({**section, "iterations": "10"})
    with pytest.raises(ValueError, match=r"train\.resume must be bool, got 1"):
        OfflineSettings.from_cfg({**section, "resume": 1})
    with pytest.raises(ValueError, match=r"pretrain\.checkpoint_every is missing"):
        PretrainSettings.from_cfg({"iterations": 1, "eval_every": 1}, "pretrain")
    with pytest.raises(ValueError, match=r"pretrain\.min_improvement must be >= 0, got -0.1"):
        PretrainSettings.from_cfg({"iterations": 1, "eval_every": 1, "checkpoint_every": 1, "min_improvement": -0.1},
                                  "pretrain")


def test_every_entry_point_config_gives_valid_settings():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from pwm.training.settings import OfflineSettings, OnlineSettings, PretrainSettings

    config_dir = str(Path(__file__).resolve().parent.parent / "scripts" / "cfg")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        online, mt30 = compose("config").train, compose("config_mt30").train
        pretrain, ab = compose("pretrain").pretrain, compose("ab")
    assert OnlineSettings.from_cfg(online).updates_per_iteration == online.updates_per_iteration
    assert OfflineSettings.from_cfg(mt30).iterations == mt30.iterations
    assert PretrainSettings.from_cfg(pretrain, "pretrain").min_iterations == pretrain.min_iterations
    assert OfflineSettings.from_cfg(ab.train).time_budget_s is None
    assert PretrainSettings.from_cfg(ab.pretrain, "pretrain").window == ab.pretrain.window


def test_git_commit_names_the_checkout_and_marks_uncommitted_changes(tmp_path):
    import subprocess

    from pwm.utils.common import git_commit

    assert git_commit(tmp_path) is None  # not a checkout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("2")
    assert git_commit(tmp_path) == f"{head}+dirty"


def test_a_figure_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """atomic_savefig: a PNG of the figure; a save that fails leaves the previous file and no temp file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pwm.utils.common import atomic_savefig

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = atomic_savefig(fig, tmp_path / "curve.png", dpi=50)
    before = path.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"

    def fails_halfway(handle, **kwargs):
        handle.write(before[:100])
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", fails_halfway)
    with pytest.raises(OSError, match="disk full"):
        atomic_savefig(fig, path, dpi=50)
    plt.close(fig)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["curve.png"]
