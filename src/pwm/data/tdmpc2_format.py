"""TD-MPC2's offline dataset format: one TensorDict per ``.pt`` file with batch size ``[N, T+1]``.

==========  ==================  ===========================================================
key         shape               meaning
==========  ==================  ===========================================================
obs         [N, T+1, obs_dim]   observations (zero-padded to the task set's widest task)
action      [N, T+1, act_dim]   ``action[:, t]`` led to ``obs[:, t]``; row 0 is NaN (or arbitrary)
reward      [N, T+1]            reward of that transition; row 0 is NaN (or arbitrary)
task        [N, T+1]            task id (index in the task set), constant along an episode
==========  ==================  ===========================================================

:func:`read_chunk` validates a file and raises :class:`DatasetError` naming the file and the field.
Row 0 of action and reward is never read: our writer fills it with NaN, TD-MPC2's 2023 release
left it uninitialised (arbitrary values), and both are accepted.
Files are pickled TensorDicts, so loading one runs pickle: only load data you trust.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import logging
import mmap as mmap_module
from pathlib import Path

import torch
from tensordict import TensorDict

from pwm.data.buffer import EpisodeBuffer
from pwm.envs.tasks import action_dim, observation_dim, set_obs_width
from pwm.utils.common import atomic_torch_save

FIELDS = ("obs", "action", "reward", "task")

log = logging.getLogger(__name__)


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


def _load(path: Path, mmap: bool) -> tuple[object, bool]:
    """``torch.load`` of a dataset file, and whether it is memory-mapped: when asked and the file
    allows it (``torch.save``'s zip format), so only the pages that are read become resident."""
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=False, mmap=True), True
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
        return torch.load(path, map_location="cpu", weights_only=False), False
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DatasetError(f"{path}: cannot be read as a torch file ({type(exc).__name__}: {exc})") from exc


def read_chunk(path: str | Path, num_tasks: int | None = None, mmap: bool = False,
               check_values: bool = True) -> dict[str, torch.Tensor]:
    """Load and validate one file; returns ``{"obs", "action", "reward", "task"}`` tensors (float32
    obs/action/reward as stored, task ids in the file's integer dtype, no copies).

    Checks: readable; a TensorDict or dict with the four keys; shapes ``[N, T+1, ...]`` that agree;
    floating obs/action/reward and integer task; finite values everywhere except row 0 of
    action/reward (unless ``check_values`` is false: the caller then runs :func:`check_finite` on
    blocks of episodes); task ids in ``[0, num_tasks)`` and constant within each episode.
    """
    return _read_chunk(Path(path), num_tasks, mmap, check_values)[0]


def _read_chunk(path: Path, num_tasks: int | None, mmap: bool,
                check_values: bool) -> tuple[dict[str, torch.Tensor], bool]:
    """:func:`read_chunk`, and whether the file is memory-mapped."""
    data, mapped = _load(path, mmap)
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
    if lead[0] == 0:
        raise DatasetError(f"{path}: holds no episodes (fields have leading shape {tuple(lead)})")
    if lead[1] < 2:
        raise DatasetError(f"{path}: episodes have {lead[1]} steps; need at least 2 (T+1 >= 2)")
    for key in ("obs", "action", "reward"):
        if not fields[key].is_floating_point():
            raise DatasetError(f"{path}: field '{key}' has dtype {fields[key].dtype}, expected floating point")
    if fields["task"].is_floating_point() or fields["task"].dtype == torch.bool:
        raise DatasetError(f"{path}: field 'task' has dtype {fields['task'].dtype}, expected an integer dtype")
    task = fields["task"]
    if (task != task[:, :1]).any():
        raise DatasetError(f"{path}: field 'task' changes within episode {_first_bad((task != task[:, :1]).any(1))[0]}")
    if task.min() < 0 or (num_tasks is not None and task.max() >= num_tasks):
        raise DatasetError(
            f"{path}: field 'task' has ids in [{task.min().item()}, {task.max().item()}], "
            f"outside [0, {num_tasks}) for this task set"
        )
    chunk = {"obs": fields["obs"].float(), "action": fields["action"].float(),
             "reward": fields["reward"].float(), "task": task}
    if check_values:
        for start in range(0, lead[0], VALIDATION_BLOCK):
            check_finite(path, chunk, start, min(start + VALIDATION_BLOCK, lead[0]))
    return chunk, mapped


#: Episodes validated (and, when loading, copied) at a time: bounds the temporaries of the checks.
VALIDATION_BLOCK = 256


def check_finite(path: Path, chunk: dict[str, torch.Tensor], start: int, stop: int) -> None:
    """Raise if episodes ``start..stop-1`` hold NaN/Inf anywhere except row 0 of action/reward."""
    bad_obs = ~torch.isfinite(chunk["obs"][start:stop]).all(-1)
    if bad_obs.any():
        episode, t = _first_bad(bad_obs)
        raise DatasetError(f"{path}: field 'obs' has NaN/Inf at (episode, t) = ({start + episode}, {t})")
    for key in ("action", "reward"):
        values = chunk[key][start:stop, 1:]
        bad = ~torch.isfinite(values.reshape(*values.shape[:2], -1)).all(-1)
        if bad.any():
            episode, t = _first_bad(bad)
            raise DatasetError(f"{path}: field '{key}' has NaN/Inf at (episode, t) = ({start + episode}, {t + 1}); "
                               "only t=0 may be NaN")


def _release(tensor: torch.Tensor, start: int, stop: int) -> None:
    """Drop the resident pages of rows ``start..stop-1`` of a memory-mapped, read-only tensor (they
    are re-read from the file if touched again), so a file is never resident whole while loading.
    Only for tensors :func:`_load` memory-mapped (on ordinary memory it would zero the rows); a no-op
    where ``madvise`` is unavailable."""
    libc = _libc()
    if libc is None or not tensor.is_contiguous():
        return
    row = tensor[0].numel() * tensor.element_size()
    page = mmap_module.PAGESIZE
    begin = tensor.data_ptr() + start * row
    aligned = begin - begin % page + (page if begin % page else 0)  # only whole pages inside the range
    end = tensor.data_ptr() + stop * row
    length = (end - aligned) // page * page
    if length > 0:
        libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(length), mmap_module.MADV_DONTNEED)


@functools.cache
def _libc():
    if not hasattr(mmap_module, "MADV_DONTNEED"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _kept_episodes(path: Path, tasks: list[int] | None) -> tuple[int, int] | None:
    """(kept episodes, steps per episode) of a file from its shapes and task column alone (memory-mapped,
    so the rest of the file is not read); None if the file cannot tell (:func:`read_chunk` then names
    the problem)."""
    try:
        data, _ = _load(path, mmap=True)
        obs, task = data["obs"], data["task"]
        if obs.dim() != 3 or task.dim() != 2 or task.shape[:2] != obs.shape[:2]:
            return None
        kept = obs.shape[0] if tasks is None else int(torch.isin(task[:, 0], torch.tensor(tasks)).sum())
        return kept, int(obs.shape[1])
    except Exception:  # noqa: BLE001 - validation comes later, with a precise message
        return None


def dataset_files(data_dir: str | Path) -> list[Path]:
    """The ``*.pt`` files of a dataset folder (recursively, sorted); raises if there are none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"dataset folder {data_dir} does not exist")
    files = sorted(data_dir.rglob("*.pt"))
    if not files:
        raise DatasetError(f"dataset folder {data_dir} holds no *.pt files")
    return files


def dataset_fingerprint(data_dir: str | Path) -> str:
    """SHA-256 (hex) of a dataset's content: each ``*.pt`` file's path within ``data_dir`` and the bytes of
    its four fields, in :func:`dataset_files` order. Equal fingerprints = the same episodes in the same
    files, whatever machine wrote them and however the files were serialised."""
    data_dir, digest = Path(data_dir), hashlib.sha256()
    for path in dataset_files(data_dir):
        digest.update(path.relative_to(data_dir).as_posix().encode())
        chunk = read_chunk(path, check_values=False)
        for field in FIELDS:
            tensor = chunk[field].contiguous()
            digest.update(f"{field}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    short: list[str] = []
    files = dataset_files(data_dir)
    # First pass, shapes only: the storage is allocated once at its final size (no growth by
    # doubling, no copies), and torch.empty does not touch its pages until they are filled.
    capacity = sum(k * t for k, t in filter(None, (_kept_episodes(path, tasks) for path in files)))
    for path in files:
        chunk, mapped = _read_chunk(path, num_tasks, mmap=True, check_values=False)
        obs_dim, chunk_act_dim = chunk["obs"].shape[-1], chunk["action"].shape[-1]
        if buffer is None:
            if act_dim is not None and chunk_act_dim != act_dim:
                raise DatasetError(f"{path}: field 'action' has {chunk_act_dim} dims, expected {act_dim}")
            buffer, first = EpisodeBuffer(obs_dim, chunk_act_dim, horizon, capacity=max(capacity, 1)), path
        elif (obs_dim, chunk_act_dim) != (buffer.obs_dim, buffer.act_dim):
            raise DatasetError(
                f"{path}: obs/action widths ({obs_dim}, {chunk_act_dim}) differ from "
                f"({buffer.obs_dim}, {buffer.act_dim}) in {first}"
            )
        episode_task = chunk["task"][:, 0].clone()
        wanted = torch.ones_like(episode_task, dtype=torch.bool) if tasks is None \
            else torch.isin(episode_task, torch.tensor(tasks))
        kept = int(wanted.sum())
        if kept and chunk["obs"].shape[1] < horizon + 1:
            short.append(f"{path} ({kept} episodes of {chunk['obs'].shape[1]} steps)")
        # block by block: check, copy the wanted episodes straight into the storage, release the block
        for start in range(0, chunk["obs"].shape[0], VALIDATION_BLOCK):
            stop = min(start + VALIDATION_BLOCK, chunk["obs"].shape[0])
            index = wanted[start:stop].nonzero()[:, 0] + start
            if index.numel():
                check_finite(path, chunk, start, stop)
                whole = index.numel() == stop - start
                buffer.add_episodes(*(chunk[k][start:stop] if whole else chunk[k] for k in ("obs", "action", "reward")),
                                    episode_task[index], heldout_mask(buffer.num_episodes, index.numel(),
                                                                      heldout_fraction),
                                    index=None if whole else index)
            if mapped:
                for key in ("obs", "action", "reward", "task"):
                    _release(chunk[key], start, stop)
        del chunk  # drops the file's memory map before the next one is read
    if buffer is None or buffer.num_episodes == 0:
        wanted = ""
        if tasks is not None:
            named = task_names is not None
            wanted = " for " + ", ".join(f"task {task_names[t]!r} (id {t})" if named and t < len(task_names)
                                         else f"task id {t}" for t in tasks)
        raise DatasetError(f"{data_dir}: no episodes{wanted}")
    if short:
        log.warning("%s: %d file(s) hold episodes shorter than H + 1 = %d steps, which give no training window "
                    "and are not trained on: %s", data_dir, len(short), horizon + 1, "; ".join(short))
    if buffer.num_windows == 0:
        raise DatasetError(f"{data_dir}: no training window of {horizon + 1} steps in {buffer.num_episodes} episodes "
                           f"({buffer.num_heldout_episodes} held out for validation)")
    return buffer


def check_dataset_widths(tasks: list[str], present: list[int], obs_dim: int, act_dim: int, where: str) -> None:
    """Check a multi-task dataset's padded widths against its task set; raises naming the task and widths.

    Every task present in the data must fit (its observation and action widths at most the dataset's),
    and observations must be padded to exactly the set's widest task, as TD-MPC2's (and our
    collector's) datasets are: MT30 data is 24 wide, MT80 data 39, so one set's data is not taken
    for the other's.
    """
    for task_id in present:
        name = tasks[task_id]
        task_obs, task_act = observation_dim(name), action_dim(name)
        if task_obs is not None and task_obs > obs_dim:
            raise DatasetError(f"{where}: field 'obs' is {obs_dim} wide, but task {name!r} (id {task_id}) has "
                               f"{task_obs}-dim observations: the data was not collected for this task set")
        if task_act > act_dim:
            raise DatasetError(f"{where}: field 'action' is {act_dim} wide, but task {name!r} (id {task_id}) has "
                               f"{task_act}-dim actions")
    widest = set_obs_width(tasks)
    if obs_dim != widest:
        raise DatasetError(f"{where}: field 'obs' is {obs_dim} wide, but this task set's data is padded to its "
                           f"widest task, {widest}: the data was collected for another task set")
