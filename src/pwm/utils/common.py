"""Device selection, seeding, atomic file writes and child-process hygiene."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op torch threads (None keeps PyTorch's default, one per core).

    Small models on a shared CPU run 10-100x slower when several jobs each start one thread per
    core, so jobs that run side by side should get 1 each.
    """
    if threads is None:
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1 or null, got {threads}")
    torch.set_num_threads(int(threads))


#: Float32 matmul precisions (``matmul_precision`` of the training configs): ``torch.set_float32_matmul_precision``.
MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(precision: str) -> None:
    """How float32 matmuls are computed, process-wide: ``highest`` in float32; ``high`` lets CUDA use TF32;
    ``medium`` also lets them run in bfloat16 with float32 accumulation (on CPUs with AMX, oneDNN's bf16
    kernels: this machine's measured matmul rate 3x, at 2e-3 relative error per product; on CUDA, TF32/bf16).
    Opt-in like TF32: results are no longer float32's."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    torch.set_float32_matmul_precision(precision)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _atomic_write(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results unreadable to others
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, then rename: a crash never leaves half a file."""
    return _atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by the training loops, with an error that names the file if it is
    missing or unreadable."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write text atomically (temp file + rename)."""
    return _atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_savefig(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` atomically (temp file + rename); the format comes from ``path``'s suffix."""
    path = Path(path)
    return _atomic_write(path, lambda handle: fig.savefig(handle, format=path.suffix.lstrip(".") or None, **kwargs))


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive lock on ``path`` between processes (parallel sweep jobs writing shared files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git_commit(path: str | Path | None = None) -> str | None:
    """Short hash of the checkout holding ``path`` (default: this package), ``+dirty`` when it has
    uncommitted changes to tracked files; None outside a git checkout (e.g. an installed wheel)."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``, which also names e.g. "AMD EPYC"; elsewhere
    ``platform.processor()``), with ``+avx512`` when it has AVX-512: runs timed on different CPUs are not
    comparable by wall-clock (one A/B took 9.5 minutes on an Intel Xeon with AVX-512, 18 on an AMD EPYC
    without)."""
    fields = cpuinfo_fields()
    if not fields:
        return platform.processor() or platform.machine()
    name = " ".join(fields.get("model name", platform.machine()).split())
    flags = fields.get("flags", "").split()
    return name + ("+avx512" if "avx512f" in flags else "")


def cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields in Linux's ``/proc/cpuinfo`` (``model name``, ``vendor_id``, ``cpu family``,
    ``flags``, ...), values stripped; empty where there is no such file."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in info.splitlines():  # "key<tabs>: value", the first processor's block first
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


#: ``prctl`` option asking the kernel to signal this process when its parent exits (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to the calling process when its parent process exits (Linux).

    For worker processes and the training runs they launch: without it, stopping a benchmark leaves
    its runs going on in the background, holding the cores. Use it as a ``ProcessPoolExecutor``
    ``initializer`` or a ``subprocess`` ``preexec_fn``. Elsewhere than Linux it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have exited before the request took effect; then nothing would ever signal us.
    if os.getppid() == 1:
        os.kill(os.getpid(), sig)
