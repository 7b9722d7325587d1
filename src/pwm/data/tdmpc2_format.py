"""TD-MPC2's offline dataset format: one TensorDict per ``.pt`` file with batch size ``[N, T+1]``.

==========  ==================  ===========================================================
key         shape               meaning
==========  ==================  ===========================================================
obs         [N, T+1, obs_dim]   observations (zero-padded to the task set's widest task)
action      [N, T+1, act_dim]   ``action[:, t]`` led to ``obs[:, t]``; row 0 is NaN
reward      [N, T+1]            reward of that transition; row 0 is NaN
task        [N, T+1]            task id (index in the task set), constant along an episode
==========  ==================  ===========================================================

:func:`read_chunk` validates a file and raises :class:`DatasetError` naming the file and the field.
Files are pickled TensorDicts, so loading one runs pickle: only load data you trust.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict

from pwm.data.buffer import EpisodeBuffer
from pwm.utils.common import atomic_torch_save

FIELDS = ("obs", "action", "reward", "task")


class DatasetError(ValueError):
    """A dataset file that does not follow the TD-MPC2 format."""


def write_episodes(path: str | Path, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                   task: torch.Tensor) -> Path:
    """Write ``N`` episodes as one TD-MPC2 TensorDict file (atomically). Shapes as in the module table."""
    data = TensorDict(
        {"obs": obs.float(), "action": action.float(), "reward": reward.float(), "task": task.long()},
        batch_size=list(obs.shape[:2]),
    )
    return atomic_torch_save(data, path)


def _first_bad(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def read_chunk(path: str | Path, num_tasks: int | None = None) -> dict[str, torch.Tensor]:
    """Load and validate one file; returns ``{"obs", "action", "reward", "task"}`` tensors.

    Checks: readable; a TensorDict or dict with the four keys; shapes ``[N, T+1, ...]`` that agree;
    floating obs/action/reward and integer task; finite values everywhere except row 0 of
    action/reward; task ids in ``[0, num_tasks)`` and constant within each episode.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DatasetError(f"{path}: cannot be read as a torch file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, (TensorDict, dict)):
        raise DatasetError(f"{path}: expected a TensorDict with keys {FIELDS}, got {type(data).__name__}")
    missing = [k for k in FIELDS if k not in data.keys()]
    if missing:
        raise DatasetError(f"{path}: missing field(s) {missing}; found {sorted(data.keys())}")
    fields = {k: data[k] for k in FIELDS}
    for key, value in fields.items():
        if not torch.is_tensor(value):
            raise DatasetError(f"{path}: field '{key}' is {type(value).__name__}, expected a tensor")
    expected_dims = {"obs": 3, "action": 3, "reward": 2, "task": 2}
    for key, ndim in expected_dims.items():
        if fields[key].dim() != ndim:
            raise DatasetError(f"{path}: field '{key}' has shape {tuple(fields[key].shape)}, expected {ndim} dims")
    lead = fields["obs"].shape[:2]
    for key in FIELDS:
        if fields[key].shape[:2] != lead:
            raise DatasetError(
                f"{path}: field '{key}' has leading shape {tuple(fields[key].shape[:2])}, obs has {tuple(lead)}"
            )
    if lead[1] < 2:
        raise DatasetError(f"{path}: episodes have {lead[1]} steps; need at least 2 (T+1 >= 2)")
    for key in ("obs", "action", "reward"):
        if not fields[key].is_floating_point():
            raise DatasetError(f"{path}: field '{key}' has dtype {fields[key].dtype}, expected floating point")
    if fields["task"].is_floating_point() or fields["task"].dtype == torch.bool:
        raise DatasetError(f"{path}: field 'task' has dtype {fields['task'].dtype}, expected an integer dtype")
    bad_obs = ~torch.isfinite(fields["obs"]).all(-1)
    if bad_obs.any():
        raise DatasetError(f"{path}: field 'obs' has NaN/Inf at (episode, t) = {_first_bad(bad_obs)}")
    for key in ("action", "reward"):
        bad = ~torch.isfinite(fields[key][:, 1:].reshape(lead[0], lead[1] - 1, -1)).all(-1)
        if bad.any():
            episode, t = _first_bad(bad)
            raise DatasetError(f"{path}: field '{key}' has NaN/Inf at (episode, t) = ({episode}, {t + 1}); "
                               "only t=0 may be NaN")
    task = fields["task"].long()
    if (task != task[:, :1]).any():
        raise DatasetError(f"{path}: field 'task' changes within episode {_first_bad((task != task[:, :1]).any(1))[0]}")
    if task.min() < 0 or (num_tasks is not None and task.max() >= num_tasks):
        raise DatasetError(
            f"{path}: field 'task' has ids in [{task.min().item()}, {task.max().item()}], "
            f"outside [0, {num_tasks}) for this task set"
        )
    return {"obs": fields["obs"].float(), "action": fields["action"].float(),
            "reward": fields["reward"].float(), "task": task}


def dataset_files(data_dir: str | Path) -> list[Path]:
    """The ``*.pt`` files of a dataset folder (recursively, sorted); raises if there are none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"dataset folder {data_dir} does not exist")
    files = sorted(data_dir.rglob("*.pt"))
    if not files:
        raise DatasetError(f"dataset folder {data_dir} holds no *.pt files")
    return files


def heldout_mask(first_episode: int, num: int, fraction: float) -> torch.Tensor:
    """Which of the episodes ``first_episode .. first_episode + num - 1`` (in load order) are held out.

    Episode ``k`` is held out when ``ceil((k + 1) * fraction) > ceil(k * fraction)``: exactly
    ``ceil(N * fraction)`` of the first N episodes, evenly spaced (so a dataset ordered by collection
    time, such as the replay of a learning agent, is validated across its whole range), episode 0
    first, so any ``fraction > 0`` holds out at least one episode.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {fraction}")
    k = torch.arange(first_episode, first_episode + num, dtype=torch.float64)
    return torch.ceil((k + 1) * fraction) > torch.ceil(k * fraction)


def load_dataset(data_dir: str | Path, horizon: int, num_tasks: int | None = None,
                 tasks: list[int] | None = None, act_dim: int | None = None,
                 heldout_fraction: float = 0.0, task_names: list[str] | None = None) -> EpisodeBuffer:
    """Validate every file of a dataset folder and load it into an :class:`EpisodeBuffer`.

    Args:
        horizon: window length H the buffer samples (``H + 1`` observations).
        num_tasks: size of the task set, for the task-id range check.
        tasks: keep only episodes of these task ids (e.g. one task for per-task policy extraction).
        act_dim: expected (padded) action width, checked when given.
        heldout_fraction: share of episodes kept out of training, for validation (see :func:`heldout_mask`).
        task_names: names of the task set's ids, so errors name tasks rather than ids.
    """
    buffer: EpisodeBuffer | None = None
    first: Path | None = None
    for path in dataset_files(data_dir):
        chunk = read_chunk(path, num_tasks)
        obs_dim, chunk_act_dim = chunk["obs"].shape[-1], chunk["action"].shape[-1]
        if buffer is None:
            if act_dim is not None and chunk_act_dim != act_dim:
                raise DatasetError(f"{path}: field 'action' has {chunk_act_dim} dims, expected {act_dim}")
            buffer, first = EpisodeBuffer(obs_dim, chunk_act_dim, horizon, capacity=1024), path
        elif (obs_dim, chunk_act_dim) != (buffer.obs_dim, buffer.act_dim):
            raise DatasetError(
                f"{path}: obs/action widths ({obs_dim}, {chunk_act_dim}) differ from "
                f"({buffer.obs_dim}, {buffer.act_dim}) in {first}"
            )
        keep = torch.ones(chunk["obs"].shape[0], dtype=torch.bool)
        if tasks is not None:
            keep = torch.isin(chunk["task"][:, 0], torch.tensor(tasks))
        if keep.any():
            kept = int(keep.sum())
            buffer.add_episodes(chunk["obs"][keep], chunk["action"][keep], chunk["reward"][keep],
                                chunk["task"][keep, 0], heldout_mask(buffer.num_episodes, kept, heldout_fraction))
    if buffer is None or buffer.num_episodes == 0:
        wanted = ""
        if tasks is not None:
            named = task_names is not None
            wanted = " for " + ", ".join(f"task {task_names[t]!r} (id {t})" if named and t < len(task_names)
                                         else f"task id {t}" for t in tasks)
        raise DatasetError(f"{data_dir}: no episodes{wanted}")
    if buffer.num_windows == 0:
        raise DatasetError(f"{data_dir}: no training window of {horizon + 1} steps in {buffer.num_episodes} episodes "
                           f"({buffer.num_heldout_episodes} held out for validation)")
    return buffer
