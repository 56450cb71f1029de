"""Durable file-system writes shared by the checkpoint and rollout stores."""

from __future__ import annotations

import os
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
