"""Episode storage that samples ``H + 1``-step windows which never cross an episode boundary.

Episodes use TD-MPC2's layout: ``obs [T+1, obs_dim]``, ``action [T+1, act_dim]``, ``reward [T+1]`` where
``action[t]``/``reward[t]`` are the action that led to ``obs[t]`` and the reward it earned, so row 0 holds
NaN. A window starting at ``s`` is ``obs[s..s+H]`` with ``action[s+1..s+H]`` and ``reward[s+1..s+H]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class WindowBatch:
    """A batch of windows, time-major: ``obs [H+1, B, obs_dim]``, ``action [H, B, A]``, ``reward [H, B]``,
    ``task [B]`` (long)."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    task: torch.Tensor

    def to(self, device: torch.device | str) -> WindowBatch:
        return WindowBatch(*(t.to(device, non_blocking=True) for t in (self.obs, self.action, self.reward, self.task)))


class EpisodeBuffer:
    """Growable flat storage of episodes with an index of valid window starts.

    Episodes can be marked *held out* when added: their windows are never drawn for training
    (``sample(split="train")``) and form the validation windows of ``sample(split="heldout")``,
    on which the world-model diagnostics and the pretraining plateau rule are computed.

    Args:
        obs_dim, act_dim: widths of the stored observations and actions.
        horizon: H; every window has ``H + 1`` observations.
        capacity: initial capacity in steps (doubled when full; nothing is evicted). Offline loaders
            pass the exact total, so the storage is allocated once and filled in place.

    Memory per stored step: the observation, action and reward (float32), the task id (int32) and,
    per window start, one int32 index (int64 beyond 2**31 steps).
    """

    SPLITS = ("train", "heldout")

    def __init__(self, obs_dim: int, act_dim: int, horizon: int, capacity: int = 10_000):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.obs_dim, self.act_dim, self.horizon = obs_dim, act_dim, horizon
        self.obs = torch.empty(capacity, obs_dim)
        self.action = torch.empty(capacity, act_dim)
        self.reward = torch.empty(capacity)
        self.task = torch.empty(capacity, dtype=torch.int32)
        self.size = 0
        self.num_episodes = 0
        self.num_heldout_episodes = 0
        self._starts: dict[str, list[torch.Tensor]] = {split: [] for split in self.SPLITS}
        self._start_index: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.size

    @property
    def num_windows(self) -> int:
        """Number of training windows."""
        return int(self.window_starts().numel())

    @property
    def num_heldout_windows(self) -> int:
        return int(self.window_starts("heldout").numel())

    def window_starts(self, split: str = "train") -> torch.Tensor:
        """Flat indices at which a full window of ``split`` begins ``[num_windows]``."""
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        if split not in self._start_index:
            parts = self._starts[split]
            self._start_index[split] = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int32)
        return self._start_index[split]

    def _grow(self, needed: int) -> None:
        capacity = self.obs.shape[0]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)
        for name in ("obs", "action", "reward", "task"):
            old = getattr(self, name)
            new = torch.empty((new_capacity, *old.shape[1:]), dtype=old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)

    def add_episode(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, task: int = 0,
                    heldout: bool = False) -> None:
        """Append one episode in TD-MPC2 layout (``obs [T+1, obs_dim]``, ``action [T+1, A]``, ``reward [T+1]``)."""
        self.add_episodes(obs[None], action[None], reward[None], torch.tensor([int(task)]), torch.tensor([heldout]))

    def add_episodes(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, task: torch.Tensor,
                     heldout: torch.Tensor | None = None, index: torch.Tensor | None = None) -> None:
        """Append ``N`` equal-length episodes: ``obs [N, T+1, obs_dim]``, ``action [N, T+1, A]``,
        ``reward [N, T+1]``, ``task [N]``; ``heldout [N]`` (bool) marks validation episodes.

        With ``index [K]`` only those episodes of ``obs``/``action``/``reward`` are appended (``task`` and
        ``heldout`` then have K entries), copied straight into the storage without an intermediate copy.
        """
        total, length = obs.shape[:2]
        num = total if index is None else int(index.numel())
        if heldout is None:
            heldout = torch.zeros(num, dtype=torch.bool)
        if (obs.shape[2:] != (self.obs_dim,) or action.shape != (total, length, self.act_dim)
                or reward.shape != (total, length) or task.shape != (num,) or heldout.shape != (num,)):
            raise ValueError(
                f"episode shapes obs {tuple(obs.shape)}, action {tuple(action.shape)}, reward {tuple(reward.shape)}, "
                f"task {tuple(task.shape)}, heldout {tuple(heldout.shape)} do not match [N, T+1, {self.obs_dim}], "
                f"[N, T+1, {self.act_dim}], [N, T+1], [N], [N]"
            )
        self._grow(self.size + num * length)
        end = self.size + num * length
        for name, source in (("obs", obs), ("action", action), ("reward", reward)):
            target = getattr(self, name)[self.size:end].view(num, *source.shape[1:])
            if index is None:
                target.copy_(source)
            else:
                torch.index_select(source, 0, index, out=target)
        self.task[self.size:end] = task.to(torch.int32).repeat_interleave(length)
        if length > self.horizon:
            episode_offsets = self.size + length * torch.arange(num)
            starts = episode_offsets[:, None] + torch.arange(length - self.horizon)  # [N, windows per episode]
            if end < 2**31:
                starts = starts.to(torch.int32)
            heldout = heldout.bool()
            for split, rows in (("train", ~heldout), ("heldout", heldout)):
                if rows.any():
                    self._starts[split].append(starts[rows].reshape(-1))
                    self._start_index.pop(split, None)
        self.size = end
        self.num_episodes += num
        self.num_heldout_episodes += int(heldout.sum())

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               task: int | None = None, split: str = "train", recent_steps: int = 0) -> WindowBatch:
        """``batch_size`` windows of ``split`` drawn uniformly (with replacement); ``task`` restricts to one
        task id, ``recent_steps > 0`` to windows that start within the last ``recent_steps`` stored steps."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = self.window_starts(split)
        if task is not None:
            starts = starts[self.task[starts] == task]
        if recent_steps > 0:
            starts = starts[starts >= self.size - recent_steps]
        if starts.numel() == 0:
            which = f" for task {task}" if task is not None else ""
            which += f" in the last {recent_steps} steps" if recent_steps > 0 else ""
            raise ValueError(
                f"no {split} window of {self.horizon + 1} steps available{which} ({self.num_episodes} episodes, "
                f"{self.num_heldout_episodes} held out, {self.size} steps stored)"
            )
        pick = starts[torch.randint(starts.numel(), (batch_size,), generator=generator)].long()
        steps = pick[None, :] + torch.arange(self.horizon + 1)[:, None]  # [H+1, B]
        return WindowBatch(self.obs[steps], self.action[steps[1:]], self.reward[steps[1:]], self.task[pick].long())

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {"obs": self.obs[: self.size].clone(), "action": self.action[: self.size].clone(),
                "reward": self.reward[: self.size].clone(), "task": self.task[: self.size].clone(),
                "starts": self.window_starts().clone(), "heldout_starts": self.window_starts("heldout").clone(),
                "num_episodes": self.num_episodes, "num_heldout_episodes": self.num_heldout_episodes}

    def load_state_dict(self, state: dict) -> None:
        size = state["obs"].shape[0]
        self.size = 0
        self._grow(size)
        for name in ("obs", "action", "reward", "task"):
            getattr(self, name)[:size] = state[name]
        self.size, self.num_episodes = size, int(state["num_episodes"])
        self.num_heldout_episodes = int(state.get("num_heldout_episodes", 0))
        heldout = state.get("heldout_starts", torch.empty(0, dtype=torch.long))
        self._starts, self._start_index = {"train": [state["starts"]], "heldout": [heldout]}, {}
