"""The compressed-tensors layout (what vLLM loads), writer and reader.

``config.json`` gets a ``quantization_config`` with ``quant_method:
"compressed-tensors"``; every quantized Linear belongs to one config group
(weights + input activations + the group's storage ``format``), and every
Linear left in high precision is listed in ``ignore``.

Storage per format family (tensor names as compressed-tensors uses them):

- integers without activation quantization: ``pack-quantized``
  (``weight_packed`` int32, ``weight_scale`` float32, ``weight_shape``);
  with integer activations ``int-quantized`` (int8 ``weight``); with float
  activations ``naive-quantized``. Asymmetric formats add ``weight_zero_point``.
- FP8 E4M3: ``float-quantized`` (float8 ``weight`` + float32 ``weight_scale``).
- NVFP4: ``nvfp4-pack-quantized`` (``weight_packed`` uint8, E4M3 ``weight_scale``,
  ``weight_global_scale`` = 1 / s2).
- MX: ``mxfp4-pack-quantized``, ``mxfp6-pack-quantized`` (E2M3), ``mxfp8-quantized``,
  with uint8 E8M0 ``weight_scale``.

Scales are written as our formats computed them (float32 where the layout allows
it), so a reader dequantizes onto exactly our grid; e.g. our INT4 scale is
amax / 7 where compressed-tensors' own quantizer would use amax / 7.5.
Static activations add ``input_scale`` (per tensor) or, for NVFP4,
``input_global_scale`` = 1 / s2 of the activations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from .. import formats
from ..errors import ExportError
from ..formats import Format, QTensor
from ..formats.fp8 import FP8Format
from ..formats.integer import AsymIntFormat, IntFormat
from ..formats.microscaling import MXFormat, NVFP4Format
from . import packing
from .checkpoint import ExportedCheckpoint, ReadLayer, exact_input_amax, marker_layer
from .common import LayerQuant, high_precision_linears

TARGET = "compressed-tensors"
# The compressed-tensors release whose layout this writer follows and is tested against.
CT_LAYOUT_VERSION = "0.20.0"
ALTERNATIVES = "use the dense export, or another format"

_STRATEGY = {"tensor": "tensor", "channel": "channel", "block": "group"}


def _ct_scale_shape(fmt: Format, shape: tuple) -> tuple:
    if fmt.granularity == "tensor":
        return (1,)
    return tuple(fmt.scale_shape(shape))


# ----------------------------------------------------------------------------- codecs per format family


@dataclass(frozen=True)
class Codec:
    """How one family of our formats is described and stored in compressed-tensors."""

    weight_args: Callable[[Format], Dict[str, Any]]
    storage: Callable[[Format, Optional[Format]], str]  # compression format, given the activation format
    encode: Callable[[Format, QTensor, str], Dict[str, torch.Tensor]]
    decode: Callable[[Format, Dict[str, torch.Tensor], str, tuple], QTensor]
    supports: Callable[[Format], bool] = lambda fmt: True


def _int_args(fmt) -> Dict[str, Any]:
    return {"num_bits": fmt.bits, "type": "int", "symmetric": not isinstance(fmt, AsymIntFormat),
            "strategy": _STRATEGY[fmt.granularity], "group_size": fmt.block if fmt.granularity == "block" else None,
            "dynamic": False, "observer": "minmax"}


def _int_storage(fmt, act) -> str:
    if act is None:
        return "pack-quantized"
    return "int-quantized" if isinstance(act, (IntFormat, AsymIntFormat)) else "naive-quantized"


def _int_encode(fmt, q: QTensor, storage: str) -> Dict[str, torch.Tensor]:
    asym = isinstance(fmt, AsymIntFormat)
    offset = 1 << (fmt.bits - 1)
    # compressed-tensors keeps integers signed: [-2**(b-1), 2**(b-1) - 1]; our asymmetric codes are unsigned
    codes = (q.codes.to(torch.int16) - offset).to(torch.int8) if asym else q.codes.to(torch.int8)
    shape = tuple(q.codes.shape)
    out: Dict[str, torch.Tensor] = {}
    if storage == "pack-quantized":
        out["weight_packed"] = packing.pack_int_words(codes, fmt.bits)
    else:
        out["weight"] = codes
    out["weight_scale"] = q.scale.float().reshape(_ct_scale_shape(fmt, shape))
    if storage == "pack-quantized":
        out["weight_shape"] = torch.tensor(shape, dtype=torch.int64)
    if asym:
        zp = (q.zero_point.to(torch.int16) - offset).to(torch.int8).reshape(_ct_scale_shape(fmt, shape))
        if storage == "pack-quantized" and fmt.granularity != "tensor":
            zp = packing.pack_int_words(zp.t().contiguous(), fmt.bits).t().contiguous()  # packed along dim 0
        out["weight_zero_point"] = zp
    return out


def _int_decode(fmt, t: Dict[str, torch.Tensor], storage: str, shape: tuple) -> QTensor:
    asym = isinstance(fmt, AsymIntFormat)
    offset = 1 << (fmt.bits - 1)
    if storage == "pack-quantized":
        codes = packing.unpack_int_words(t["weight_packed"], fmt.bits, shape[-1]).reshape(shape)
    else:
        codes = t["weight"].to(torch.int8).reshape(shape)
    scale = t["weight_scale"].float().reshape(fmt.scale_shape(shape))
    zero_point = None
    if asym:
        codes = (codes.to(torch.int16) + offset).to(torch.uint8)
        zp = t["weight_zero_point"]
        if storage == "pack-quantized" and fmt.granularity != "tensor":
            n_groups = _ct_scale_shape(fmt, shape)[-1]
            zp = packing.unpack_int_words(zp.t().contiguous(), fmt.bits, shape[0]).t()[:, :n_groups]
        zero_point = (zp.to(torch.int16) + offset).to(torch.uint8).reshape(fmt.scale_shape(shape))
    return QTensor(fmt.name, codes, scale, zero_point=zero_point)


def _fp8_args(fmt) -> Dict[str, Any]:
    return {"num_bits": 8, "type": "float", "symmetric": True, "strategy": _STRATEGY[fmt.granularity],
            "group_size": fmt.block if fmt.granularity == "block" else None, "dynamic": False, "observer": "minmax"}


def _fp8_encode(fmt, q, storage):
    return {"weight": q.codes.to(torch.float8_e4m3fn),
            "weight_scale": q.scale.float().reshape(_ct_scale_shape(fmt, tuple(q.codes.shape)))}


def _fp8_decode(fmt, t, storage, shape):
    return QTensor(fmt.name, t["weight"].reshape(shape), t["weight_scale"].float().reshape(fmt.scale_shape(shape)))


def _nvfp4_args(fmt) -> Dict[str, Any]:
    return {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": 16,
            "dynamic": False, "observer": "minmax", "scale_dtype": "torch.float8_e4m3fn"}


def _nvfp4_encode(fmt, q, storage):
    return {"weight_packed": packing.pack_nibbles_last(q.codes),
            "weight_scale": q.scale.to(torch.float8_e4m3fn),
            "weight_global_scale": reciprocal(q.scale2).reshape(1)}


def _nvfp4_decode(fmt, t, storage, shape):
    codes = packing.unpack_nibbles_last(t["weight_packed"]).reshape(shape)
    scale2 = reciprocal(t["weight_global_scale"].float().reshape(()))
    return QTensor(fmt.name, codes, t["weight_scale"].reshape(fmt.scale_shape(shape)), scale2=scale2)


_MX_BITS = {"e2m1": 4, "e2m3": 6, "e4m3": 8}
_MX_STORAGE = {"e2m1": "mxfp4-pack-quantized", "e2m3": "mxfp6-pack-quantized", "e4m3": "mxfp8-quantized"}


def _mx_args(fmt) -> Dict[str, Any]:
    return {"num_bits": _MX_BITS[fmt.element], "type": "float", "symmetric": True, "strategy": "group",
            "group_size": 32, "dynamic": False, "observer": "minmax", "scale_dtype": "torch.uint8"}


def _mx_encode(fmt, q, storage):
    if fmt.element == "e4m3":
        weight = {"weight": q.codes.to(torch.float8_e4m3fn)}
    elif fmt.element == "e2m1":
        weight = {"weight_packed": packing.pack_nibbles_last(q.codes)}
    else:
        weight = {"weight_packed": packing.pack_6bit_last(q.codes)}
    return {**weight, "weight_scale": q.scale.to(torch.uint8)}


def _mx_decode(fmt, t, storage, shape):
    if fmt.element == "e4m3":
        codes = t["weight"]
    elif fmt.element == "e2m1":
        codes = packing.unpack_nibbles_last(t["weight_packed"])
    else:
        codes = packing.unpack_6bit_last(t["weight_packed"])
    return QTensor(fmt.name, codes.reshape(shape), t["weight_scale"].to(torch.uint8).reshape(fmt.scale_shape(shape)))


CODECS: Dict[type, Codec] = {
    IntFormat: Codec(_int_args, _int_storage, _int_encode, _int_decode),
    AsymIntFormat: Codec(_int_args, _int_storage, _int_encode, _int_decode),
    FP8Format: Codec(_fp8_args, lambda f, a: "float-quantized", _fp8_encode, _fp8_decode,
                     supports=lambda f: f.element == "e4m3"),
    NVFP4Format: Codec(_nvfp4_args, lambda f, a: "nvfp4-pack-quantized", _nvfp4_encode, _nvfp4_decode),
    MXFormat: Codec(_mx_args, lambda f, a: _MX_STORAGE[f.element], _mx_encode, _mx_decode,
                    supports=lambda f: f.element in _MX_STORAGE),
}


def reciprocal(x: torch.Tensor) -> torch.Tensor:
    """1 / x in float32 (IEEE division, correctly rounded)."""
    return torch.ones((), dtype=torch.float32) / x.float()


def _codec(fmt: Format) -> Codec:
    codec = CODECS.get(type(fmt))
    if codec is None or not codec.supports(fmt):
        raise ExportError(f"format {fmt.name} has no compressed-tensors layout (compressed-tensors stores FP8 "
                          f"and MX elements as E4M3 / E2M1 / E2M3 only); {ALTERNATIVES}")
    return codec


# ----------------------------------------------------------------------------- activations


def _act_args(fmt: Format, static: bool) -> Dict[str, Any]:
    if isinstance(fmt, NVFP4Format):
        if not static:
            raise ExportError("NVFP4 activations need a calibrated global scale to be exported to compressed-tensors; "
                              "calibrate the activations (any calibration method) before exporting")
        return {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": 16,
                "dynamic": "local", "observer": "static_minmax", "scale_dtype": "torch.float8_e4m3fn"}
    if isinstance(fmt, MXFormat):
        if fmt.element not in _MX_BITS:
            raise ExportError(f"activation format {fmt.name} has no compressed-tensors layout; {ALTERNATIVES}")
        return {"num_bits": _MX_BITS[fmt.element], "type": "float", "symmetric": True, "strategy": "group",
                "group_size": 32, "dynamic": True, "observer": None, "scale_dtype": "torch.uint8"}
    if isinstance(fmt, FP8Format) and fmt.element != "e4m3":
        raise ExportError(f"activation format {fmt.name} has no compressed-tensors layout (FP8 is E4M3 only); "
                          f"{ALTERNATIVES}")
    if not isinstance(fmt, (IntFormat, AsymIntFormat, FP8Format)):
        raise ExportError(f"activation format {fmt.name} has no compressed-tensors layout; {ALTERNATIVES}")
    strategy = {"tensor": "tensor", "channel": "token", "block": "group"}[fmt.granularity]
    if static and fmt.granularity != "tensor":
        raise ExportError(f"activation format {fmt.name} with a calibrated scale per {fmt.granularity} cannot be "
                          f"exported; {ALTERNATIVES}")
    return {"num_bits": fmt.bits, "type": "float" if isinstance(fmt, FP8Format) else "int",
            "symmetric": not isinstance(fmt, AsymIntFormat), "strategy": strategy,
            "group_size": fmt.block if fmt.granularity == "block" else None,
            "dynamic": not static, "observer": "minmax" if static else None}


def _act_tensors(layer: LayerQuant) -> Dict[str, torch.Tensor]:
    if layer.act_fmt is None or layer.act_amax is None:
        return {}
    if isinstance(layer.act_fmt, NVFP4Format):
        return {"input_global_scale": reciprocal(layer.act_tensor_scale("scale2")).reshape(1)}
    return {"input_scale": layer.act_tensor_scale("scale").reshape(1)}


# ----------------------------------------------------------------------------- format names from the config


def format_from_args(args: Dict[str, Any], role: str) -> str:
    """Our registry name for a compressed-tensors QuantizationArgs dict."""
    bits = int(args.get("num_bits", 8))
    kind = str(args.get("type", "int")).lower()
    strategy = str(args.get("strategy") or ("group" if args.get("group_size") else "tensor")).lower()
    group = args.get("group_size")
    scale_dtype = str(args.get("scale_dtype") or "")
    if kind == "int":
        base = f"int{bits}" + ("" if args.get("symmetric", True) else "_asym")
        suffix = {"tensor": "_tensor", "channel": "", "token": "", "group": f"_g{group}"}.get(strategy)
    elif bits == 4 and strategy == "tensor_group" and group == 16:
        return "nvfp4"
    elif strategy == "group" and group == 32 and "uint8" in scale_dtype:
        base, suffix = {4: "mxfp4", 6: "mxfp6_e2m3", 8: "mxfp8"}.get(bits), ""
    elif kind == "float" and bits == 8:
        base = "fp8_e4m3"
        suffix = {"tensor": "", "channel": "_channel", "token": "_channel", "group": f"_g{group}"}.get(strategy)
    else:
        base = suffix = None
    if base is None or suffix is None:
        raise ExportError(f"compressed-tensors {role} args {args} have no matching lowbit format")
    name = base + suffix
    formats.get(name)
    return name


# ----------------------------------------------------------------------------- writer


class Writer:
    target = TARGET

    def check(self, layers: Dict[str, LayerQuant], model) -> None:
        for layer in layers.values():
            if layer.weight_fmt is None:
                raise ExportError(f"layer {layer.name} quantizes only its activations ({layer.act_format}); the "
                                  "compressed-tensors writer needs quantized weights; use the dense export")
            fmt = layer.weight_fmt
            _codec(fmt)
            out_f, in_f = layer.shape
            if fmt.granularity == "block" and in_f % fmt.block:
                raise ExportError(f"layer {layer.name}: {in_f} input features are not a multiple of the {fmt.name} "
                                  f"block of {fmt.block}, which compressed-tensors requires; {ALTERNATIVES}")
            if layer.act_fmt is not None:
                _act_args(layer.act_fmt, layer.act_amax is not None)

    def layer_tensors(self, layer: LayerQuant, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
        storage = _codec(layer.weight_fmt).storage(layer.weight_fmt, layer.act_fmt)
        out = _codec(layer.weight_fmt).encode(layer.weight_fmt, layer.quantize(), storage)
        out.update(_act_tensors(layer))
        return out

    def layer_info(self, layer: LayerQuant) -> Dict[str, Any]:
        if isinstance(layer.weight_fmt, NVFP4Format):
            # the global scale is stored as 1 / s2; keep s2 itself so our reader lands on the exact grid
            return {"weight_scale2": float(layer.quantize().scale2)}
        return {}

    def scheme(self, layer: LayerQuant) -> Dict[str, Any]:
        w = layer.weight_fmt
        act = layer.act_fmt
        return {"weights": _codec(w).weight_args(w),
                "input_activations": _act_args(act, layer.act_amax is not None) if act is not None else None,
                "output_activations": None,
                "format": _codec(w).storage(w, act)}

    def quantization_config(self, layers: Dict[str, LayerQuant], model) -> Dict[str, Any]:
        groups: List[tuple] = []  # (scheme, [layer names])
        for layer in layers.values():
            s = self.scheme(layer)
            for scheme, names in groups:
                if scheme == s:
                    names.append(layer.name)
                    break
            else:
                groups.append((s, [layer.name]))
        storages = {s["format"] for s, _ in groups}
        config_groups = {}
        for i, (scheme, names) in enumerate(groups):
            targets = ["Linear"] if len(groups) == 1 else names
            config_groups[f"group_{i}"] = {"targets": targets, **scheme}
        return {
            "quant_method": "compressed-tensors",
            "format": storages.pop() if len(storages) == 1 else "mixed-precision",
            "quantization_status": "compressed",
            "config_groups": config_groups,
            "ignore": high_precision_linears(model, layers),
            "kv_cache_scheme": None,
            "global_compression_ratio": None,
            "version": CT_LAYOUT_VERSION,
        }

    def shard_metadata(self, layers, recipe) -> Dict[str, str]:
        return {"lowbit.target": TARGET}

    def extra_json(self, layers, model) -> Dict[str, Any]:
        return {}


# ----------------------------------------------------------------------------- reader


def _matches(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name


def read(ckpt: ExportedCheckpoint) -> None:
    qc = ckpt.config.get("quantization_config") or {}
    groups = qc.get("config_groups") or {}
    ignore = qc.get("ignore") or []
    if not groups:
        raise ExportError(f"{ckpt.path}: quantization_config has no config_groups")
    modules = sorted({k.rsplit(".", 1)[0] for k in ckpt.tensors
                      if k.endswith((".weight_packed", ".weight_scale"))})
    for module in modules:
        if any(_matches(module, ig) for ig in ignore):
            continue
        chosen = None
        for gname, group in groups.items():
            if any(t != "Linear" and _matches(module, t) for t in group.get("targets", [])):
                chosen = group
                break
        if chosen is None:
            chosen = next((g for g in groups.values() if "Linear" in g.get("targets", [])), None)
        if chosen is None:
            raise ExportError(f"{ckpt.path}: layer {module} has quantized tensors but no config group targets it")
        _read_layer(ckpt, module, chosen, qc.get("format"))


def _read_layer(ckpt: ExportedCheckpoint, module: str, group: Dict[str, Any], model_storage: Optional[str]) -> None:
    wname = format_from_args(group["weights"], "weights")
    fmt = formats.get(wname)
    storage = group.get("format") or model_storage
    local = {k[len(module) + 1:]: v for k, v in ckpt.tensors.items()
             if k.startswith(module + ".") and "." not in k[len(module) + 1:]}
    weight_keys = ("weight", "weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_global_scale")
    if "weight_shape" in local:
        shape = tuple(int(v) for v in local["weight_shape"].tolist())
    elif "weight" in local:
        shape = tuple(local["weight"].shape)
    else:  # packed along the input dimension: the scale gives the rows, the packing the columns
        packed = local["weight_packed"]
        per_byte = {4: 2, 6: 4 / 3}.get(fmt.bits, 1)
        shape = (packed.shape[0], int(round(packed.shape[1] * per_byte)))
    q = _codec(fmt).decode(fmt, local, storage, shape)
    if isinstance(fmt, NVFP4Format):
        recorded = marker_layer(ckpt, module).get("weight_scale2")
        if recorded is not None:
            exact = torch.tensor(float(recorded), dtype=torch.float32)
            if bool(reciprocal(exact) == local["weight_global_scale"].float().reshape(())):
                q.scale2 = exact
    act_args = group.get("input_activations")
    act_name, amax = None, None
    if act_args:
        act_name = format_from_args(act_args, "input_activations")
        act = formats.get(act_name)
        if "input_global_scale" in local:
            amax = reciprocal(local["input_global_scale"].float().reshape(())) * 6.0 * 448.0
        elif "input_scale" in local:
            amax = local["input_scale"].float().reshape(()) * _act_max(act)
        amax = exact_input_amax(ckpt, module, amax)
    for k in weight_keys + ("input_scale", "input_global_scale", "input_zero_point"):
        ckpt.tensors.pop(f"{module}.{k}", None)
    ckpt.layers[module] = ReadLayer(module, wname, act_name, shape, qtensor=q, input_amax=amax)


def _act_max(fmt: Format) -> float:
    return float(getattr(fmt, "qmax", None) or getattr(fmt, "maxval"))


__all__ = ["Writer", "read", "format_from_args", "CODECS", "CT_LAYOUT_VERSION"]
