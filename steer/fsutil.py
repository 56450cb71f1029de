"""Durable file-system writes shared by the checkpoint and rollout stores."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries (making a rename in it durable), to disk. A no-op where the path cannot
    be opened for reading, as folders on Windows."""
    try:
        fd = os.open(Path(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_once(target: str | os.PathLike, marker: str, build: Callable[[Path], None]) -> Path:
    """A cache folder built at most once: ``build(tmp)`` fills a temporary sibling of ``target`` that is renamed
    into place when complete, so an interrupted build leaves nothing behind and concurrent builders agree on one
    result. ``marker`` is a file ``build`` writes last; its presence means the folder is complete."""
    target = Path(target)
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its folder
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
