"""Durable file writes: fsync and write-then-rename, shared by every writer in the engine."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: os.PathLike) -> None:
    """fsync a file, or a folder so that renames in it are durable; silently skipped where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fsync_tree(folder: os.PathLike) -> None:
    """fsync every file directly in ``folder``, then the folder itself."""
    folder = Path(folder)
    for f in folder.iterdir():
        if f.is_file():
            fsync_path(f)
    fsync_path(folder)
