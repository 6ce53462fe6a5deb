"""The NVIDIA ModelOpt unified Hugging Face layout (what TensorRT-LLM loads), writer and reader.

``hf_quant_config.json`` names one ``quant_algo`` for the model (or
``MIXED_PRECISION`` with a per-layer ``quantized_layers`` map) and lists the
layers kept in high precision in ``exclude_modules``; ``config.json`` mirrors it
under ``quantization_config`` with ``quant_method: "modelopt"``.

Each algorithm is one (weight format, activation format) pairing of ours and one
tensor layout:

=====================  ======================  ===========================================
quant_algo             weights / activations   tensors of a layer
=====================  ======================  ===========================================
FP8                    fp8_e4m3 / fp8_e4m3     weight (E4M3), weight_scale, input_scale
FP8_PER_CHANNEL_...    fp8_e4m3_channel / dyn  weight (E4M3), weight_scale [out]
NVFP4                  nvfp4 / nvfp4           weight (uint8, 2 per byte), weight_scale (E4M3),
                                               weight_scale_2 = s2, input_scale = s2 of inputs
NVFP4_AWQ              nvfp4 / nvfp4           NVFP4's tensors plus pre_quant_scale [in]: the
                                               layer's explicit AWQ input multiplier
W4A16_NVFP4            nvfp4 / -               the same without input_scale
W4A16_AWQ              int4_g<G> / -           weight uint8 [out/2, in] (row pairs, two's
                                               complement), weight_scale [out, in/G],
                                               pre_quant_scale [in] (the explicit AWQ input
                                               multiplier, ones without one)
W8A16                  int8 / -                weight int8, weight_scale [out]
W8A8_SQ_PER_CHANNEL    int8 / int8_tensor      the same plus input_scale
MXFP8                  mxfp8 / mxfp8           weight (E4M3), weight_scale uint8 E8M0
=====================  ======================  ===========================================

Any other pairing has no ModelOpt layout and is refused with an ExportError.

``pre_quant_scale`` is ModelOpt's per-input-channel multiplier of the input, applied before the
input quantizer: exactly ``QuantLinear.pre_quant_scale``, where AWQ keeps a scale that no norm or
linear could absorb (the weight holds W * s, the input is multiplied by 1 / s). A layer with one
takes the AWQ layout of its pairing (NVFP4 -> NVFP4_AWQ; W4A16_AWQ always carries the tensor);
pairings without an AWQ layout refuse it. Layers without one keep their plain layout, so a model
where only some layers have one is MIXED_PRECISION under NVFP4.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch

from .. import formats
from ..errors import ExportError
from ..formats import Format, QTensor
from . import packing
from .checkpoint import ExportedCheckpoint, ReadLayer, exact_input_amax
from .common import PRODUCER, LayerQuant, canonical_name, high_precision_linears, producer_version

TARGET = "modelopt"
QUANT_CONFIG = "hf_quant_config.json"
NVFP4_GLOBAL = 6.0 * 448.0


@dataclass(frozen=True)
class Algo:
    name: str
    weight: str  # canonical weight format; "int4_g*" matches any group size
    activation: Optional[str]
    static: Optional[bool]  # activation scale calibrated (True) or computed at run time (False)
    encode: Callable[[LayerQuant, QTensor, torch.dtype], Dict[str, torch.Tensor]]
    decode: Callable[[Format, Dict[str, torch.Tensor], tuple], QTensor]
    act_max: float = 1.0  # input_scale * act_max = activation amax
    group_size: Optional[int] = None
    check: Callable[[LayerQuant], Optional[str]] = lambda layer: None
    # pre_quant_scale [in]: False = not in the layout, True = only for layers with an input multiplier,
    # None = always (ones for layers without one)
    pre_quant_scale: Optional[bool] = False

    def matches(self, w: str, a: Optional[str], static: bool, multiplier: bool = False) -> bool:
        w_ok = re.fullmatch(self.weight.replace("*", r"\d+"), w) is not None
        carries = self.pre_quant_scale is None or self.pre_quant_scale == multiplier
        return w_ok and a == self.activation and (a is None or self.static == static) and carries

    def layer_group_size(self, wfmt: Format) -> Optional[int]:
        return wfmt.block if self.weight.endswith("*") else self.group_size


def _input_scale(layer: LayerQuant, what: str = "scale") -> Dict[str, torch.Tensor]:
    if layer.act_amax is None:
        return {}
    return {"input_scale": layer.act_tensor_scale(what).reshape(())}


def _fp8_encode(layer, q, dtype):
    scale = q.scale.float().reshape(() if layer.weight_fmt.granularity == "tensor" else (-1,))
    return {"weight": q.codes.to(torch.float8_e4m3fn), "weight_scale": scale, **_input_scale(layer)}


def _fp8_decode(fmt, t, shape):
    return QTensor(fmt.name, t["weight"].reshape(shape), t["weight_scale"].float().reshape(fmt.scale_shape(shape)))


def _nvfp4_encode(layer, q, dtype):
    return {"weight": packing.pack_nibbles_last(q.codes), "weight_scale": q.scale.to(torch.float8_e4m3fn),
            "weight_scale_2": q.scale2.float().reshape(()), **_input_scale(layer, "scale2")}


def input_multiplier(layer: LayerQuant) -> Optional[torch.Tensor]:
    """The layer's explicit input multiplier (``QuantLinear.pre_quant_scale``), or None."""
    return getattr(layer.module, "pre_quant_scale", None)


def _pre_quant_scale(layer: LayerQuant, dtype) -> Dict[str, torch.Tensor]:
    p = input_multiplier(layer)
    p = torch.ones(layer.shape[1]) if p is None else p.detach().float().cpu()
    return {"pre_quant_scale": p.to(dtype)}


def _nvfp4_awq_encode(layer, q, dtype):
    return {**_nvfp4_encode(layer, q, dtype), **_pre_quant_scale(layer, dtype)}


def _nvfp4_decode(fmt, t, shape):
    codes = packing.unpack_nibbles_last(t["weight"]).reshape(shape)
    return QTensor(fmt.name, codes, t["weight_scale"].reshape(fmt.scale_shape(shape)),
                   scale2=t["weight_scale_2"].float().reshape(()))


def _awq_encode(layer, q, dtype):
    return {"weight": packing.pack_nibbles_rows(q.codes.to(torch.int8)), "weight_scale": q.scale.float(),
            **_pre_quant_scale(layer, dtype)}


def _awq_decode(fmt, t, shape):
    return QTensor(fmt.name, packing.unpack_nibbles_rows(t["weight"]).reshape(shape),
                   t["weight_scale"].float().reshape(fmt.scale_shape(shape)))


def _awq_check(layer):
    out_f, in_f = layer.shape
    if out_f % 2:
        return f"{out_f} output features are odd (INT4 AWQ packs pairs of output rows)"
    if in_f % layer.weight_fmt.block:
        return f"{in_f} input features are not a multiple of the group size {layer.weight_fmt.block}"
    return None


def _int8_encode(layer, q, dtype):
    return {"weight": q.codes.to(torch.int8), "weight_scale": q.scale.float().reshape(-1), **_input_scale(layer)}


def _int8_decode(fmt, t, shape):
    return QTensor(fmt.name, t["weight"].reshape(shape), t["weight_scale"].float().reshape(fmt.scale_shape(shape)))


def _mx_encode(layer, q, dtype):
    return {"weight": q.codes.to(torch.float8_e4m3fn), "weight_scale": q.scale.to(torch.uint8)}


def _mx_decode(fmt, t, shape):
    return QTensor(fmt.name, t["weight"].reshape(shape), t["weight_scale"].to(torch.uint8).reshape(fmt.scale_shape(shape)))


def _block_check(block: int):
    def check(layer):
        in_f = layer.shape[1]
        return None if in_f % block == 0 else f"{in_f} input features are not a multiple of {block}"
    return check


ALGOS = [
    Algo("FP8", "fp8_e4m3", "fp8_e4m3", True, _fp8_encode, _fp8_decode, act_max=448.0),
    Algo("FP8_PER_CHANNEL_PER_TOKEN", "fp8_e4m3_channel", "fp8_e4m3_channel", False, _fp8_encode, _fp8_decode),
    Algo("NVFP4", "nvfp4", "nvfp4", True, _nvfp4_encode, _nvfp4_decode, act_max=NVFP4_GLOBAL, group_size=16,
         check=_block_check(16)),
    Algo("NVFP4_AWQ", "nvfp4", "nvfp4", True, _nvfp4_awq_encode, _nvfp4_decode, act_max=NVFP4_GLOBAL,
         group_size=16, check=_block_check(16), pre_quant_scale=True),
    Algo("W4A16_NVFP4", "nvfp4", None, None, _nvfp4_encode, _nvfp4_decode, group_size=16, check=_block_check(16)),
    Algo("W4A16_AWQ", "int4_g*", None, None, _awq_encode, _awq_decode, check=_awq_check, pre_quant_scale=None),
    Algo("W8A16", "int8", None, None, _int8_encode, _int8_decode),
    Algo("W8A8_SQ_PER_CHANNEL", "int8", "int8_tensor", True, _int8_encode, _int8_decode, act_max=127.0),
    Algo("MXFP8", "mxfp8", "mxfp8", False, _mx_encode, _mx_decode, group_size=32, check=_block_check(32)),
]
_BY_NAME = {a.name: a for a in ALGOS}


def _pairing(layer: LayerQuant):
    w = canonical_name(layer.weight_fmt)
    a = canonical_name(layer.act_fmt) if layer.act_fmt is not None else None
    return w, a, layer.act_amax is not None


def carries_input_multiplier(layer: LayerQuant) -> bool:
    """Whether ModelOpt has a layout with ``pre_quant_scale`` for this layer's pairing
    (W4A16_AWQ, NVFP4_AWQ)."""
    if layer.weight_fmt is None:
        return False
    w, a, static = _pairing(layer)
    return any(al.pre_quant_scale is not False and al.matches(w, a, static, True) for al in ALGOS)


def algo_for(layer: LayerQuant) -> Algo:
    if layer.weight_fmt is None:
        raise ExportError(f"layer {layer.name} quantizes only its activations ({layer.act_format}); ModelOpt's "
                          "layout has no such algorithm; use the compressed-tensors or dense export")
    w, a, static = _pairing(layer)
    multiplier = input_multiplier(layer) is not None
    for algo in ALGOS:
        if algo.matches(w, a, static, multiplier):
            problem = algo.check(layer)
            if problem:
                raise ExportError(f"layer {layer.name}: {problem}, which ModelOpt's {algo.name} layout requires; "
                                  "use the compressed-tensors or dense export")
            return algo
    pairing = f"weights {layer.weight_format}, activations {layer.act_format or 'kept'}"
    if multiplier and any(al.matches(w, a, static) for al in ALGOS):
        awq = ", ".join(al.name for al in ALGOS if al.pre_quant_scale is not False)
        raise ExportError(f"layer {layer.name} keeps an explicit AWQ input scale, and ModelOpt's layout for its "
                          f"pairing ({pairing}) has no pre_quant_scale tensor (only {awq} do); export as dense, "
                          "or quantize again with calibration.awq_unfoldable: skip")
    if a is not None and not static and any(al.activation == a and al.static for al in ALGOS):
        pairing += " (dynamic: the activation scale was not calibrated)"
    known = ", ".join(f"{al.name} ({al.weight}/{al.activation or '-'})" for al in ALGOS)
    raise ExportError(f"format {layer.weight_format} ({pairing}, layer {layer.name}) cannot be expressed in "
                      f"ModelOpt's layout; use the compressed-tensors or dense export instead. ModelOpt layouts: {known}")


class Writer:
    target = TARGET

    def check(self, layers: Dict[str, LayerQuant], model) -> None:
        for layer in layers.values():
            algo_for(layer)

    def layer_tensors(self, layer: LayerQuant, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
        return algo_for(layer).encode(layer, layer.quantize(), dtype)

    def layer_info(self, layer: LayerQuant) -> Dict[str, Any]:
        return {"quant_algo": algo_for(layer).name}

    def _quantization(self, layers, model) -> Dict[str, Any]:
        per_layer = {}
        for layer in layers.values():
            algo = algo_for(layer)
            entry = {"quant_algo": algo.name}
            g = algo.layer_group_size(layer.weight_fmt)
            if g is not None:
                entry["group_size"] = g
            per_layer[layer.name] = entry
        kinds = {json.dumps(e, sort_keys=True) for e in per_layer.values()}
        q: Dict[str, Any]
        if len(kinds) == 1:
            only = json.loads(kinds.pop())
            q = {"quant_algo": only["quant_algo"], "kv_cache_quant_algo": None}
            if "group_size" in only:
                q["group_size"] = only["group_size"]
        else:
            q = {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": None, "quantized_layers": per_layer}
        q["exclude_modules"] = high_precision_linears(model, layers)
        return q

    def quantization_config(self, layers, model) -> Dict[str, Any]:
        return {"quant_method": "modelopt", "producer": {"name": PRODUCER, "version": producer_version()},
                **self._quantization(layers, model)}

    def shard_metadata(self, layers, recipe) -> Dict[str, str]:
        return {"lowbit.target": TARGET}

    def extra_json(self, layers, model) -> Dict[str, Any]:
        return {QUANT_CONFIG: {"producer": {"name": PRODUCER, "version": producer_version()},
                               "quantization": self._quantization(layers, model)}}


def read(ckpt: ExportedCheckpoint) -> None:
    path = ckpt.path / QUANT_CONFIG
    if path.exists():
        quant = json.loads(path.read_text(encoding="utf-8")).get("quantization") or {}
    else:
        quant = ckpt.config.get("quantization_config") or {}
    excluded = set(quant.get("exclude_modules") or [])
    per_layer = quant.get("quantized_layers") or {}
    modules = sorted({k.rsplit(".", 1)[0] for k in ckpt.tensors if k.endswith(".weight_scale")})
    for module in modules:
        if module in excluded:
            continue
        entry = per_layer.get(module) or ({"quant_algo": quant.get("quant_algo"), "group_size": quant.get("group_size")}
                                          if quant.get("quant_algo") != "MIXED_PRECISION" else None)
        if not entry or entry.get("quant_algo") not in _BY_NAME:
            raise ExportError(f"{ckpt.path}: layer {module} has quantized tensors but an unknown quant_algo "
                              f"{(entry or {}).get('quant_algo')!r}")
        algo = _BY_NAME[entry["quant_algo"]]
        wname = algo.weight.replace("*", str(entry.get("group_size") or 128))
        fmt = formats.get(wname)
        local = {k[len(module) + 1:]: v for k, v in ckpt.tensors.items()
                 if k.startswith(module + ".") and "." not in k[len(module) + 1:]}
        shape = _shape(algo, local)
        q = algo.decode(fmt, local, shape)
        amax = None
        if algo.activation is not None and "input_scale" in local:
            amax = exact_input_amax(ckpt, module, local["input_scale"].float().reshape(()) * algo.act_max)
        pre = local.get("pre_quant_scale") if algo.pre_quant_scale is not False else None
        if pre is not None and bool((pre == 1).all()):
            pre = None  # W4A16_AWQ's ones: no multiplier
        for k in ("weight", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale"):
            ckpt.tensors.pop(f"{module}.{k}", None)
        ckpt.layers[module] = ReadLayer(module, wname, algo.activation, shape, qtensor=q, input_amax=amax,
                                        pre_quant_scale=pre.float() if pre is not None else None)


def _shape(algo: Algo, t: Dict[str, torch.Tensor]) -> tuple:
    w = t["weight"]
    if algo.name == "W4A16_AWQ":
        return (w.shape[0] * 2, w.shape[1])
    if algo.name in ("NVFP4", "NVFP4_AWQ", "W4A16_NVFP4"):
        return (w.shape[0], w.shape[1] * 2)
    return tuple(w.shape)
