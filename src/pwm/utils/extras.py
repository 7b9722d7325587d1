"""Optional extras (``pip install -e ".[wandb]"``, ``".[video]"``): checked before any work starts, so a
missing package ends a run at once with the command that installs it, not with a bare import error
hours in."""

from __future__ import annotations

import importlib.util
from typing import Any


class MissingExtraError(ImportError):
    """An option is on whose optional package is not installed."""


def require_extra(module: str, extra: str, setting: str) -> None:
    """Raise :class:`MissingExtraError` naming ``setting`` and the install command if ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"{setting} needs the optional package {module!r}, which is not installed: "
                                f'pip install -e ".[{extra}]"')


def check_optional_extras(cfg: Any) -> None:
    """Check every option of a run config that needs an extra: ``<section>.wandb`` and
    ``<section>.video`` with ``format: mp4``, for the sections ``train`` and ``pretrain``."""
    for section in ("train", "pretrain"):
        node = cfg.get(section) if hasattr(cfg, "get") else None
        if node is None:
            continue
        if node.get("wandb", False):
            require_extra("wandb", "wandb", f"{section}.wandb=true")
        video = node.get("video")
        if video and video.get("episodes", 0) and video.get("format") == "mp4":
            require_extra("imageio_ffmpeg", "video", f"{section}.video.format=mp4 (or use gif)")
