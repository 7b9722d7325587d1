"""The learning benchmark's bookkeeping: fresh runs merge into the committed results run by run."""

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def learning():
    return load_benchmark("learning")


def _write_run(root: Path, task: str, variant: str, seed: int, rewards: list[float], elapsed_s=None,
               commits=()):
    run_dir = root / task / variant / f"seed{seed}"
    run_dir.mkdir(parents=True)
    steps = [5000 * (i + 1) for i in range(len(rewards))]
    pd.DataFrame({"train/env_steps": steps, "eval/episode_reward": rewards}).to_csv(run_dir / "metrics.csv",
                                                                                     index=False)
    if elapsed_s is not None:
        (run_dir / "summary.json").write_text(json.dumps({"elapsed_s": elapsed_s}))
    if commits:
        (run_dir / "commits.txt").write_text("".join(f"{c}\n" for c in commits))


def test_a_fresh_run_replaces_its_committed_rows_and_the_others_stay(learning, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    # committed: cup-catch baseline (2 evaluations) and an unfinished cup-catch sac run (1 evaluation)
    pd.DataFrame({"task": ["cup-catch"] * 3, "variant": ["baseline", "baseline", "sac"], "seed": [0, 0, 0],
                  "env_steps": [5000, 10000, 5000], "eval_reward": [10.0, 20.0, 1.0],
                  "tdmpc2_reward_at_same_steps": [5.0, 6.0, 5.0]}).to_csv(out / "learning.csv", index=False)
    pd.DataFrame({"task": ["cup-catch", "cup-catch"], "variant": ["baseline", "sac"], "seed": [0, 0],
                  "minutes": [33.0, None], "commit": ["aaa", "bbb"]}).to_csv(out / "learning_runs.csv", index=False)
    # the sac run is finished now, resumed on another commit
    _write_run(runs, "cup-catch", "sac", 0, [100.0, 500.0, 900.0], elapsed_s=1800.0, commits=("bbb", "ccc", "ccc"))
    args = argparse.Namespace(runs_dir=str(runs))

    curves = learning.merge_with_committed(learning.collect_results(args), out / "learning.csv")
    assert list(curves.columns) == learning.CURVE_COLUMNS
    sac = curves[curves.variant == "sac"]
    assert sac.eval_reward.tolist() == [100.0, 500.0, 900.0] and sac.env_steps.tolist() == [5000, 10000, 15000]
    assert curves[curves.variant == "baseline"].eval_reward.tolist() == [10.0, 20.0]

    table = learning.merge_with_committed(learning.collect_runs(args), out / "learning_runs.csv")
    by_variant = table.set_index("variant")
    assert by_variant.loc["sac", "minutes"] == 30.0 and by_variant.loc["sac", "commit"] == "bbb+ccc"
    assert by_variant.loc["baseline", "minutes"] == 33.0 and by_variant.loc["baseline", "commit"] == "aaa"


def test_a_run_that_has_not_evaluated_yet_adds_no_rows_and_breaks_nothing(learning, tmp_path):
    _write_run(tmp_path, "reacher-easy", "flow", 0, [3.0, 4.0])
    starting = tmp_path / "reacher-easy" / "flow" / "seed1"
    starting.mkdir()
    pd.DataFrame({"train/env_steps": [500], "wm/total_loss": [1.0]}).to_csv(starting / "metrics.csv", index=False)
    curves = learning.collect_results(argparse.Namespace(runs_dir=str(tmp_path)))
    assert curves.seed.tolist() == [0, 0] and curves.eval_reward.tolist() == [3.0, 4.0]


def test_an_unfinished_run_has_no_minutes_and_an_unknown_commit(learning, tmp_path):
    _write_run(tmp_path, "reacher-easy", "flow", 1, [3.0])
    table = learning.collect_runs(argparse.Namespace(runs_dir=str(tmp_path)))
    assert table.seed.tolist() == [1] and table.minutes.isna().all() and table.commit.tolist() == ["unknown"]


def test_a_committed_file_of_another_format_is_an_error_naming_the_columns(learning, tmp_path):
    (tmp_path / "learning.csv").write_text("task,variant,seed,env_steps\ncup-catch,sac,0,5000\n")
    fresh = pd.DataFrame(columns=learning.CURVE_COLUMNS)
    with pytest.raises(ValueError, match=r"learning.csv lacks the columns \['eval_reward', 'tdmpc2_reward"):
        learning.merge_with_committed(fresh, tmp_path / "learning.csv")


def test_a_variant_runs_its_alg_with_its_own_overrides_and_they_compose(learning, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        return argparse.Namespace(returncode=0)

    monkeypatch.setattr(learning.subprocess, "run", fake_run)
    args = argparse.Namespace(runs_dir=str(tmp_path), steps=10_000, eval_every=5_000, eval_episodes=2,
                              alg="pwm_small", override=["alg.horizon=10"])
    learning.run_pwm(args, "cup-catch", "flow", 0)
    learning.run_pwm(args, "cup-catch", "flow-simplex-detached", 0)
    spec_overrides = [a for a in commands[0] if "=" in a and not a.startswith("/")]
    knob_overrides = [a for a in commands[1] if "=" in a and not a.startswith("/")]
    assert "alg=pwm_small_flow" in spec_overrides and "alg=pwm_small_flow" in knob_overrides
    assert "seed=0" in knob_overrides and knob_overrides[-1] == "alg.horizon=10"  # the user's overrides win
    with initialize_config_dir(config_dir=str(learning.REPO / "scripts" / "cfg"), version_base="1.3"):
        spec = compose("config", overrides=[a for a in spec_overrides if a.startswith(("alg", "env"))]).alg
        knobs = compose("config", overrides=[a for a in knob_overrides if a.startswith(("alg", "env"))]).alg
    assert spec.world_model_config.latent_projection == "none" and not spec.world_model_config.detach_velocity_target
    assert knobs.world_model_config.latent_projection == "simplex" and knobs.world_model_config.detach_velocity_target
    assert knobs.horizon == 10


def test_the_table_names_the_overrides_and_the_variant_knobs_and_judges_the_target(learning, tmp_path):
    _write_run(tmp_path, "reacher-easy", "baseline", 0, [100.0] * 18 + [650.0, 750.0], elapsed_s=600.0)
    _write_run(tmp_path, "reacher-easy", "flow-simplex-detached", 0, [50.0] * 20, elapsed_s=1200.0)
    args = argparse.Namespace(runs_dir=str(tmp_path), steps=100_000, eval_every=5_000, eval_episodes=10,
                              alg="pwm_small", out=str(tmp_path / "out"), override=["train.updates_per_iteration=150"])
    text = learning.render_markdown(args, learning.collect_results(args), learning.collect_runs(args), "cmd", "abc")
    assert "Every PWM run also had the overrides `train.updates_per_iteration=150`." in text
    assert "`alg.world_model_config.latent_projection=simplex` `alg.world_model_config.detach_velocity_target=true`" in text
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| reacher-easy |")}
    assert set(rows) == {"baseline", "flow-simplex-detached"}
    assert "| 700 ± 0 |" in rows["baseline"] and "700: met" in rows["baseline"]  # mean of the last two: 650, 750
    assert "| 50 ± 0 |" in rows["flow-simplex-detached"] and "met" not in rows["flow-simplex-detached"]


def composed_alg(learning, command):
    """The ``alg`` config a ``train_singletask.py`` command line of ``run_pwm`` composes."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(learning.REPO / "scripts" / "cfg"), version_base="1.3"):
        return compose("config", overrides=[a for a in command if a.startswith(("alg", "env", "+"))]).alg


@pytest.mark.parametrize("variant, twin", [("baseline-entropy", "baseline-pwm"), ("flow-entropy", "flow-pwm"),
                                           ("flow-simplex-detached-entropy", "flow-simplex-detached")])
def test_an_entropy_variant_is_its_twin_plus_the_entropy_bonus(learning, tmp_path, monkeypatch, variant, twin):
    commands = []
    monkeypatch.setattr(learning.subprocess, "run",
                        lambda command, **kwargs: commands.append(command) or argparse.Namespace(returncode=0))
    args = argparse.Namespace(runs_dir=str(tmp_path), steps=10_000, eval_every=5_000, eval_episodes=2,
                              alg="pwm_small", override=[])
    learning.run_pwm(args, "cup-catch", twin, 0)
    learning.run_pwm(args, "cup-catch", variant, 0)
    plain, bonus = (composed_alg(learning, command) for command in commands)
    assert plain.actor_entropy_coef == 0.0 and bonus.actor_entropy_coef == 0.01
    bonus.actor_entropy_coef = 0.0
    assert bonus == plain  # nothing else differs
    runs = tmp_path / "finished"
    _write_run(runs, "cup-catch", variant, 0, [50.0] * 20, elapsed_s=600.0)
    args = argparse.Namespace(runs_dir=str(runs), steps=100_000, eval_every=5_000, eval_episodes=10,
                              alg="pwm_small", out=str(tmp_path / "out"), override=[])
    text = learning.render_markdown(args, learning.collect_results(args), learning.collect_runs(args), "cmd", "abc")
    alg = "pwm_small_flow" if twin.startswith("flow") else "pwm_small"
    described = next(line for line in text.splitlines() if line.startswith(f"`{variant}`:"))
    assert described.startswith(f"`{variant}`: `alg={alg}` with ") and "`alg.actor_entropy_coef=0.01` (" in described


def test_pwm_runs_are_started_to_die_with_their_worker(learning, tmp_path, monkeypatch):
    kwargs_seen = []
    monkeypatch.setattr(learning.subprocess, "run",
                        lambda command, **kwargs: kwargs_seen.append(kwargs) or argparse.Namespace(returncode=0))
    args = argparse.Namespace(runs_dir=str(tmp_path), steps=10_000, eval_every=5_000, eval_episodes=2,
                              alg="pwm_small", override=[])
    learning.run_pwm(args, "cup-catch", "baseline", 0)
    assert kwargs_seen[0]["preexec_fn"] is learning.die_with_parent


def _is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has stopped running; reaping it is its new parent's business


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killing_the_benchmark_stops_the_runs_its_workers_started(tmp_path):
    """The benchmark's process tree (main -> pool worker -> training run), with a sleeping run: SIGKILL
    on main, the one signal it cannot handle, must still take the run down."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "run.pid"
    benchmark = f"""
import subprocess, sys, time
from concurrent.futures import ProcessPoolExecutor
from pwm.utils.common import die_with_parent

def job():
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=die_with_parent)
    open({str(pid_file)!r}, "w").write(str(run.pid))
    run.wait()

if __name__ == "__main__":
    with ProcessPoolExecutor(1, initializer=die_with_parent) as pool:
        pool.submit(job).result()
"""
    main = subprocess.Popen([sys.executable, "-c", benchmark])
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        run_pid = int(pid_file.read_text())
        assert not _is_gone(run_pid)
        os.kill(main.pid, signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 20
        while not _is_gone(run_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _is_gone(run_pid), "the training run outlived the benchmark that started it"
    finally:
        main.kill()
        if pid_file.exists() and pid_file.read_text() and not _is_gone(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_baseline_and_flow_are_the_defaults_and_every_other_variant_keeps_its_days_defaults(learning, tmp_path, monkeypatch):
    """Each older variant's committed results were run under the defaults of its day (PWM's objective, or the
    entropy weight fixed at 0.1); its name must keep meaning that, whatever the defaults are now."""
    commands = []
    monkeypatch.setattr(learning.subprocess, "run",
                        lambda command, **kwargs: commands.append(command) or argparse.Namespace(returncode=0))
    args = argparse.Namespace(runs_dir=str(tmp_path), steps=10_000, eval_every=5_000, eval_episodes=2,
                              alg="pwm_small", override=[])
    composed = {}
    for variant in ("baseline", "baseline-fixed-alpha", "baseline-pwm", "baseline-normalized-entropy"):
        learning.run_pwm(args, "cup-catch", variant, 0)
        composed[variant] = alg = composed_alg(learning, commands[-1])
        settings = (alg.actor_entropy_coef, alg.actor_entropy_target, alg.critic_data_coef,
                    alg.world_model_config.normalize_dynamics_loss)
        assert settings == {"baseline": (0.1, -0.5, 0.1, True), "baseline-fixed-alpha": (0.1, None, 0.1, True),
                            "baseline-pwm": (0.0, None, 0.0, False),
                            "baseline-normalized-entropy": (0.01, None, 0.0, True)}[variant]
    composed["baseline-fixed-alpha"].actor_entropy_target = -0.5
    assert composed["baseline-fixed-alpha"] == composed["baseline"]  # nothing else differs
    for variant in ("flow", "flow-simplex"):
        learning.run_pwm(args, "cup-catch", variant, 0)
        composed[variant] = composed_alg(learning, commands[-1])
    assert composed["flow-simplex"].world_model_config.latent_projection == "simplex"
    composed["flow-simplex"].world_model_config.latent_projection = "none"
    assert composed["flow-simplex"] == composed["flow"]  # today's flow with the projection, nothing else
    for variant, twin in (("baseline-h5", "baseline"), ("flow-h5", "flow")):
        learning.run_pwm(args, "cup-catch", variant, 0)
        short = composed_alg(learning, commands[-1])
        assert short.horizon == 5 and composed[twin].horizon == 16
        short.horizon = 16
        assert short == composed[twin]  # today's defaults with the short horizon, nothing else
    for variant, twin, horizon in (("baseline-h5-updates150", "baseline", 5), ("flow-h5-updates150", "flow", 5),
                                   ("baseline-updates150", "baseline", 16)):
        learning.run_pwm(args, "cup-catch", variant, 0)
        assert "train.updates_per_iteration=150" in commands[-1]
        more_updates = composed_alg(learning, commands[-1])
        assert more_updates.horizon == horizon
        more_updates.horizon = 16
        assert more_updates == composed[twin]  # the twin's alg (and H=5); the updates are a train setting
    for variant, twin, horizon in (("baseline-motion", "baseline", 16), ("flow-motion", "flow", 16),
                                   ("baseline-h5-motion", "baseline", 5), ("flow-h5-motion", "flow", 5)):
        learning.run_pwm(args, "cup-catch", variant, 0)
        motion = composed_alg(learning, commands[-1])
        assert motion.world_model_config.dynamics_loss_normalizer == "motion" and motion.horizon == horizon
        assert composed[twin].world_model_config.dynamics_loss_normalizer == "variance"
        motion.world_model_config.dynamics_loss_normalizer, motion.horizon = "variance", 16
        assert motion == composed[twin]  # today's defaults with the motion divisor (and H=5), nothing else
    # flow knob -> (the variant's value, the defaults' value)
    endpoint_knobs = {"endpoint_loss_coef": (1.0, 0.0), "detach_velocity_target": (True, False)}
    field_only_knobs = {"detach_flow_matching_latents": (True, False)}
    for variant, horizon, knobs in (("flow-endpoint-detached", 16, endpoint_knobs),
                                    ("flow-h5-endpoint-detached", 5, endpoint_knobs),
                                    ("flow-h5-endpoint-detached-updates150", 5, endpoint_knobs),
                                    ("flow-fieldonly", 16, field_only_knobs),
                                    ("flow-h5-fieldonly-updates150", 5, field_only_knobs)):
        learning.run_pwm(args, "cup-catch", variant, 0)
        assert ("train.updates_per_iteration=150" in commands[-1]) == variant.endswith("-updates150")
        knobbed = composed_alg(learning, commands[-1])
        assert knobbed.horizon == horizon
        for key, (value, default) in knobs.items():
            assert knobbed.world_model_config[key] == value and composed["flow"].world_model_config[key] == default
            knobbed.world_model_config[key] = default
        knobbed.horizon = 16
        assert knobbed == composed["flow"]  # today's flow with the variant's knobs (and H=5), nothing else
    todays_defaults = {"baseline-fixed-alpha", "flow-fixed-alpha", "flow-simplex", "baseline-h5", "flow-h5",
                       "baseline-h5-updates150", "baseline-motion", "flow-motion", "baseline-h5-motion",
                       "flow-h5-motion", "flow-h5-updates150", "flow-h5-endpoint-detached",
                       "flow-endpoint-detached", "baseline-updates150", "flow-h5-endpoint-detached-updates150",
                       "flow-fieldonly", "flow-h5-fieldonly-updates150"}
    assert all(learning.PWM_OBJECTIVE in variant.overrides for name, variant in learning.PWM_VARIANTS.items()
               if name not in todays_defaults | {"baseline", "flow"})
    assert {name for name, variant in learning.PWM_VARIANTS.items() if not variant.overrides} == {"baseline", "flow"}
    assert all(variant.note for variant in learning.PWM_VARIANTS.values() if variant.overrides)
    assert all(name.startswith(variant.dynamics) for name, variant in learning.PWM_VARIANTS.items())
    colors = [variant.color for variant in learning.PWM_VARIANTS.values()] + [learning.SAC_COLOR]
    assert len(set(colors)) == len(colors)  # every curve of learning.png tells its agent apart
    with pytest.raises(ValueError, match="Variant.dynamics must be 'baseline' or 'flow', got 'flwo'"):
        learning.Variant("flwo")
