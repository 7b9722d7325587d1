"""A study's status: each job's progress read from its run folder and the time left at measured rates."""

import gzip
import json

import pytest

from pwm.experiments.status import csv_progress, job_status, measured_rates, status_line, status_totals

MODEL = "latent32-wm64x64-actor64x64"


def write_metrics(path, iterations, seconds_per_iteration, every=10, gzipped=False):
    """A phase's metrics.csv as the loops write it: a row every ``every`` iterations (the last one included)."""
    rows = ["iteration,wm/loss,time/elapsed_s"]
    logged = list(range(every - 1, iterations, every))
    if iterations and (not logged or logged[-1] != iterations - 1):
        logged.append(iterations - 1)
    rows += [f"{i},0.5,{(i + 1) * seconds_per_iteration}" for i in logged]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(rows) + "\n"
    if gzipped:
        with gzip.open(path.with_name(path.name + ".gz"), "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)


def run_folder(root, task="cup-catch", variant="baseline", seed=0):
    folder = root / "runs" / task / "default" / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"model": MODEL}))
    return folder


def status_of(folder, rates, pretrain=100, policy=20, check=True):
    return job_status(folder, task="cup-catch", setting="default", variant=folder.parent.name, seed=0, model=MODEL,
                      pretrain_iterations=pretrain, policy_iterations=policy, half_budget_check=check, rates=rates)


def test_csv_progress_reads_the_last_logged_iteration_of_plain_and_archived_metrics(tmp_path):
    write_metrics(tmp_path / "a" / "metrics.csv", 35, 0.5)
    assert csv_progress(tmp_path / "a" / "metrics.csv") == (35, 17.5)
    write_metrics(tmp_path / "b" / "metrics.csv", 40, 0.25, gzipped=True)
    assert csv_progress(tmp_path / "b" / "metrics.csv") == (40, 10.0)
    assert csv_progress(tmp_path / "none" / "metrics.csv") is None
    (tmp_path / "header.csv").write_text("iteration,time/elapsed_s\n")
    assert csv_progress(tmp_path / "header.csv") is None


def test_measured_rates_pool_every_logged_iteration_of_a_variant(tmp_path):
    first, second = run_folder(tmp_path, seed=0), run_folder(tmp_path, seed=1)
    write_metrics(first / "pretrain_half" / "metrics.csv", 50, 0.2)  # 10 s
    write_metrics(first / "pretrain" / "metrics.csv", 100, 0.2)      # 20 s
    write_metrics(first / "metrics.csv", 20, 1.0)                    # 20 s, a finished run's policy
    (first / "summary.json").write_text(json.dumps({"iterations": 20, "final_reward": 1.0}))
    write_metrics(second / "pretrain" / "metrics.csv", 50, 0.8)      # 40 s
    write_metrics(second / "metrics.csv", 10, 9.0)                   # unfinished policy: not a rate yet
    flow = run_folder(tmp_path, variant="flow-K4-uniform")
    write_metrics(flow / "pretrain" / "metrics.csv", 10, 3.0)
    rates = measured_rates(tmp_path)
    assert rates[("baseline", MODEL)] == pytest.approx({"pretrain": 70.0 / 200, "policy": 1.0})
    assert rates[("flow-K4-uniform", MODEL)] == pytest.approx({"pretrain": 3.0})


def test_job_status_counts_each_phase_and_the_time_left(tmp_path):
    rates = {("baseline", MODEL): {"pretrain": 0.5, "policy": 2.0}}
    folder = run_folder(tmp_path)
    waiting = status_of(folder, rates)
    assert waiting.state == "waiting"
    assert [(name, p.iterations, p.total) for name, p in waiting.phases.items()] == [
        ("check", 0, 50), ("pretrain", 0, 100), ("policy", 0, 20)]
    assert waiting.remaining_s == pytest.approx(50 * 0.5 + 100 * 0.5 + 20 * 2.0)
    assert status_of(folder, rates, check=False).remaining_s == pytest.approx(100 * 0.5 + 20 * 2.0)

    write_metrics(folder / "pretrain_half" / "metrics.csv", 50, 0.1)
    write_metrics(folder / "pretrain" / "metrics.csv", 40, 0.25)  # a started phase goes on at its own rate
    started = status_of(folder, rates)
    assert started.state == "started" and started.phases["pretrain"].iterations == 40
    assert started.remaining_s == pytest.approx(60 * 0.25 + 20 * 2.0)
    assert "pretrain 40/100" in status_line(started) and "left 1m" in status_line(started)

    write_metrics(folder / "pretrain" / "metrics.csv", 70, 0.25)  # the plateau rule ended it at 70
    write_metrics(folder / "metrics.csv", 5, 1.0)
    policy = status_of(folder, rates)
    assert policy.phases["pretrain"].iterations == 100 and policy.remaining_s == pytest.approx(15 * 1.0)

    (folder / "summary.json").write_text(json.dumps({"iterations": 20, "final_reward": 812.25}))
    done = status_of(folder, rates)
    assert (done.state, done.remaining_s, done.last_reward) == ("done", 0.0, 812.25)
    assert status_line(done).endswith("last evaluation 812.2")
    assert status_of(folder, rates, policy=30).state == "started"  # a summary of fewer updates is not this job's


def test_a_halved_caps_job_with_its_pretraining_but_no_check_still_has_the_check_to_run(tmp_path):
    """A halved cap's job takes its double's check as its pretraining (results/study_v2/commands.md): the
    check it has not run is still left, although the phase after it has a log."""
    rates = {("baseline", MODEL): {"pretrain": 0.5, "policy": 2.0}}
    folder = run_folder(tmp_path)
    write_metrics(folder / "pretrain" / "metrics.csv", 100, 0.25)
    halved = status_of(folder, rates)
    assert [(name, p.iterations) for name, p in halved.phases.items()] == [("check", 0), ("pretrain", 100),
                                                                           ("policy", 0)]
    assert halved.remaining_s == pytest.approx(50 * 0.5 + 20 * 2.0)


def test_a_variant_without_a_measured_rate_leaves_its_time_unknown(tmp_path):
    folder = run_folder(tmp_path, variant="flow-K8-uniform")
    unknown = status_of(folder, {("flow-K8-uniform", MODEL): {"pretrain": 0.5}})  # no finished policy yet
    assert unknown.remaining_s is None and status_line(unknown).endswith("left ?")
    totals = status_totals([unknown.as_dict(), status_of(run_folder(tmp_path), {("baseline", MODEL): {
        "pretrain": 1.0, "policy": 6.0}}, check=False).as_dict()])
    assert totals == ("2 jobs: 0 done, 0 started, 2 waiting; left at the measured rates: 4m of job time, "
                      "plus 1 jobs of a variant with no rate measured yet")


def test_a_folder_of_another_budget_is_reported_as_refused_and_nothing_is_written(tmp_path):
    """The job a status query describes is the one run_ab_job would run: after a preset's cap changed, the old
    cap's folder stops it (pwm.experiments.ab.check_run_model), and the status says so; a query writes nothing."""
    from hydra import compose, initialize_config_dir

    from conftest import REPO
    from pwm.experiments.ab import ab_job_status, check_run_model, run_dir_for, variant_alg
    from pwm.training.settings import PretrainSettings

    def cfg(task):
        with initialize_config_dir(config_dir=str(REPO / "scripts" / "cfg"), version_base="1.3"):
            return compose(config_name="ab", overrides=["+study=cpu_v2", f"task={task}", "alg=pwm_tiny",
                                                        "setting=default", f"general.root={tmp_path}"])

    job = cfg("cartpole-balance-sparse")  # its cap: 160k
    waiting = ab_job_status(job, rates={})
    assert (waiting.state, waiting.phases["pretrain"].total) == ("waiting", 160000)
    assert not (tmp_path / "runs").exists()
    run_dir = run_dir_for(job, variant_alg(job.alg, job.flow))
    check_run_model(run_dir, variant_alg(job.alg, job.flow),  # a job of a 40k cap started in that folder
                    PretrainSettings.from_cfg(cfg("walker-walk").pretrain, "pretrain"))
    refused = ab_job_status(job, rates={})
    assert refused.state == "refused" and refused.remaining_s is None
    assert "another pretraining budget (pretrain.iterations: 40000 -> 160000" in status_line(refused)
    assert "1 refused (see above; not in the time left)" in status_totals([refused.as_dict()])


def test_a_job_of_several_policies_is_done_when_all_are_and_counts_their_updates(tmp_path):
    """train.policy_seeds > 1: the policy phase is every policy's updates, the job done only when all finished."""
    folder = run_folder(tmp_path)
    write_metrics(folder / "pretrain_half" / "metrics.csv", 50, 0.1)
    write_metrics(folder / "pretrain" / "metrics.csv", 100, 0.1)
    write_metrics(folder / "metrics.csv", 20, 0.5)
    (folder / "summary.json").write_text(json.dumps({"iterations": 20, "final_reward": 7.0}))
    write_metrics(folder / "policy1" / "metrics.csv", 5, 0.5)  # the second of three policies, a quarter done

    def status(policies):
        return job_status(folder, task="cup-catch", setting="default", variant="baseline", seed=0, model=MODEL,
                          pretrain_iterations=100, policy_iterations=20, half_budget_check=True, rates={},
                          policies=policies)

    assert status(1).state == "done" and status(1).last_reward == 7.0
    started = status(3)
    assert started.state == "started" and started.phases["policy"].iterations == 25
    assert started.phases["policy"].total == 60 and started.remaining_s == pytest.approx(35 * 0.5)
    write_metrics(folder / "policy1" / "metrics.csv", 20, 0.5)
    (folder / "policy1" / "summary.json").write_text(json.dumps({"iterations": 20, "final_reward": 9.0}))
    assert status(3).state == "started" and status(2).state == "done"
