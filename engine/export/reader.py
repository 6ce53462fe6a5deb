"""Reading an export folder back: which layout it is, then that layout's reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import ExportError
from . import compressed_tensors, dense, modelopt
from .checkpoint import ExportedCheckpoint, load_tensors
from .common import MARKER, dtype_from_name, read_marker


def detect_target(folder: Path, config: Dict[str, Any], marker: Optional[Dict[str, Any]]) -> str:
    if marker and marker.get("target"):
        return marker["target"]
    if (folder / "hf_quant_config.json").exists():
        return "modelopt"
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method == "compressed-tensors":
        return "compressed-tensors"
    if method == "modelopt":
        return "modelopt"
    return "dense"


def read_export(path) -> ExportedCheckpoint:
    """Read any of our export layouts (or a compatible one) back into an :class:`ExportedCheckpoint`."""
    folder = Path(path)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ExportError(f"{folder} has no config.json; is it an export folder?")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    marker = read_marker(folder)
    target = detect_target(folder, config, marker)
    dtype = dtype_from_name(config.get("dtype") or config.get("torch_dtype") or "float32")
    ckpt = ExportedCheckpoint(folder, target, config, dtype, load_tensors(folder), marker=marker)
    readers = {"compressed-tensors": compressed_tensors.read, "modelopt": modelopt.read, "dense": dense.read}
    if target not in readers:
        raise ExportError(f"{folder}: unknown export target {target!r} in {MARKER}")
    readers[target](ckpt)
    return ckpt
