"""The dense export: fake-quantized weights in the model's dtype, loadable by plain transformers.

Every quantized Linear's weight is written exactly as the student's forward
uses it (quantized then dequantized), so the checkpoint needs no quantization
support to load. Which layer used which weight and activation format, the
calibrated activation scales and the recipe are kept in
``lowbit_quantization.json`` and in the safetensors metadata; activation
quantization itself is not applied by a plain transformers load (our reader
rebuilds it).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

import torch

from ..errors import ExportError
from .checkpoint import ExportedCheckpoint, ReadLayer
from .common import LayerQuant

TARGET = "dense"


class Writer:
    target = TARGET

    def check(self, layers: Dict[str, LayerQuant], model) -> None:
        return None

    def layer_tensors(self, layer: LayerQuant, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
        return {"weight": layer.fake_weight().to(dtype)}

    def layer_info(self, layer: LayerQuant) -> Dict[str, Any]:
        return {}

    def quantization_config(self, layers, model) -> Optional[Dict[str, Any]]:
        return None

    def extra_json(self, layers, model) -> Dict[str, Any]:
        return {}

    def shard_metadata(self, layers: Dict[str, LayerQuant], recipe: Optional[Dict[str, Any]]) -> Dict[str, str]:
        """The recipe and the per-layer formats, in every shard's header (values must be strings)."""
        return {"lowbit.target": TARGET,
                "lowbit.recipe": json.dumps(recipe, sort_keys=True, default=str),
                "lowbit.layers": json.dumps({n: {"weight": q.weight_format, "activation": q.act_format}
                                             for n, q in layers.items()}, sort_keys=True)}


def read(ckpt: ExportedCheckpoint) -> None:
    layers = (ckpt.marker or {}).get("layers") or {}
    for name, info in layers.items():
        weight = ckpt.tensors.pop(f"{name}.weight", None)
        if weight is None:
            raise ExportError(f"{ckpt.path}: {name}.weight is listed in the quantization record but missing")
        amax = info.get("input_amax")
        ckpt.layers[name] = ReadLayer(name, info.get("weight"), info.get("activation"), tuple(weight.shape),
                                      dense_weight=weight,
                                      input_amax=torch.tensor(float(amax)) if amax is not None else None)
