"""Path arguments checked before any work starts: each problem gets one line that names the flag,
the path and the fix (never a traceback from deep inside a loader or ``mkdir``)."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import Optional

from ..errors import LowbitError


def _describe(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))


def model_folder(path: str, flag: str = "--model") -> Path:
    """A model folder: must exist and be a folder (what is in it, the loader checks)."""
    p = Path(path).expanduser()
    if str(path).strip().lower() == "demo":
        return p
    if not p.exists():
        raise LowbitError(f"{flag} {path}: no such folder; give the Hugging Face model folder "
                          "(config.json next to the safetensors weights)")
    if not p.is_dir():
        raise LowbitError(f"{flag} {path} is a file; give the folder that holds it (config.json and the weights)")
    if not os.access(p, os.R_OK | os.X_OK):
        raise LowbitError(f"{flag} {path}: the folder cannot be read (permission denied); check its permissions")
    return p


def text_source(path: Optional[str], flag: str) -> Optional[Path]:
    """Text data: a .txt / .jsonl file or a folder of .txt files that can be read."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise LowbitError(f"{flag} {path}: no such file or folder; give a .txt file, a folder of .txt files "
                          "or a .jsonl file")
    if p.is_dir():
        if not os.access(p, os.R_OK | os.X_OK):
            raise LowbitError(f"{flag} {path}: the folder cannot be read (permission denied)")
        if not any(p.glob("*.txt")) and not any(p.glob("*.jsonl")):
            raise LowbitError(f"{flag} {path} is a folder with no .txt or .jsonl files in it; give a text file or "
                              "a folder of .txt files")
        return p
    if not os.access(p, os.R_OK):
        raise LowbitError(f"{flag} {path}: the file cannot be read (permission denied)")
    return p


def _existing(path: str, flag: str, folder: bool, missing: str, wrong: str) -> Path:
    """``path`` when it exists and is a folder (``folder``) or a file; else one line with the fix."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LowbitError(f"{flag} {path}: no such {'folder' if folder else 'file'}; {missing}")
    if p.is_dir() != folder:
        raise LowbitError(f"{flag} {path} is a {'file' if folder else 'folder'}; {wrong}")
    return p


def recipe_file(path: str, flag: str = "RECIPE") -> Path:
    p = Path(path).expanduser()
    hint = " (to continue a run in that folder, use --resume)" if (p / "recipe.yaml").exists() else ""
    return _existing(path, flag, False, "give a .yaml or .json recipe file",
                     f"give the path of a .yaml or .json recipe file{hint}")


def run_folder(path: str, flag: str = "--resume") -> Path:
    """An existing run folder (it has recipe.yaml)."""
    p = _existing(path, flag, True, "give the folder of the run",
                  "give the folder of the run (the one holding recipe.yaml)")
    if not (p / "recipe.yaml").exists():
        raise LowbitError(f"{flag} {path} is not a run folder (no recipe.yaml); give the folder of a run")
    return p


def writable_folder(path: str, flag: str, *, new_run: bool = False) -> Path:
    """A folder to write into: created if missing; refused if it is a file, cannot be created or written,
    or (``new_run``) already holds a finished run."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise LowbitError(f"{flag} {path} is a file; give a folder to create (or an empty one)")
    if new_run and (p / "report.json").exists():
        raise LowbitError(f"{flag} {path} already holds a finished run (report.json); choose a new folder")
    for parent in p.absolute().parents:  # a file on the way ("a.txt/run") cannot hold a folder
        if parent.exists():
            if not parent.is_dir():
                raise LowbitError(f"{flag} {path}: {parent} is a file, so no folder can be made inside it")
            break
    created = not p.exists()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".lowbit-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if created:
            try:
                p.rmdir()
            except OSError:
                pass
        raise LowbitError(f"{flag} {path}: cannot write there ({_describe(exc)}); choose a folder you can write to")
    return p
