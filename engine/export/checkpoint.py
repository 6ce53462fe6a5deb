"""Reading a written export back: the tensors, the config, and per quantized layer
the codes and scales as a :class:`~engine.formats.QTensor` of our own format.

The readers of the three targets (in their own modules) fill an
:class:`ExportedCheckpoint`; :func:`engine.export.reader.read_export` picks the target from the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .. import formats
from ..errors import ExportError
from ..formats import QTensor
from ..statefile import load_state
from .common import MARKER


@dataclass
class ReadLayer:
    """A quantized layer as read back from an export."""

    name: str
    weight_format: Optional[str]
    activation_format: Optional[str]
    shape: tuple
    qtensor: Optional[QTensor] = None  # None when the weight is stored dense (dense target)
    dense_weight: Optional[torch.Tensor] = None
    input_amax: Optional[torch.Tensor] = None  # static activation amax; None = dynamic
    pre_quant_scale: Optional[torch.Tensor] = None  # [in] input multiplier applied before the input quantizer

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        if self.qtensor is not None:
            return formats.get(self.weight_format).dequantize(self.qtensor, dtype)
        if self.dense_weight is None:
            raise ExportError(f"layer {self.name} has no weight in the export")
        return self.dense_weight.to(dtype)


@dataclass
class ExportedCheckpoint:
    path: Path
    target: str
    config: Dict[str, Any]
    dtype: torch.dtype
    tensors: Dict[str, torch.Tensor]  # everything that is not a quantized weight, by state-dict name
    layers: Dict[str, ReadLayer] = field(default_factory=dict)
    marker: Optional[Dict[str, Any]] = None

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """A dense state dict: high-precision tensors plus every quantized weight dequantized."""
        state = dict(self.tensors)
        for name, layer in self.layers.items():
            state[f"{name}.weight"] = layer.weight(self.dtype)
        return state


def load_tensors(folder: Path) -> Dict[str, torch.Tensor]:
    try:
        return load_state(Path(folder) / "model.safetensors")
    except (FileNotFoundError, ValueError) as exc:
        raise ExportError(str(exc)) from None


def marker_layer(ckpt: ExportedCheckpoint, name: str) -> Dict[str, Any]:
    return ((ckpt.marker or {}).get("layers") or {}).get(name) or {}


def exact_input_amax(ckpt: ExportedCheckpoint, name: str, derived: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The recorded activation amax when the marker has it, else the one derived from the stored scale."""
    recorded = marker_layer(ckpt, name).get("input_amax")
    if recorded is None or derived is None:
        return derived
    exact = torch.tensor(float(recorded), dtype=torch.float32)
    if not torch.allclose(exact, derived.float(), rtol=1e-4, atol=0.0):
        raise ExportError(f"{ckpt.path}: the input scale of layer {name} does not match the amax recorded in "
                          f"{MARKER} ({float(derived):g} vs {float(exact):g}); the export was modified")
    return exact
