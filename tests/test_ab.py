"""A/B jobs end to end, sweep presets and launcher configs."""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, run_script
from pwm.experiments.ab import check_run_model, variant_alg, variant_label

CFG = str(REPO / "scripts" / "cfg")
TINY_AB = ("pretrain.iterations=4", "pretrain.eval_every=2", "pretrain.min_iterations=0", "train.iterations=4",
           "train.eval_every=2", "train.eval_episodes=1", "data.policy=random", "data.episodes=3",
           "data.random_episodes=2", "report.bootstrap_reps=50", "alg.batch_size=16")


def compose_ab(*overrides):
    with initialize_config_dir(config_dir=CFG, version_base="1.3"):
        return compose(config_name="ab", overrides=list(overrides), return_hydra_config=True)


def test_half_budget_check_leaves_the_job_its_own_run(tmp_path):
    """A job of pretrain.half_budget_seeds also pretrains a world model for half the cap (its folder, its
    summary fields), and its own run is bit for bit the one it makes without the check."""
    from pwm.experiments.ab import run_ab_job

    def job(root, *extra):
        cfg = compose_ab("alg=pwm_tiny_flow", "setting=default", f"general.root={root}", *TINY_AB,
                         "pretrain.iterations=8", *extra)
        return run_ab_job(cfg)

    plain = job(tmp_path / "plain")
    checked = job(tmp_path / "checked", "pretrain.half_budget_seeds=[0]")
    half_dir = tmp_path / "checked" / "runs" / "cartpole-balance" / "default" / "flow-K4-uniform" / "seed0" / "pretrain_half"
    assert checked["pretrain_half_iterations"] == 4 and (half_dir / "checkpoint.pt").exists()
    assert math.isfinite(checked["pretrain_half_heldout_error_final"]) and "pretrain_half_iterations" not in plain
    for key in ("pretrain_heldout_error_final", "pretrain_heldout_error", "final_reward"):
        assert checked[key] == plain[key], key
    # the check is the job run at half the cap: a cap's job can take its check from the previous cap's run
    halved = compose_ab("alg=pwm_tiny_flow", "setting=default", f"general.root={tmp_path / 'halved'}", *TINY_AB)
    assert run_ab_job(halved)["pretrain_heldout_error_final"] == checked["pretrain_half_heldout_error_final"]
    with pytest.raises(ValueError, match="another pretraining budget"):  # the finished cap-8 run is not a cap-16 one
        job(tmp_path / "plain", "pretrain.iterations=16")
    assert job(tmp_path / "other", "pretrain.half_budget_seeds=[1]").keys() == plain.keys()
    with pytest.raises(ValueError, match="pretrain.half_budget_seeds must be a list of seeds"):
        job(tmp_path / "bad", "pretrain.half_budget_seeds=0")
    assert plain["matmul_precision"] == "highest"  # recorded; applied before anything is written
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        job(tmp_path / "bad_precision", "matmul_precision=bf16")
    assert not (tmp_path / "bad_precision").exists()


def test_a_job_records_the_commit_it_started_on(tmp_path, monkeypatch):
    """A run's summary names the checkout its process loaded, not the one the repository has moved to by the time
    pretraining ends (study jobs pretrain for hours while commits land)."""
    import pwm.experiments.ab as ab

    checkout = {"commit": "started"}
    pretrain = ab.pretrain_world_model

    def pretrain_then_commit(*args, **kwargs):
        result = pretrain(*args, **kwargs)
        checkout["commit"] = "moved"
        return result

    monkeypatch.setattr(ab, "git_commit", lambda: checkout["commit"])
    monkeypatch.setattr(ab, "pretrain_world_model", pretrain_then_commit)
    summary = ab.run_ab_job(compose_ab("alg=pwm_tiny", "setting=default", f"general.root={tmp_path}", *TINY_AB))
    assert (summary["commit"], checkout["commit"]) == ("started", "moved")
    assert summary["eval_episodes"] == 1  # TINY_AB's: a run's final reward says over how many initial states


def test_a_cap_per_variant_gives_each_variant_its_own_pretraining(tmp_path):
    """A task's cap may be {baseline: N, flow: M} (the half-budget check can split the variants at one cap):
    each variant's job pretrains for its own cap and is checked at half of it, its status counts its own cap,
    and an entry without both variants or with a bad count is refused, naming it."""
    from pwm.experiments.ab import ab_job_status, run_ab_job, with_variant_cap

    tiny = [override for override in TINY_AB if not override.startswith("pretrain.iterations=")]
    per_variant = "pretrain.iterations={baseline:4,flow:6}"
    summaries = {}
    for alg in ("pwm_tiny", "pwm_tiny_flow"):
        cfg = compose_ab(f"alg={alg}", "setting=default", f"general.root={tmp_path}", *tiny, per_variant,
                         "pretrain.half_budget_seeds=[0]")
        status = ab_job_status(cfg, rates={})
        summaries[alg] = run_ab_job(cfg)
        assert OmegaConf.is_dict(cfg.pretrain.iterations)  # the caller's config is left as it was
        assert (status.phases["pretrain"].total, status.phases["check"].total) == (
            summaries[alg]["pretrain_iterations"], summaries[alg]["pretrain_half_iterations"])
        job = json.loads((tmp_path / "runs" / "cartpole-balance" / "default" / summaries[alg]["variant"] / "seed0"
                          / "job.json").read_text())
        assert job["pretrain"]["iterations"] == summaries[alg]["pretrain_iterations"]
    assert [summaries[alg]["pretrain_iterations"] for alg in ("pwm_tiny", "pwm_tiny_flow")] == [4, 6]
    assert [summaries[alg]["pretrain_half_iterations"] for alg in ("pwm_tiny", "pwm_tiny_flow")] == [2, 3]
    # a split task of the preset whose caps are settled (the cartpole ones still move), for a sweep's flow too
    for alg, knob, cap in (("pwm_tiny", "flow.integrate_steps=2", 80000),
                           ("pwm_tiny_flow", "flow.integrate_steps=2", 160000), ("pwm_tiny_flow", "seed=1", 160000)):
        cfg = compose_ab("+study=cpu_v2", "task=reacher-easy", f"alg={alg}", knob)
        pretrain = with_variant_cap(cfg, variant_alg(cfg.alg, cfg.flow)).pretrain
        assert pretrain.iterations == pretrain.min_iterations == cap
    plain = compose_ab("alg=pwm_tiny")
    assert with_variant_cap(plain, plain.alg) is plain  # one cap for both: the config as it is
    for bad, message in (("{baseline:4}", r"pretrain.iterations \(task cartpole-balance\) per variant needs exactly "
                                          r"the keys baseline and flow, got \['baseline'\]"),
                         ("{baseline:0,flow:4}", r"pretrain.iterations \(task cartpole-balance\).baseline must be a "
                                                 r"positive number of iterations, got 0"),
                         ("{baseline:4,flow:4,mlp:2}", "got \\['baseline', 'flow', 'mlp'\\]")):
        cfg = compose_ab("alg=pwm_tiny", f"general.root={tmp_path / 'bad'}", f"pretrain.iterations={bad}")
        with pytest.raises(ValueError, match=message):
            run_ab_job(cfg)
    assert not (tmp_path / "bad").exists()


def test_flow_knobs_apply_only_to_flow_variants():
    cfg = compose_ab("alg=pwm_tiny_flow")
    flow = variant_alg(cfg.alg, {"integrate_steps": 8, "fm_tau_sampling": None})
    assert flow.world_model_config.integrate_steps == 8 and variant_label(flow) == "flow-K8-uniform"
    base = variant_alg(compose_ab("alg=pwm_tiny").alg, {"integrate_steps": 8, "fm_tau_sampling": "midpoint"})
    assert "integrate_steps" not in base.world_model_config and variant_label(base) == "baseline"
    projected = variant_alg(cfg.alg, {"latent_projection": "simplex"})
    assert variant_label(projected) == "flow-K4-uniform-simplex"
    detached = variant_alg(cfg.alg, {"detach_velocity_target": True})
    assert detached.world_model_config.detach_velocity_target is True
    assert variant_label(detached) == "flow-K4-uniform-detached"
    both = variant_alg(cfg.alg, {"detach_velocity_target": True, "endpoint_loss_coef": 1.0})
    assert both.world_model_config.endpoint_loss_coef == 1.0
    assert variant_label(both) == "flow-K4-uniform-detached-endpoint1"
    field_only = variant_alg(cfg.alg, {"detach_flow_matching_latents": True})
    assert field_only.world_model_config.detach_flow_matching_latents is True
    assert variant_label(field_only) == "flow-K4-uniform-fieldonly"
    assert variant_label(variant_alg(cfg.alg, compose_ab("alg=pwm_tiny_flow").flow)) == "flow-K4-uniform"


def test_report_code_defaults_equal_the_ab_config():
    """ab.yaml's ``report`` section is where a user sets the verdict's rules; scripts/ab_report.py and
    build_report called without them fall back to the code's defaults, which must say the same."""
    import dataclasses
    import inspect

    from pwm.experiments.report import BOOTSTRAP_REPS, THRESHOLDS, ConvergenceRule, LearnedBar, build_report
    from pwm.experiments.statistics import Criteria

    report = compose_ab().report
    assert LearnedBar() == LearnedBar(report.learned_std_margin, report.learned_min_gain, report.learned_min_scale)
    assert ConvergenceRule() == ConvergenceRule(report.convergence, report.half_budget_tolerance)
    assert Criteria() == Criteria(**{f.name: report[f.name] for f in dataclasses.fields(Criteria)})
    defaults = inspect.signature(build_report).parameters
    assert defaults["thresholds"].default == THRESHOLDS == tuple(report.thresholds)
    assert defaults["bootstrap_reps"].default == BOOTSTRAP_REPS == report.bootstrap_reps
    with pytest.raises(ValueError, match="report.learned_min_scale"):
        LearnedBar(min_scale=-0.05)


def test_a_run_folder_of_another_model_size_is_refused(tmp_path):
    small, tiny = compose_ab("alg=pwm_small").alg, compose_ab("alg=pwm_tiny").alg
    check_run_model(tmp_path / "run", small)  # a new folder records the size
    check_run_model(tmp_path / "run", small)  # the same size resumes
    with pytest.raises(ValueError, match="holds a run of model latent64-wm128x128.*this job's alg is latent"):
        check_run_model(tmp_path / "run", tiny)
    # a finished run from before job.json existed: the size comes from its summary
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "summary.json").write_text(json.dumps({"alg": OmegaConf.to_container(small, resolve=True)}))
    with pytest.raises(ValueError, match="general.root"):
        check_run_model(legacy, tiny)


def test_a_run_folder_of_other_alg_settings_is_refused_naming_them(tmp_path):
    current = compose_ab("alg=pwm_small").alg
    check_run_model(tmp_path / "run", current)
    check_run_model(tmp_path / "run", compose_ab("alg=pwm_small", "alg.compile_wm_loss=true", "alg.esnr_every=5").alg)
    with pytest.raises(ValueError, match=r"other alg settings \(alg.horizon: 16 -> 10\).*general.root"):
        check_run_model(tmp_path / "run", compose_ab("alg=pwm_small", "alg.horizon=10").alg)
    # a finished run from before three settings existed ran them at their constructor defaults (off):
    # reused under today's defaults it is refused, under +objective=pwm it is the same run
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    old = OmegaConf.to_container(compose_ab("alg=pwm_small", "+objective=pwm").alg, resolve=True)
    for key in ("actor_entropy_coef", "actor_entropy_target", "actor_entropy_lr", "critic_data_coef", "critic_data_loss"):
        del old[key]
    del old["world_model_config"]["normalize_dynamics_loss"]
    (legacy / "summary.json").write_text(json.dumps({"alg": old}))
    with pytest.raises(ValueError) as refused:
        check_run_model(legacy, current)
    assert ("alg.actor_entropy_coef: 0.0 -> 0.1; alg.actor_entropy_target: None -> -0.5; alg.critic_data_coef: 0.0 -> "
            "0.1; alg.critic_data_loss: 'mse' -> "
            "'lower_bound'; alg.world_model_config.normalize_dynamics_loss: False -> True") in str(refused.value)
    check_run_model(legacy, compose_ab("alg=pwm_small", "+objective=pwm").alg)


def test_a_run_folder_of_another_pretraining_budget_is_refused(tmp_path):
    """Doubling a task's cap in a preset must not return (or resume under another rate schedule) the run of the
    old cap from the same folder: job.json records the budget, and a finished older run's pretrained
    iterations must fit the new one."""
    from pwm.experiments.ab import pretrain_budget
    from pwm.training.settings import PretrainSettings

    alg = compose_ab("alg=pwm_tiny").alg
    cap_40k = PretrainSettings.from_cfg(compose_ab("+study=cpu_v2", "task=walker-walk").pretrain, "pretrain")
    cap_80k = dataclasses.replace(cap_40k, iterations=80000, min_iterations=80000)  # a doubled cap
    check_run_model(tmp_path / "run", alg, cap_40k)
    assert json.loads((tmp_path / "run" / "job.json").read_text())["pretrain"] == pretrain_budget(cap_40k)
    check_run_model(tmp_path / "run", alg, cap_40k)
    check_run_model(tmp_path / "run", alg)  # callers that do not pretrain do not check it
    with pytest.raises(ValueError, match=r"another pretraining budget \(pretrain.iterations: 40000 -> 80000; "
                                         r"pretrain.min_iterations: 40000 -> 80000\).*move the folder"):
        check_run_model(tmp_path / "run", alg, cap_80k)
    legacy = tmp_path / "legacy"  # finished before job.json held the budget: 40k iterations pretrained
    legacy.mkdir()
    (legacy / "summary.json").write_text(json.dumps({"alg": OmegaConf.to_container(alg, resolve=True),
                                                     "pretrain_iterations": 40000}))
    with pytest.raises(ValueError, match="it pretrained for 40000 iterations, this job's pretrain.iterations=80000"):
        check_run_model(legacy, alg, cap_80k)
    check_run_model(legacy, alg, cap_40k)
    assert json.loads((legacy / "job.json").read_text())["pretrain"]["iterations"] == 40000
    # a job.json from before the decay after a plateau was recorded ran without it
    before = json.loads((tmp_path / "run" / "job.json").read_text())
    del before["pretrain"]["anneal_iterations"]
    (tmp_path / "run" / "job.json").write_text(json.dumps(before))
    check_run_model(tmp_path / "run", alg, cap_40k)
    annealed = dataclasses.replace(cap_40k, lr_schedule="constant", anneal_iterations=1000)
    with pytest.raises(ValueError, match="pretrain.anneal_iterations: 0 -> 1000"):
        check_run_model(tmp_path / "run", alg, annealed)


def _restored_run_passes_the_guard(summary, alg, folder):
    """Restore an archived run's ``summary`` into ``folder`` (a copy: the guard records job.json in the folder
    it checks) and check it against the job's ``alg``; raises what a re-run of the study would."""
    folder.mkdir()
    (folder / "summary.json").write_text(summary.read_text())
    check_run_model(folder, alg)


@pytest.mark.parametrize("alg, label", [("pwm_small", "baseline"), ("pwm_small_flow", "flow-K4-uniform")])
def test_the_first_studys_archived_runs_are_its_presets_runs(alg, label, tmp_path):
    """``STUDY=cpu_pwm_objective bash scripts/run_study.sh`` restores the archived runs and skips them: they
    must be what that preset would run today, or the guard refuses them (a changed default needs pinning in
    study/cpu_pwm_objective.yaml)."""
    cfg = compose_ab("+study=cpu_pwm_objective", f"alg={alg}")
    current = variant_alg(cfg.alg, cfg.flow)
    summaries = sorted((REPO / cfg.report.dir / "runs").glob(f"*/default/{label}/seed*/summary.json"))
    assert len(summaries) == 18  # 6 tasks x 3 seeds
    for number, summary in enumerate(summaries):
        _restored_run_passes_the_guard(summary, current, tmp_path / str(number))


def test_the_cpu_studys_archived_runs_are_its_presets_runs(tmp_path):
    """``bash scripts/run_study.sh`` restores ``results/study/runs`` on a fresh clone and skips those runs: each
    must be what its stage would run today (the main grid, or a sweep's setting and flow knobs), or the guard
    refuses it and the study stops. A changed default must be pinned in study/cpu.yaml."""
    root = REPO / compose_ab("+study=cpu").report.dir / "runs"
    summaries = sorted(root.glob("*/*/*/seed*/summary.json"))
    assert len(summaries) == 36 + 18  # main grid: 6 tasks x 3 seeds x 2 variants; sweeps: 18 runs on 2 tasks
    # the main grid's runs carry the labels its jobs get today (a changed flow default would rename them)
    flow = compose_ab("+study=cpu", "alg=pwm_tiny_flow")
    main_labels = [path.parts[-3] for path in root.glob("*/default/*/seed*/summary.json")]
    assert main_labels.count("baseline") == main_labels.count(variant_label(variant_alg(flow.alg, flow.flow))) == 18
    for number, summary in enumerate(summaries):
        task, setting, label, _ = summary.relative_to(root).parts[:4]
        overrides = ["+study=cpu", f"task={task}"] + ([] if setting == "default" else setting.split(","))
        if label == "baseline":
            overrides.append("alg=pwm_tiny")
        else:
            _, steps, tau = label.split("-")  # flow-K<integrate_steps>-<fm_tau_sampling>
            overrides += ["alg=pwm_tiny_flow", f"flow.integrate_steps={steps[1:]}", f"flow.fm_tau_sampling={tau}"]
        cfg = compose_ab(*overrides)
        alg = variant_alg(cfg.alg, cfg.flow)
        assert variant_label(alg) == label
        _restored_run_passes_the_guard(summary, alg, tmp_path / str(number))


@pytest.mark.parametrize("preset, axis, values", [
    ("integrate_steps", "flow.integrate_steps", "2,4,8"), ("tau_sampling", "flow.fm_tau_sampling", "uniform,midpoint"),
    ("horizon", "alg.horizon", "10,20"), ("finetune", "train.train_world_model", "True")])
def test_sweep_presets_add_their_axis_to_the_ab_grid(preset, axis, values):
    params = compose_ab(f"+sweep={preset}").hydra.sweeper.params
    assert str(params[axis]) == values
    assert params["alg"] == "pwm_small,pwm_small_flow" and str(params["seed"]) == "0"
    assert list(params)[:3] == ["seed", "task", "alg"]  # job order: seed slowest, then task, then variant


def test_study_preset_runs_six_tasks_three_seeds_in_seed_order():
    study = compose_ab("+study=cpu")
    params = study.hydra.sweeper.params
    assert list(params)[:3] == ["seed", "task", "alg"] and params["seed"] == "0,1,2"
    assert len(set(params["task"].split(","))) == 6 and params["alg"] == "pwm_tiny,pwm_tiny_flow"
    assert study.alg.batch_size == compose_ab("alg=pwm_tiny").alg.batch_size  # a job outside the sweep too
    # the configs' defaults, not PWM's objective (the first study's preset keeps that one)
    assert study.alg.actor_entropy_coef == compose_ab().alg.actor_entropy_coef > 0
    assert (study.general.root, study.report.dir) == ("runs/study", "results/study")
    # every world model pretrains to the cap (the plateau rule alone stopped them too early), the default A/B does not
    assert study.pretrain.min_iterations == study.pretrain.iterations > compose_ab().pretrain.min_iterations
    # 25k-step SAC replays, 50k where SAC is still poor at 25k; the default A/B's shorter replay must not leak in
    assert study.data.sac_steps == 25000 and study.data.sac_final_policy_episodes == 0
    assert compose_ab().data.sac_final_policy_episodes > 0
    assert study.data.sac_stop_return is None and compose_ab().data.sac_stop_return > 0
    assert study.train.iterations == 1000 != compose_ab().train.iterations  # what its archived runs ran with
    assert compose_ab("+study=cpu", "task=reacher-easy").data.sac_steps == 50000
    assert study.sweeps.tasks == "cartpole-swingup,cup-catch" and str(study.sweeps.seeds) == "0"
    assert set(study.sweeps.tasks.split(",")) <= set(params["task"].split(","))


def test_second_study_preset_checks_convergence_by_the_budget_on_its_first_seed():
    v2, v1 = compose_ab("+study=cpu_v2"), compose_ab("+study=cpu")
    params = v2.hydra.sweeper.params
    assert list(params)[:3] == ["seed", "task", "alg"] and params["seed"] == "0,1,2"
    tasks = params["task"].split(",")
    assert len(set(tasks)) == 6 and "finger-spin" not in tasks and "cartpole-balance-sparse" in tasks
    assert params["alg"] == "pwm_tiny,pwm_tiny_flow" and v2.alg.batch_size == v1.alg.batch_size
    # every model trains to the cap under the decaying rate; the first seed, run first, is checked at half of it
    # (a task's cap doubles from 40k while seed 0's check says not converged, halves while it says overtrained,
    # each variant's own way when the check splits them)
    from pwm.experiments.ab import with_variant_cap

    def caps(task):
        composed = [compose_ab("+study=cpu_v2", f"task={task}", f"alg={alg}") for alg in ("pwm_tiny", "pwm_tiny_flow")]
        pretrain = [with_variant_cap(cfg, variant_alg(cfg.alg, cfg.flow)).pretrain for cfg in composed]
        assert all(settings.min_iterations == settings.iterations for settings in pretrain), task
        return tuple(settings.iterations for settings in pretrain)

    assert caps("walker-walk") == (40000, 40000) and v2.pretrain.lr_schedule == "linear"  # unlisted
    assert caps("cup-catch") == (20000, 40000)  # vendor-neutral data: overtrained at 40k (baseline), 80k (flow)
    assert caps("cartpole-swingup") == (640000, 80000)  # baseline not converged at 160k, 320k; flow overtrained
    assert caps("cartpole-balance-sparse") == (160000, 320000)  # its flow failed the check at 160k
    assert caps("cartpole-balance") == (160000, 320000)  # baseline -11% at 160k, overtrained at 320k; flow at 160k
    assert caps("cheetah-run") == (320000, 160000)  # flow not converged at 40k, 80k on vendor-neutral data
    assert caps("reacher-easy") == (80000, 160000)  # the baseline overtrained at 160k on portable data
    assert list(v2.pretrain.half_budget_seeds) == [0] and compose_ab().pretrain.half_budget_seeds == []
    assert v2.report.convergence == "half_budget" and compose_ab().report.convergence == "plateau"
    assert (v2.general.root, v2.report.dir) == ("runs/study_v2", "results/study_v2")
    for key in ("sac_steps", "sac_final_policy_episodes", "sac_stop_return", "random_mix_episodes", "seed"):
        assert v2.data[key] == v1.data[key], key  # the first version's data recipe
    assert v2.data.portable_numerics is True and v1.data.portable_numerics is False  # vendor-neutral data
    assert compose_ab("+study=cpu_v2", "task=reacher-easy").data.sac_steps == 50000
    assert v2.train.iterations == v1.train.iterations and set(v2.sweeps.tasks.split(",")) <= set(tasks)
    # policies are judged on the random policy's initial states (the learned bar's), all of them
    assert v2.train.eval_episodes == v2.data.random_episodes == 20 and v1.train.eval_episodes == 5
    # policies extract on TD-MPC2's batch; the world models keep pwm_tiny's (the first version: one batch for both)
    assert (v2.train.batch_size, v2.alg.batch_size, v1.train.batch_size) == (256, 64, None)


def test_first_study_preset_keeps_its_recipe():
    first = compose_ab("+study=cpu_pwm_objective")
    assert first.alg.actor_entropy_coef == 0 and first.data.sac_steps == 25000
    assert first.train.iterations == 1000
    assert first.data.random_mix_episodes == 0 and compose_ab("+study=cpu").data.random_mix_episodes == 20
    assert first.data.sac_final_policy_episodes == 0 and first.data.sac_stop_return is None
    assert first.hydra.sweeper.params["alg"] == "pwm_small,pwm_small_flow"
    assert (first.general.root, first.report.dir) == ("runs/study_pwm_objective", "results/study_pwm_objective")


def test_run_study_reads_its_folders_and_sweeps_from_the_preset(tmp_path):
    """run_study.sh's only source of the study's folders, sweep grid and flow variant is the preset (read by
    the script's inline reader, run here as it is); an unknown preset makes the reader fail."""
    script = (REPO / "scripts" / "run_study.sh").read_text()
    snippet = script.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    (tmp_path / "read_preset.py").write_text(snippet)

    def read(study):
        return subprocess.run([sys.executable, str(tmp_path / "read_preset.py"), study], cwd=REPO, text=True,
                              capture_output=True)

    assert read("cpu").stdout.split() == ["runs/study", "results/study", "cartpole-swingup,cup-catch", "0",
                                          "pwm_tiny_flow", "0.1"]
    assert read("cpu_pwm_objective").stdout.split()[:2] == ["runs/study_pwm_objective", "results/study_pwm_objective"]
    assert read("cpu_v2").stdout.split()[:2] == ["runs/study_v2", "results/study_v2"]
    assert 'study="${STUDY:-cpu_v2}"' in script  # the study in progress is the default
    assert read("no_such_study").returncode != 0


def test_launcher_configs_compose():
    assert compose_ab().hydra.launcher._target_.endswith("JoblibLauncher")
    slurm = compose_ab("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu" and slurm.gpus_per_node == 1


@pytest.mark.slow
def test_ab_multirun_with_integrate_steps_sweep_shares_the_baseline(tmp_path):
    """Baseline x {K2, K4} on one seed: the baseline runs once, both flows pair with it, report written."""
    result = run_script("ab_compare.py", "-m", "task=pendulum-swingup", "seed=0", "alg=pwm_tiny,pwm_tiny_flow",
                        "flow.integrate_steps=2,4",
                        f"general.root={tmp_path}", *TINY_AB)
    assert "A/B" in result.stderr + result.stdout
    runs = sorted(p.parent.relative_to(tmp_path / "runs") for p in tmp_path.glob("runs/**/summary.json"))
    setting = runs[0].parts[1]
    assert [r.parts[2] for r in runs] == ["baseline", "flow-K2-uniform", "flow-K4-uniform"]
    assert "pretrain.iterations=4" in setting and "integrate_steps" not in setting
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(c["flow_variant"] for c in report["comparisons"]) == ["flow-K2-uniform", "flow-K4-uniform"]
    assert all(c["criteria"]["runs_complete"]["passed"] for c in report["comparisons"])
    # one shared dataset; identical batches and initial weights are tested in test_training
    summaries = [json.loads((tmp_path / "runs" / r / "summary.json").read_text()) for r in runs]
    assert len({(s["params/actor"], s["params/critic"]) for s in summaries}) == 1
    assert (tmp_path / "report" / "report.md").exists() and os.listdir(tmp_path / "data" / "pendulum-swingup")
    # status_only walks the same jobs and runs none: the shared baseline once per flow setting, all done
    grid = ("ab_compare.py", "-m", "task=pendulum-swingup", "seed=0", "alg=pwm_tiny,pwm_tiny_flow",
            "flow.integrate_steps=2,4", f"general.root={tmp_path}", *TINY_AB, "status_only=true")
    done = run_script(*grid, "hydra/launcher=basic").stdout
    assert done.count("done     pendulum-swingup") == 4 and "4 jobs: 4 done, 0 started, 0 waiting" in done
    (tmp_path / "runs" / runs[2] / "summary.json").unlink()  # as if K4's job stopped before its summary
    status = run_script(*grid, "hydra/launcher=basic").stdout
    assert "started  pendulum-swingup" in status and "flow-K4-uniform seed0: pretrain 4/4, policy 4/4" in status
    assert "4 jobs: 3 done, 1 started, 0 waiting" in status
    assert sorted(p.name for p in tmp_path.glob("runs/**/seed0")) == ["seed0"] * 3  # no folder of its own
    refused = run_script(*grid, check=False)  # the default joblib launcher would lose the totals
    assert refused.returncode != 0 and "status_only=true needs hydra/launcher=basic" in refused.stderr


def test_a_job_on_other_data_than_its_tasks_finished_runs_is_refused_naming_both(tmp_path):
    """A study resumed on another machine re-collects its data: a job whose dataset differs from the one its
    task's finished runs read, or whose task has a finished run that did not record it, does not start."""
    from pwm.experiments.ab import check_same_data
    from pwm.utils.common import cpu_model

    task_runs = tmp_path / "runs" / "cup-catch"
    finished = task_runs / "default" / "baseline" / "seed0"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text(json.dumps({"data_sha256": "a" * 64}))
    check_same_data(task_runs, "a" * 64, tmp_path / "data")
    check_same_data(tmp_path / "runs" / "no-runs-yet", "b" * 64, tmp_path / "data")
    with pytest.raises(ValueError, match=f"{finished} read dataset aaaaaaaaaaaa, but this job's dataset "
                                         f"{tmp_path / 'data'} is bbbbbbbbbbbb"):
        check_same_data(task_runs, "b" * 64, tmp_path / "data")
    (finished / "summary.json").write_text(json.dumps({"data_sha256": "a" * 64, "cpu": "AMD EPYC 9B45+avx512"}))
    with pytest.raises(ValueError, match=r"read dataset aaaaaaaaaaaa \(made on AMD EPYC 9B45\+avx512; this job runs "
                                         f"on {re.escape(cpu_model())}\\), but this job's dataset"):
        check_same_data(task_runs, "b" * 64, tmp_path / "data")
    (finished / "summary.json").write_text(json.dumps({"task": "cup-catch"}))  # from before fingerprints
    with pytest.raises(ValueError, match="did not record which dataset it read"):
        check_same_data(task_runs, "a" * 64, tmp_path / "data")


def test_a_dataset_of_another_recipe_is_refused_naming_it(tmp_path):
    """A SAC replay collected without random-action or final-policy episodes is not reused as one with
    them; without them the recipe is the one datasets collected before those options recorded."""
    from pwm.data.tdmpc2_format import dataset_fingerprint, write_episodes
    from pwm.experiments.ab import ensure_dataset

    data_dir = tmp_path / "data" / "cartpole-balance"
    obs, action, reward = torch.zeros(1, 3, 5), torch.zeros(1, 3, 1), torch.zeros(1, 3)
    write_episodes(data_dir / "0.pt", obs, action, reward, torch.zeros(1, 3, dtype=torch.long))
    cfg = compose_ab(f"general.root={tmp_path}", "data.random_episodes=1")
    (data_dir / "collect.json").write_text(json.dumps({"task": "cartpole-balance", "policy": "sac", "seed": 12345,
                                                        "sac_steps": cfg.data.sac_steps}))
    with pytest.raises(ValueError, match="random_mix_episodes"):
        ensure_dataset(cfg)
    cfg.data.random_mix_episodes = 0
    with pytest.raises(ValueError, match="sac_final_policy_episodes"):
        ensure_dataset(cfg)
    cfg.data.sac_final_policy_episodes = 0
    with pytest.raises(ValueError, match="sac_stop_return"):
        ensure_dataset(cfg)
    cfg.data.sac_stop_return = None
    with pytest.raises(ValueError, match="portable_numerics"):  # data collected before it, or without it
        ensure_dataset(cfg)
    # recorded as true by the numerics of before 2026-12-07 (intel_avx2): reused by those numerics only
    before_names = {"task": "cartpole-balance", "policy": "sac", "seed": 12345, "sac_steps": cfg.data.sac_steps,
                    "portable_numerics": True}
    (data_dir / "collect.json").write_text(json.dumps(before_names))
    with pytest.raises(ValueError, match="data is now .*'portable_numerics': 'vendor_neutral'"):
        ensure_dataset(cfg)
    cfg.data.portable_numerics = "intel_avx2"
    assert ensure_dataset(cfg)[0] == data_dir
    cfg.data.portable_numerics = "avx3"
    with pytest.raises(ValueError, match=r"portable_numerics='avx3': expected true, false or one of \['vendor_"):
        ensure_dataset(cfg)
    for recorded in ("fingerprint.json", "random_policy.json"):
        (data_dir / recorded).unlink()
    (data_dir / "collect.json").write_text(json.dumps({key: value for key, value in before_names.items()
                                                       if key != "portable_numerics"}))
    cfg.data.portable_numerics = False
    folder, facts = ensure_dataset(cfg)
    assert folder == data_dir and facts["data_sha256"] == dataset_fingerprint(data_dir)  # recorded on first use
    assert json.loads((data_dir / "fingerprint.json").read_text()) == {"data_sha256": facts["data_sha256"]}


def test_further_policies_share_the_world_model_and_the_initial_states(tmp_path, monkeypatch):
    """train.policy_seeds=2: a second policy, in policy1/, from the same pretrained world model with its own seed
    (another actor), evaluated on the first one's initial states; the report reads one run of two policies."""
    import pwm.training.loops as loops
    from pwm.envs.rollout import EVAL_SEED_OFFSET
    from pwm.experiments.ab import POLICY_SEED_STRIDE, run_ab_job
    from pwm.experiments.runs import load_runs
    from pwm.utils.common import load_checkpoint

    evaluated_seeds = []
    evaluate = loops.evaluate

    def recording_evaluate(*args, **kwargs):
        evaluated_seeds.append(kwargs["seed"])
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loops, "evaluate", recording_evaluate)

    def job(*extra):
        return run_ab_job(compose_ab("alg=pwm_tiny_flow", "setting=default", "seed=1", f"general.root={tmp_path}",
                                     *TINY_AB, *extra))

    summary = job("train.policy_seeds=2")
    run = tmp_path / "runs" / "cartpole-balance" / "default" / "flow-K4-uniform" / "seed1"
    further = json.loads((run / "policy1" / "summary.json").read_text())
    assert (further["policy_index"], further["policy_seed"]) == (1, 1 + POLICY_SEED_STRIDE)
    assert further["pretrain_heldout_error_final"] == summary["pretrain_heldout_error_final"]
    assert summary["policy_final_rewards"] == [summary["final_reward"], further["final_reward"]]
    assert set(evaluated_seeds) == {EVAL_SEED_OFFSET + 1} and len(evaluated_seeds) == 2 * 2  # 2 evaluations each
    first, second = (load_checkpoint(folder / "checkpoint.pt")["agent"] for folder in (run, run / "policy1"))
    for part, same in (("world_model", True), ("actor", False)):  # the world model frozen; its own seed's actor
        weights = first[part].keys()
        assert all(torch.equal(first[part][key], second[part][key]) for key in weights) is same, part
    runs = load_runs(tmp_path / "runs")
    assert len(runs) == 1 and runs[0].policy_count == 2
    # a third policy later: only it trains; one on other initial states than the first's is refused
    first_log = (run / "metrics.csv").read_text()
    assert len(job("train.policy_seeds=3")["policy_final_rewards"]) == 3
    assert (run / "metrics.csv").read_text() == first_log
    # policies extracted under other policy settings are refused, by the job and by its status, naming them:
    # on other initial states, or on another batch (pwm_tiny's 16 windows here), even with no policy to add
    with pytest.raises(ValueError, match=r"seed1 holds a policy .*\(train.eval_episodes: 1 -> 2\); move"):
        job("train.policy_seeds=4", "train.eval_episodes=2")
    with pytest.raises(ValueError, match=r"\(train.batch_size: 16 -> 32\)"):
        job("train.policy_seeds=3", "train.batch_size=32")
    assert job("train.policy_seeds=3", "train.batch_size=16")["policy_final_rewards"]  # the same batch, set
    from pwm.experiments.ab import ab_job_status

    status = ab_job_status(compose_ab("alg=pwm_tiny_flow", "setting=default", "seed=1", f"general.root={tmp_path}",
                                      *TINY_AB, "train.policy_seeds=3", "train.batch_size=32"), rates={})
    assert status.state == "refused" and "train.batch_size: 16 -> 32" in status.note
    policy2 = json.loads((run / "policy2" / "summary.json").read_text())
    for name in ("summary.json", "metrics.csv", "checkpoint.pt"):  # as the message says: its policies moved away
        for folder in (run, run / "policy1", run / "policy2"):
            (folder / name).rename(tmp_path / f"{folder.name}_{name}")
    again = job("train.policy_seeds=3", "train.batch_size=32")
    assert json.loads((run / "policy2" / "summary.json").read_text())["policy_batch_size"] == 32
    assert again["pretrain_heldout_error_final"] == policy2["pretrain_heldout_error_final"]  # the same world model
    with pytest.raises(ValueError, match="train.policy_seeds must be >= 1"):
        job("train.policy_seeds=0")
