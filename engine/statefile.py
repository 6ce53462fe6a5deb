"""Model state as plain CPU tensors, and writing it as safetensors (student files, checkpoints, exports).

A state is written shard by shard (:class:`ShardedSafetensors`): tensors are gathered on the
CPU until the next one would pass the shard limit, then that shard is written to its own
temporary file and dropped, so saving holds about one shard beside the model, never a second
full copy. One shard keeps the plain single-file name (``NAME.safetensors``); several are
``NAME-00001-of-0000N.safetensors`` with ``NAME.safetensors.index.json`` (the Hugging Face
layout). :func:`load_state` reads either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from .fsutil import fsync_path, write_json_atomic

DEFAULT_SHARD_MB = 4096


def save_file(tensors: Dict[str, torch.Tensor], filename: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """safetensors.torch.save_file, looked up when called (tests stand a failing disk in for either name)."""
    safetensors.torch.save_file(tensors, filename, metadata=metadata)


def cpu_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict (quantizer scales included) as contiguous CPU tensors."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def _unshared(state: Dict[str, torch.Tensor], seen: set) -> Dict[str, torch.Tensor]:
    """Tensors sharing storage with one already written (tied embeddings) get their own copy, which
    safetensors requires."""
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


class ShardedSafetensors:
    """Tensors gathered into safetensors shards of at most ``max_shard_mb`` each (one tensor may exceed
    it); each full shard is written at once to ``temp_path(i)`` (i from 1) and let go."""

    def __init__(self, max_shard_mb: float, temp_path: Callable[[int], Path],
                 metadata: Optional[Dict[str, str]] = None):
        self.limit = max(1, int(float(max_shard_mb) * 1024 * 1024))
        self.temp_path = temp_path
        self.metadata = {"format": "pt", **(metadata or {})}
        self._current: Dict[str, torch.Tensor] = {}
        self._size = 0
        self._seen: set = set()
        self._names: set = set()
        self.shards: List[Tuple[Path, List[str]]] = []  # (temporary path, tensor names)
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise ValueError(f"tensor {name} would be written twice")
        t = tensor.detach().to("cpu").contiguous()
        size = t.numel() * t.element_size()
        if self._current and self._size + size > self.limit:
            self._flush()
        self._names.add(name)
        self._current[name] = t
        self._size += size
        self.total_size += size

    def _flush(self) -> None:
        tmp = Path(self.temp_path(len(self.shards) + 1))
        save_file(_unshared(self._current, self._seen), str(tmp), metadata=self.metadata)
        self.shards.append((tmp, list(self._current)))
        self._current, self._size = {}, 0

    def finish(self) -> List[Tuple[Path, List[str]]]:
        """Write the last shard; returns every shard's (temporary path, tensor names)."""
        if self._current or not self.shards:
            self._flush()
        return self.shards


def shard_names(stem: str, n: int) -> List[str]:
    """The file names of ``n`` shards of ``stem``: ``stem.safetensors`` alone, else numbered."""
    if n == 1:
        return [f"{stem}.safetensors"]
    return [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def index_name(stem: str) -> str:
    return f"{stem}.safetensors.index.json"


def index_data(shards: List[Tuple[Path, List[str]]], names: List[str], total_size: int) -> Dict:
    weight_map = {t: name for (_, tensors), name in zip(shards, names) for t in tensors}
    return {"metadata": {"total_size": total_size}, "weight_map": weight_map}


def _stem(path: Path) -> str:
    return path.name[:-len(".safetensors")] if path.name.endswith(".safetensors") else path.name


def save_state_sharded(items: Iterable[Tuple[str, torch.Tensor]], path: os.PathLike,
                       max_shard_mb: float = DEFAULT_SHARD_MB, metadata: Optional[Dict[str, str]] = None) -> List[str]:
    """Write ``(name, tensor)`` items as ``path`` (``NAME.safetensors``), shard by shard; returns the file names.

    Each shard goes to a temporary file first; the shards are renamed into place and the index
    written last (one shard: the single file, renamed over the old one), and then whatever a
    previous save of another layout left (an index, shards, the single file) is removed."""
    path = Path(path)
    folder, stem = path.parent, _stem(path)
    writer = ShardedSafetensors(max_shard_mb, lambda i: folder / f".{stem}-{i:05d}.safetensors.tmp", metadata)
    try:
        for name, tensor in items:
            writer.add(name, tensor)
        shards = writer.finish()
    except BaseException:
        for tmp, _ in writer.shards:
            tmp.unlink(missing_ok=True)
        raise
    names = shard_names(stem, len(shards))
    for (tmp, _), name in zip(shards, names):
        fsync_path(tmp)
        os.replace(tmp, folder / name)
    index = folder / index_name(stem)
    if len(shards) > 1:
        write_json_atomic(index, index_data(shards, names, writer.total_size))
    else:
        index.unlink(missing_ok=True)
    keep = set(names)
    for old in folder.glob(f"{stem}*.safetensors"):
        if old.name not in keep and (old.name == path.name or old.name.startswith(f"{stem}-")):
            old.unlink(missing_ok=True)
    fsync_path(folder)
    return names


def state_exists(path: os.PathLike) -> bool:
    """Whether a state was saved as ``path`` (the single file, or the index of its shards)."""
    path = Path(path)
    return path.exists() or (path.parent / index_name(_stem(path))).exists()


def load_state(path: os.PathLike, device: str = "cpu") -> Dict[str, torch.Tensor]:
    """A state saved as ``path``, single file or shards with an index (:func:`save_state_sharded`)."""
    path = Path(path)
    index = path.parent / index_name(_stem(path))
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [path.parent / n for n in sorted(set(weight_map.values()))]
    elif path.exists():
        weight_map, files = {}, [path]
    else:
        raise FileNotFoundError(f"{path.parent} holds no {path.name} (nor an index of shards)")
    out: Dict[str, torch.Tensor] = {}
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"{path.parent}: the index names {f.name}, which is missing")
        with safe_open(str(f), framework="pt", device=str(device)) as fh:
            for key in fh.keys():
                out[key] = fh.get_tensor(key)
    missing = set(weight_map) - set(out)
    if missing:
        raise ValueError(f"{path.parent}: tensors listed in the index are missing: {sorted(missing)[:5]}")
    return out
