"""Durable file writes: fsync, write-then-rename and JSON reports, shared by every writer in the engine."""

from __future__ import annotations

import json
import math
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


def clean_json(value):
    """JSON has no inf / NaN: write them as strings that ``float()`` parses back (reports and analyses)."""
    if isinstance(value, float) and (value != value or value in (math.inf, -math.inf)):
        return str(value)
    if isinstance(value, dict):
        return {k: clean_json(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(x) for x in value]
    return value


def _json_value(value):
    if hasattr(value, "tolist"):  # tensors and numpy arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def write_json_atomic(path: os.PathLike, data) -> None:
    """Write ``data`` as indented JSON to a temporary file beside ``path``, then rename it over ``path``."""
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_value))
