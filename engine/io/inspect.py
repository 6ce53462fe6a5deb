"""Inspecting a model without loading it: the config, the module tree on the meta device, and
the tensor shapes and dtypes in the safetensors headers.

The meta device holds shapes and dtypes but no storage, so building an 8B model there
takes a second and no memory for weights; it has the same module names and Linear
shapes as the loaded model, so layer lists, layer plans and the memory plan
(engine.pipeline.plan) come from it before anything is loaded.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..errors import ModelLoadError
from .demo import resolve_model_path
from .model import (_architecture, _check_folder, _check_weight_files, _is_native_model_type, _load_config,
                    _read_config_json, detect_kind, linear_layers, linear_shape)

_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_TORCH_DTYPE = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


@dataclass
class ModelInfo:
    """What a model is, from its config and headers only (no weights read)."""

    name: str
    architecture: str
    kind: str
    config: Any
    model: nn.Module  # on the meta device: names, shapes and dtypes, no storage
    checkpoint_dtype: str  # the dtype the weights are stored in ("bfloat16", ...)
    checkpoint_bytes: int  # bytes of tensors in the weight files (0 without files)
    path: Optional[Path] = None
    shards: List[str] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def dim(self, *names: str, default: int = 0) -> int:
        """The first of the config's attributes ``names`` that is set (configs name sizes differently)."""
        cfg = getattr(self.config, "text_config", None) or self.config
        for n in names:
            v = getattr(cfg, n, None)
            if isinstance(v, int) and v > 0:
                return v
        return default

    @property
    def hidden_size(self) -> int:
        return self.dim("hidden_size", "n_embd", "d_model", "dim")

    @property
    def n_blocks(self) -> int:
        return self.dim("num_hidden_layers", "n_layer", "num_layers", "n_layers")

    @property
    def vocab_size(self) -> int:
        return self.dim("vocab_size")

    @property
    def intermediate_size(self) -> int:
        return self.dim("intermediate_size", "n_inner", "ffn_dim", default=4 * self.hidden_size)

    @property
    def n_heads(self) -> int:
        return self.dim("num_attention_heads", "n_head", "num_heads", default=1)

    @property
    def n_kv_heads(self) -> int:
        return self.dim("num_key_value_heads", "num_kv_heads", default=self.n_heads)

    @property
    def tied_embeddings(self) -> bool:
        out = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        inp = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        return out is not None and inp is not None and out.weight is inp.weight

    def blocks(self) -> Optional[nn.ModuleList]:
        """The list of decoder / encoder blocks (the largest ModuleList of the model)."""
        best = None
        for _, m in self.model.named_modules():
            if isinstance(m, nn.ModuleList) and (best is None or len(m) > len(best)):
                best = m
        return best

    def describe(self) -> Dict[str, Any]:
        """The same summary as engine.io.model.describe_model, plus sizes, from the meta model."""
        layers = []
        for name, module in linear_layers(self.model):
            in_features, out_features = linear_shape(module)
            params = module.weight.numel() + (module.bias.numel() if getattr(module, "bias", None) is not None else 0)
            layers.append({"name": name, "type": type(module).__name__, "in_features": in_features,
                           "out_features": out_features, "params": int(params)})
        return {"name": self.name, "architecture": self.architecture, "kind": self.kind, "n_params": self.n_params,
                "dtype": self.checkpoint_dtype, "n_linear": len(layers),
                "linear_params": sum(layer["params"] for layer in layers), "layers": layers,
                "checkpoint_bytes": self.checkpoint_bytes, "hidden_size": self.hidden_size,
                "n_blocks": self.n_blocks, "vocab_size": self.vocab_size, "tied_embeddings": self.tied_embeddings}


def meta_model(config: Any, kind: str = "causal-lm", trust_remote_code: bool = False) -> nn.Module:
    """The model of ``config`` built on the meta device (no weight storage), in eval mode."""
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    try:
        with torch.device("meta"):
            model = auto.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot build a {_architecture(config)} model from its config ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); check config.json") from exc
    return model.eval()


def read_safetensors_header(file: Path) -> Dict[str, Any]:
    """The JSON header of a safetensors file: {name: {dtype, shape, data_offsets}} (no tensor data read)."""
    with open(file, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ModelLoadError(f"{file.name} is truncated (no header); download or copy it again")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{file.name} has a corrupt header ({exc}); download or copy it again") from exc
    header.pop("__metadata__", None)
    return header


def weight_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_"))


def _stored_dtype(config: Any, headers: List[Dict[str, Any]]) -> str:
    counts: Dict[str, int] = {}
    for h in headers:
        for v in h.values():
            n = 1
            for d in v["shape"]:
                n *= int(d)
            counts[v["dtype"]] = counts.get(v["dtype"], 0) + n
    if counts:
        top = max(counts, key=counts.get)
        dt = _TORCH_DTYPE.get(top)
        return str(dt).removeprefix("torch.") if dt is not None else top.lower()
    dt = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dt).removeprefix("torch.") if dt is not None else "float32"


def inspect_config(config: Any, kind: str = "auto", name: str = "", trust_remote_code: bool = False) -> ModelInfo:
    """A ModelInfo from a transformers config object (no folder, no weight files)."""
    resolved = detect_kind(config) if kind == "auto" else kind
    model = meta_model(config, resolved, trust_remote_code)
    return ModelInfo(name or _architecture(config), _architecture(config), resolved, config, model,
                     _stored_dtype(config, []), 0)


def inspect_model(path, kind: str = "auto", trust_remote_code: bool = False) -> ModelInfo:
    """A ModelInfo of a local model folder from config.json and the safetensors headers only."""
    folder = _check_folder(resolve_model_path(path))
    raw = _read_config_json(folder)
    if "auto_map" in raw and not trust_remote_code and not _is_native_model_type(raw.get("model_type")):
        raise ModelLoadError(f"{folder.name} needs the Python code shipped in its folder (auto_map in config.json); "
                             "review it, then enable trust remote code to inspect or load it")
    config = _load_config(folder, raw, bool(trust_remote_code))
    resolved = detect_kind(config) if kind == "auto" else kind
    _check_weight_files(folder)  # present and complete (headers parse, files as long as they say)
    files = weight_files(folder)
    headers = [read_safetensors_header(f) for f in files]
    total = 0
    for h in headers:
        for v in h.values():
            a, b = v["data_offsets"]
            total += int(b) - int(a)
    model = meta_model(config, resolved, bool(trust_remote_code))
    return ModelInfo(folder.name, _architecture(config), resolved, config, model, _stored_dtype(config, headers),
                     total, folder, [f.name for f in files])
