"""TD-MPC2 dataset format (writer, validating reader) and window sampling."""

import dataclasses

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from pwm.data.buffer import EpisodeBuffer
from pwm.data.tdmpc2_format import DatasetError, dataset_fingerprint, load_dataset, read_chunk, write_episodes
from pwm.envs.rollout import COLLECT_SEED_OFFSET, random_policy, run_episode
from pwm.envs.tasks import make_env


def episodes(num=3, length=6, obs_dim=4, act_dim=2, task=0, episode_offset=0):
    """Episodes whose obs encode (episode, t), so windows can be checked for boundary crossing."""
    t = torch.arange(length + 1, dtype=torch.float32)
    ep = torch.arange(episode_offset, episode_offset + num, dtype=torch.float32)
    obs = torch.zeros(num, length + 1, obs_dim)
    obs[..., 0], obs[..., 1] = ep[:, None], t[None, :]
    action = t[None, :, None].expand(num, length + 1, act_dim).clone()
    reward = (ep[:, None] * 100 + t[None, :]).clone()
    action[:, 0], reward[:, 0] = float("nan"), float("nan")
    return obs, action, reward, torch.full((num, length + 1), task)


def test_write_read_round_trip(tmp_path):
    data = episodes()
    path = write_episodes(tmp_path / "chunk.pt", *data)
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded, TensorDict) and tuple(loaded.batch_size) == (3, 7)
    chunk = read_chunk(path, num_tasks=30)
    for key, value in zip(("obs", "action", "reward", "task"), data):
        assert torch.equal(chunk[key].nan_to_num(-1), value.nan_to_num(-1).to(chunk[key].dtype)), key
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def _write(tmp_path, **changes):
    obs, action, reward, task = episodes()
    fields = {"obs": obs, "action": action, "reward": reward, "task": task, **changes}
    fields = {k: v for k, v in fields.items() if v is not None}
    path = tmp_path / "bad.pt"
    torch.save(TensorDict(fields, batch_size=[3, 7]) if all(v.shape[:2] == (3, 7) for v in fields.values())
               else fields, path)
    return path


@pytest.mark.parametrize("changes, message", [
    ({"reward": None}, r"missing field\(s\) \['reward'\]"),
    ({"obs": torch.zeros(3, 7)}, "field 'obs' has shape"),
    ({"action": torch.zeros(3, 6, 2)}, "field 'action' has leading shape"),
    ({"obs": torch.zeros(3, 7, 4, dtype=torch.long)}, "field 'obs' has dtype"),
    ({"task": torch.zeros(3, 7)}, "field 'task' has dtype"),
    ({"task": torch.full((3, 7), 30)}, r"outside \[0, 30\)"),
    ({"task": torch.cat([torch.zeros(3, 3), torch.ones(3, 4)], 1).long()}, "changes within episode 0"),
])
def test_reader_rejects_bad_files_naming_field(tmp_path, changes, message):
    path = _write(tmp_path, **changes)
    with pytest.raises(DatasetError, match=message) as info:
        read_chunk(path, num_tasks=30)
    assert str(path) in str(info.value)


def test_reader_locates_nans_beyond_t0(tmp_path):
    obs, action, reward, task = episodes()
    reward[1, 4] = float("nan")
    write_episodes(tmp_path / "r.pt", obs, action, reward, task)
    with pytest.raises(DatasetError, match=r"'reward' has NaN/Inf at \(episode, t\) = \(1, 4\)"):
        read_chunk(tmp_path / "r.pt")
    obs, action, reward, task = episodes()
    obs[2, 0, 3] = float("inf")
    write_episodes(tmp_path / "o.pt", obs, action, reward, task)
    with pytest.raises(DatasetError, match=r"'obs' has NaN/Inf at \(episode, t\) = \(2, 0\)"):
        read_chunk(tmp_path / "o.pt")


def test_corrupt_empty_and_mismatched_datasets(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DatasetError, match="junk.pt: cannot be read"):
        load_dataset(tmp_path / "a", horizon=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no \\*.pt files"):
        load_dataset(tmp_path / "empty", horizon=2)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing", horizon=2)
    write_episodes(tmp_path / "b" / "1.pt", *episodes(obs_dim=4))
    write_episodes(tmp_path / "b" / "2.pt", *episodes(obs_dim=5))
    with pytest.raises(DatasetError, match="2.pt: obs/action widths"):
        load_dataset(tmp_path / "b", horizon=2)


def test_windows_stay_inside_episodes_and_align(tmp_path):
    write_episodes(tmp_path / "0.pt", *episodes(num=4, length=6, task=1))
    write_episodes(tmp_path / "1.pt", *episodes(num=2, length=3, task=2, episode_offset=10))
    buffer = load_dataset(tmp_path, horizon=3, num_tasks=5)
    assert buffer.num_episodes == 6 and buffer.num_windows == 4 * 4 + 2 * 1
    batch = buffer.sample(500, torch.Generator().manual_seed(0))
    assert batch.obs.shape == (4, 500, 4) and batch.action.shape == (3, 500, 2) and batch.reward.shape == (3, 500)
    episode, t = batch.obs[..., 0], batch.obs[..., 1]
    assert (episode == episode[0]).all()  # one episode per window
    assert torch.equal(t - t[0], torch.arange(4.0)[:, None].expand_as(t))
    # action/reward at window step k belong to the transition obs[k] -> obs[k+1]
    assert torch.equal(batch.action[..., 0], t[1:]) and torch.equal(batch.reward, episode[1:] * 100 + t[1:])
    assert torch.isfinite(batch.action).all() and set(batch.task.tolist()) == {1, 2}
    only_two = buffer.sample(50, task=2)
    assert (only_two.task == 2).all() and (only_two.obs[0, :, 0] >= 10).all()
    with pytest.raises(ValueError, match="for task 3"):
        buffer.sample(4, task=3)
    filtered = load_dataset(tmp_path, horizon=3, num_tasks=5, tasks=[2])
    assert filtered.num_episodes == 2


def test_buffer_grows_and_round_trips():
    buffer = EpisodeBuffer(obs_dim=4, act_dim=2, horizon=2, capacity=5)
    for i in range(5):
        obs, action, reward, _ = episodes(num=1, length=4, episode_offset=i)
        buffer.add_episode(obs[0], action[0], reward[0], task=i)
    assert len(buffer) == 25 and buffer.num_windows == 5 * 3
    clone = EpisodeBuffer(obs_dim=4, act_dim=2, horizon=2)
    clone.load_state_dict(buffer.state_dict())
    a = buffer.sample(16, torch.Generator().manual_seed(1))
    b = clone.sample(16, torch.Generator().manual_seed(1))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.task, b.task)
    with pytest.raises(ValueError, match="do not match"):
        buffer.add_episode(torch.zeros(5, 3), torch.zeros(5, 2), torch.zeros(5))


def test_sac_replay_collection_writes_every_episode_in_tdmpc2_format(tmp_path):
    """policy=sac keeps the whole replay of a (here very short) SAC run, in the order it was lived, then
    the random-action episodes of ``random_mix_episodes``."""
    from pwm.data.collect import CollectConfig, collect_dataset

    (path,) = collect_dataset(CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path), policy="sac",
                                            sac_steps=1000, random_mix_episodes=1, seed=3))
    chunk = read_chunk(path, num_tasks=1)
    assert chunk["obs"].shape == (3, 501, 5) and chunk["action"].shape == (3, 501, 1)
    env = make_env("cartpole-balance", seed=3)
    mixed = run_episode(env, random_policy(1, np.random.default_rng([3, 0, 1])), seed=COLLECT_SEED_OFFSET + 3000)
    assert torch.equal(chunk["action"][2, 1:], mixed.action[1:].to(chunk["action"].dtype))
    assert torch.allclose(chunk["obs"][2], mixed.obs.to(chunk["obs"].dtype))
    assert torch.isnan(chunk["action"][:, 0]).all() and torch.isnan(chunk["reward"][:, 0]).all()
    assert chunk["action"][:, 1:].abs().max() <= 1.0 and (chunk["reward"][:, 1:] >= 0).all()
    # consecutive positions (cart x, pole cos/sin) of an episode are one trajectory: no reset inside
    assert (chunk["obs"][:, 1:, :3] - chunk["obs"][:, :-1, :3]).abs().max() < 0.5


def test_sac_final_policy_episodes_follow_the_replay_without_learning(tmp_path, monkeypatch):
    """``sac_final_policy_episodes`` appends whole episodes of the trained agent's sampled actions after
    its replay: the replay is the one collected without them, and SAC takes no gradient step more."""
    from stable_baselines3 import SAC

    from pwm.data.collect import CollectConfig, collect_dataset

    taken, sampled = [], []
    train, predict = SAC.train, SAC.predict

    def counting_train(self, gradient_steps, batch_size=64):
        taken.append(gradient_steps)
        return train(self, gradient_steps, batch_size)

    def recording_predict(self, observation, *args, deterministic=False, **kwargs):
        sampled.append(deterministic)
        return predict(self, observation, *args, deterministic=deterministic, **kwargs)

    monkeypatch.setattr(SAC, "train", counting_train)
    monkeypatch.setattr(SAC, "predict", recording_predict)
    chunks = {}
    for final in (0, 2):
        taken.clear()
        sampled.clear()
        (path,) = collect_dataset(CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path / str(final)),
                                                policy="sac", sac_steps=600, sac_final_policy_episodes=final, seed=3))
        chunks[final] = (read_chunk(path, num_tasks=1), sum(taken), list(sampled))
    (replay, replay_steps, replay_sampled), (extended, extended_steps, extended_sampled) = chunks[0], chunks[2]
    assert replay["obs"].shape[0] == 1 and extended["obs"].shape == (3, 501, 5)
    assert torch.equal(extended["obs"][:1], replay["obs"])
    assert torch.equal(extended["reward"][:1, 1:], replay["reward"][:, 1:])
    assert extended_steps == replay_steps == 500  # learning starts after 100 steps, then one step per env step
    # the learner's own actions after its 100 random ones, then the final policy's: sampled, one per env step
    assert len(replay_sampled) == 500 and extended_sampled == replay_sampled + [False] * 1000
    assert not torch.equal(extended["action"][1, 1:], extended["action"][2, 1:])  # two episodes, not one twice
    assert (extended["obs"][:, 1:, :3] - extended["obs"][:, :-1, :3]).abs().max() < 0.5  # no reset inside one
    with pytest.raises(ValueError, match="sac_final_policy_episodes applies to policy=sac only"):
        collect_dataset(CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path / "r"),
                                      sac_final_policy_episodes=1))
    with pytest.raises(ValueError, match="sac_final_policy_episodes must be >= 0"):
        collect_dataset(CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path / "r"), policy="sac",
                                      sac_final_policy_episodes=-1))


def test_sac_stop_return_ends_learning_after_the_first_episode_that_reaches_it(tmp_path, monkeypatch):
    """With ``sac_stop_return`` the learner stops after its first episode returning at least that much:
    a bar every episode clears keeps one episode (the first of the full replay) and takes no gradient step
    after it; a bar no episode clears keeps the whole replay and every gradient step."""
    from stable_baselines3 import SAC

    from pwm.data.collect import CollectConfig, collect_dataset

    taken = []
    train = SAC.train

    def counting_train(self, gradient_steps, batch_size=64):
        taken.append(gradient_steps)
        return train(self, gradient_steps, batch_size)

    monkeypatch.setattr(SAC, "train", counting_train)
    runs = {}
    for name, stop_return in (("reached", 0.0), ("never", 1e9)):
        taken.clear()
        (path,) = collect_dataset(CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path / name),
                                                policy="sac", sac_steps=1000, sac_stop_return=stop_return, seed=3))
        runs[name] = (read_chunk(path, num_tasks=1), sum(taken))
    (reached, reached_steps), (never, never_steps) = runs["reached"], runs["never"]
    assert reached["obs"].shape[0] == 1 and never["obs"].shape[0] == 2  # 500-step episodes
    assert torch.equal(reached["obs"][0], never["obs"][0]) and torch.equal(reached["action"][0, 1:], never["action"][0, 1:])
    # learning starts after 100 steps, then one gradient step per environment step; none after the stopping one
    assert never_steps == 900 and reached_steps == 399
    with pytest.raises(ValueError, match="sac_stop_return applies to policy=sac only"):
        collect_dataset(CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path / "r"), sac_stop_return=1.0))


def test_dataset_fingerprint_follows_the_content_not_the_bytes_of_the_files(tmp_path):
    """Equal episodes in equally named files give one fingerprint, however they were serialised; one value,
    one file name or one episode's task id changed gives another."""
    import pickle

    data = episodes()
    write_episodes(tmp_path / "a" / "0.pt", *data)
    write_episodes(tmp_path / "b" / "0.pt", *data)
    reference = dataset_fingerprint(tmp_path / "a")
    assert len(reference) == 64 and dataset_fingerprint(tmp_path / "b") == reference
    chunk = torch.load(tmp_path / "b" / "0.pt", weights_only=False)  # the same content, another pickle protocol
    torch.save(chunk, tmp_path / "b" / "0.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL - 3)
    assert dataset_fingerprint(tmp_path / "b") == reference
    for name, change in (("reward", lambda o, a, r, t: r.__setitem__((1, 3), r[1, 3] + 0.01)),
                         ("task", lambda o, a, r, t: t.__setitem__(2, 1)),
                         ("file name", None)):
        changed = [x.clone() for x in data]
        if change is not None:
            change(*changed)
        folder = tmp_path / name
        write_episodes(folder / ("1.pt" if change is None else "0.pt"), *changed)
        assert dataset_fingerprint(folder) != reference, name


def test_portable_collection_runs_in_a_fresh_process_with_the_portable_settings(tmp_path, monkeypatch):
    """collect_portably runs collect_dataset in a child process under the numerics asked for (vendor_neutral
    unless named) and writes what collect_dataset writes in this one (random actions do not depend on the
    numerics); a failure there is an error here naming the exit code."""
    import os
    import subprocess

    from pwm.data import collect
    from pwm.data.collect import NUMERICS_ENVS, CollectConfig, collect_dataset, collect_portably

    calls, real_run = [], subprocess.run
    monkeypatch.setattr(collect.subprocess, "run", lambda *a, **kw: calls.append(kw["env"]) or real_run(*a, **kw))
    config = CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path / "child"), episodes=2, seed=4)
    collect_portably(config)
    assert len(calls) == 1 and calls[0]["MKL_CBWR"] == "COMPATIBLE"
    assert all(calls[0][key] == value for key, value in NUMERICS_ENVS["vendor_neutral"].items())
    collect_dataset(CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path / "here"), episodes=2, seed=4))
    assert dataset_fingerprint(tmp_path / "child") == dataset_fingerprint(tmp_path / "here")
    collect_portably(dataclasses.replace(config, out_dir=str(tmp_path / "intel")), "intel_avx2")
    assert calls[1]["MKL_CBWR"] == "AVX2,STRICT"
    collect_portably(dataclasses.replace(config, out_dir=str(tmp_path / "native")), None)
    assert "MKL_CBWR" not in calls[2] or calls[2]["MKL_CBWR"] == os.environ.get("MKL_CBWR")
    with pytest.raises(ValueError, match=r"numerics='avx3': expected one of \['vendor_neutral', 'intel_avx2'\]"):
        collect_portably(config, "avx3")
    with pytest.raises(RuntimeError, match=r"collecting \['no-such-task'\] into .* failed \(exit code 1"):
        collect_portably(CollectConfig(tasks=["no-such-task"], out_dir=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="not policy=checkpoint"):
        collect_portably(CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path / "c"), policy="checkpoint"))


def test_portable_numerics_setting_names_what_it_takes():
    from pwm.data.collect import numerics_name

    assert [numerics_name(value) for value in (True, False, None, "intel_avx2", "vendor_neutral")] == [
        "vendor_neutral", None, None, "intel_avx2", "vendor_neutral"]
    with pytest.raises(ValueError, match=r"portable_numerics='AVX2': expected true, false or one of"):
        numerics_name("AVX2")


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch build has no MKL")
def test_mkl_runs_the_vendor_neutral_branch_it_is_asked_for():
    """MKL silently ignores a branch it does not know or does not offer on this CPU and uses its per-CPU AUTO
    branch (the fallback that made intel_avx2's data differ on an AMD EPYC), so check what MKL itself reports
    using: vendor_neutral's COMPATIBLE branch is offered on every x86-64 CPU."""
    import os
    import subprocess
    import sys

    from pwm.data.collect import NUMERICS_ENVS

    matmul = "import torch; torch.set_num_threads(1); torch.randn(64, 32) @ torch.randn(32, 16)"
    env = {**os.environ, **NUMERICS_ENVS["vendor_neutral"], "MKL_VERBOSE": "1"}
    verbose = subprocess.run([sys.executable, "-c", matmul], env=env, capture_output=True, text=True, check=True)
    assert "SGEMM" in verbose.stdout and "CNR:COMPATIBLE " in verbose.stdout, verbose.stdout[-500:]


def test_missing_task_is_named_not_numbered(tmp_path):
    write_episodes(tmp_path / "0.pt", *episodes(task=3))
    names = [f"task{i}" for i in range(30)]
    names[5] = "walker-walk"
    with pytest.raises(DatasetError, match=r"no episodes for task 'walker-walk' \(id 5\)"):
        load_dataset(tmp_path, horizon=2, num_tasks=30, tasks=[5], task_names=names)
    assert load_dataset(tmp_path, horizon=2, num_tasks=30, tasks=[3], task_names=names).num_episodes == 3


def test_empty_file_and_short_episodes_are_named(tmp_path, caplog):
    obs, action, reward, task = episodes()
    write_episodes(tmp_path / "empty" / "0.pt", obs[:0], action[:0], reward[:0], task[:0])
    with pytest.raises(DatasetError, match=r"0.pt: holds no episodes"):
        load_dataset(tmp_path / "empty", horizon=2)
    write_episodes(tmp_path / "mixed" / "long.pt", *episodes(num=3, length=6))
    write_episodes(tmp_path / "mixed" / "short.pt", *episodes(num=2, length=2))
    with caplog.at_level("WARNING"):
        buffer = load_dataset(tmp_path / "mixed", horizon=4)
    assert "short.pt (2 episodes of 3 steps)" in caplog.text and "H + 1 = 5" in caplog.text
    assert "long.pt" not in caplog.text and buffer.num_windows > 0


def test_loading_fills_storage_allocated_once_in_blocks_and_filters_tasks(tmp_path):
    from pwm.data import tdmpc2_format

    assert tdmpc2_format.VALIDATION_BLOCK < 300  # several blocks per file, released as they are copied
    generator = torch.Generator().manual_seed(0)
    files = []
    for index in range(2):
        obs = torch.randn(300, 4, 3, generator=generator)
        action, reward = torch.randn(300, 4, 2, generator=generator), torch.randn(300, 4, generator=generator)
        task = (torch.arange(300) % 3 + index)[:, None].expand(300, 4).to(torch.int32)
        write_episodes(tmp_path / f"{index}.pt", obs, action, reward, task)
        files.append((obs, action, reward, task))
    buffer = load_dataset(tmp_path, horizon=2, num_tasks=30)
    assert buffer.obs.shape[0] == buffer.size == 600 * 4  # exact preallocation, no growth
    assert torch.equal(buffer.obs[: buffer.size], torch.cat([f[0] for f in files]).reshape(-1, 3))
    assert torch.equal(buffer.reward[: buffer.size].nan_to_num(-7), torch.cat([f[2] for f in files]).reshape(-1)
                       .nan_to_num(-7))
    only = load_dataset(tmp_path, horizon=2, num_tasks=30, tasks=[2])
    expected = torch.cat([f[0][f[3][:, 0] == 2] for f in files]).reshape(-1, 3)
    assert only.obs.shape[0] == only.size == expected.shape[0] and torch.equal(only.obs[: only.size], expected)
    assert set(only.task[: only.size].tolist()) == {2}


def test_recent_windows_start_within_the_last_steps_only():
    buffer = EpisodeBuffer(obs_dim=4, act_dim=2, horizon=2)
    obs, action, reward, _ = episodes(num=3, length=6)
    buffer.add_episodes(obs, action, reward, torch.zeros(3))  # 3 x 7 steps, episode ids 0, 1, 2
    generator = torch.Generator().manual_seed(0)
    assert set(buffer.sample(200, generator).obs[0, :, 0].tolist()) == {0.0, 1.0, 2.0}
    recent = buffer.sample(200, generator, recent_steps=7)  # the last episode's 7 steps: its windows at t = 0..4
    assert set(recent.obs[0, :, 0].tolist()) == {2.0} and set(recent.obs[0, :, 1].tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}
    straddling = buffer.sample(200, generator, recent_steps=9)  # also t = 5, 6 of episode 1: no window starts there
    assert set(straddling.obs[0, :, 0].tolist()) == {2.0}
    assert set(buffer.sample(200, generator, recent_steps=12).obs[0, :, 0].tolist()) == {1.0, 2.0}
    with pytest.raises(ValueError, match="in the last 2 steps"):
        buffer.sample(4, generator, recent_steps=2)


def test_random_action_episodes_follow_a_checkpoint_policys_on_new_reset_seeds(tmp_path):
    """``random_mix_episodes`` after ``checkpoint`` episodes: uniform actions, and reset seeds that continue
    the policy's (a duplicate start state would hold out or weight one state twice)."""
    from pwm.data.collect import CollectConfig, collect_dataset

    config = CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path), policy="checkpoint", episodes=2,
                           random_mix_episodes=2, seed=1)
    (path,) = collect_dataset(config, policies={"cartpole-balance": lambda obs: np.zeros(1)})
    chunk = read_chunk(path, num_tasks=1)
    assert chunk["action"].shape == (4, 501, 1)
    assert chunk["action"][:2, 1:].abs().max() == 0 and chunk["action"][2:, 1:].abs().mean() > 0.3
    starts = chunk["obs"][:, 0]
    assert len({tuple(row.tolist()) for row in starts}) == 4
    with pytest.raises(ValueError, match="random_mix_episodes must be >= 0"):
        collect_dataset(CollectConfig(tasks=["cartpole-balance"], out_dir=str(tmp_path), random_mix_episodes=-1))


def test_data_portability_benchmark_names_the_cpus_whose_data_differs():
    """benchmarks/data_portability.py: this CPU's fingerprint of a recipe against the other CPUs' rows of the same
    numerics and recipe; rows of another recipe or numerics are not compared."""
    from conftest import load_benchmark

    compare = load_benchmark("data_portability").compare
    recipe = {"task": "cartpole-balance", "sac_steps": "3000", "seed": "12345"}

    def row(cpu, numerics, fingerprint, **changed):
        return {"cpu": cpu, "cpu_id": "family 6", "numerics": numerics, "fingerprint": fingerprint, "seconds": "9.0",
                **recipe, **changed}

    rows = [row("Xeon", "vendor_neutral", "a" * 64), row("Xeon", "intel_avx2", "b" * 64),
            row("EPYC", "vendor_neutral", "a" * 64), row("EPYC", "intel_avx2", "c" * 64),
            row("Zen", "vendor_neutral", "d" * 64, sac_steps="1000")]
    mine = {"cpu": "Xeon", "cpu_id": "family 6", **recipe}
    lines = compare(rows, mine)
    assert len(lines) == 2 and "same on 2 CPUs" in lines[0] and lines[0].split()[:2] == ["vendor_neutral", "a" * 12]
    assert "DIFFERS from EPYC, family 6 (cccccccccccc)" in lines[1]
    assert "no other CPU has run this recipe yet" in compare(rows, {**mine, "cpu": "Zen", "sac_steps": "1000"})[0]
