"""``export_model``: write a quantized student in one target layout, atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from ..errors import ExportError
from ..quant.linear import QuantLinear
from . import compressed_tensors, dense, modelopt
from .common import (DEFAULT_SHARD_MB, MARKER, PRODUCER, TARGETS, ExportFolder, ShardWriter, base_config,
                     LayerQuant, check_output_folder,
                     copy_side_files, dtype_name, folder_bytes, high_precision_linears, iter_state, model_dtype,
                     producer_version, quantized_layers, tensor_bytes, ties_embeddings)

WRITERS = {
    "compressed-tensors": compressed_tensors.Writer(),
    "modelopt": modelopt.Writer(),
    "dense": dense.Writer(),
}

# Layer tensors that describe the activations, not the stored weight (left out of bits_per_param).
_NOT_WEIGHT = ("input_", "pre_quant_scale")


def writer_for(target: str):
    writer = WRITERS.get(str(target).strip().lower())
    if writer is None:
        raise ExportError(f"unknown export format {target!r}; choose one of {', '.join(TARGETS)}")
    return writer


def input_multipliers(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The layers holding an explicit per-input-channel multiplier (``QuantLinear.pre_quant_scale``:
    an AWQ scale with no norm or linear to fold into), by name."""
    return {n: m.pre_quant_scale for n, m in model.named_modules()
            if isinstance(m, QuantLinear) and m.pre_quant_scale is not None}


def _carries(target: str, layer: LayerQuant) -> bool:
    """Whether ``target`` can write ``layer``'s explicit input multiplier: dense folds it into the weight
    where the activations stay in high precision, ModelOpt in its AWQ layouts, nothing else."""
    if target == dense.TARGET:
        return layer.act_fmt is None
    if target == modelopt.TARGET:
        return modelopt.carries_input_multiplier(layer)
    return False


def _check_multipliers(model: nn.Module, layers: Dict[str, LayerQuant], target: str) -> None:
    """The dense export folds an input multiplier into the weight it writes (x * p @ W^T = x @ (W p)^T);
    ModelOpt writes it as the layer's ``pre_quant_scale`` where its pairing has an AWQ layout
    (W4A16_AWQ, NVFP4_AWQ). Refused, naming the layers and the fix: compressed-tensors (its loaders
    know no such tensor), ModelOpt pairings without an AWQ layout, and dense layers whose activations
    are quantized (a plain load would quantize x instead of x * p)."""
    bad = [n for n in input_multipliers(model) if n in layers and not _carries(target, layers[n])]
    if bad:
        if target == dense.TARGET:
            why = "their activations are quantized, and a reload would quantize x instead of x * scale"
        elif target == modelopt.TARGET:
            why = ("ModelOpt has a pre_quant_scale tensor only in its AWQ layouts (W4A16_AWQ: int4 groups, weights "
                   "only; NVFP4_AWQ: NVFP4 weights and static NVFP4 activations), not for these layers' formats")
        else:
            why = f"{target} loaders know no per-input-channel multiplier tensor"
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise ExportError(
            f"{len(bad)} quantized layers keep an explicit AWQ input scale (AWQ found no norm or linear whose "
            f"output could absorb it): {', '.join(bad[:4])}{more}; {why}. Export as dense (weight-only schemes: "
            "the scale is folded into the written weight) or as modelopt with an AWQ-capable scheme, or quantize "
            "again with calibration.awq_unfoldable: skip (auto chooses skip where the export cannot carry it)")


def carries_input_multipliers(model: nn.Module, target: Optional[str]) -> bool:
    """Whether an export as ``target`` (None: no export) could write an explicit input multiplier on
    every quantized layer of ``model`` (quantized, calibrated or not): dense folds it where the
    activations stay in high precision, ModelOpt writes it in its AWQ layouts, compressed-tensors
    never. What calibration.awq_unfoldable auto asks before AWQ runs."""
    if not target:
        return True
    target = writer_for(target).target
    return all(_carries(target, layer) for layer in quantized_layers(model, assume_calibrated=True).values())


def check_exportable(model: nn.Module, target: str, before_calibration: bool = False) -> None:
    """Raise ExportError now if ``model`` cannot be written as ``target`` (nothing is written).

    ``before_calibration``: the model is quantized but not calibrated yet; activation
    formats that calibration gives a static scale count as static.
    """
    layers = quantized_layers(model, assume_calibrated=before_calibration)
    if not layers:
        raise ExportError("the model has no quantized layer to export; quantize it first")
    writer = writer_for(target)
    _check_multipliers(model, layers, writer.target)
    writer.check(layers, model)


def preflight(model: nn.Module, target: str, out: Optional[os.PathLike] = None,
              before_calibration: bool = False) -> None:
    """Every check an export makes before writing: the formats fit the target, the folder may be written."""
    check_exportable(model, target, before_calibration)
    if out is not None:
        check_output_folder(out)


def export_model(model: nn.Module, target: str, out: os.PathLike, *, recipe: Optional[Dict[str, Any]] = None,
                 source_dir: Optional[os.PathLike] = None, tokenizer: Any = None,
                 dtype: Optional[torch.dtype] = None, max_shard_mb: float = DEFAULT_SHARD_MB,
                 on_layer: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Write the quantized ``model`` (QuantLinear layers) to ``out`` in the ``target`` layout.

    ``dtype`` is the dtype of every tensor kept in high precision (default: the
    model's). Returns ``{format, path, bytes_on_disk, bits_per_param, n_files,
    n_quantized_layers}``. Raises ExportError, before writing anything, for a
    format the target cannot express, and for an output folder that is not empty
    and not a previous lowbit export.
    """
    writer = writer_for(target)
    target = writer.target
    layers = quantized_layers(model)
    if not layers:
        raise ExportError("the model has no quantized layer to export; quantize it first")
    _check_multipliers(model, layers, target)
    writer.check(layers, model)
    mult = input_multipliers(model)
    dtype = dtype or model_dtype(model)
    if not dtype.is_floating_point:
        raise ExportError(f"export dtype must be a floating-point type, not {dtype}")

    try:
        folder = ExportFolder(out)
    except OSError as exc:
        raise _write_error(out, exc) from exc
    try:
        shards = ShardWriter(folder, max_shard_mb, writer.shard_metadata(layers, recipe))
        tie = ties_embeddings(model)
        quantized_keys: set = set()
        break_tie = False
        seen: Dict[tuple, str] = {}
        weight_bytes = weight_numel = 0
        infos: Dict[str, Dict[str, Any]] = {}
        for key, value in iter_state(model):
            module, _, pname = key.rpartition(".")
            if pname == "pre_quant_scale" and module in mult:
                continue  # the writer's pre_quant_scale (modelopt), or folded into the weight below (dense)
            if pname == "weight" and module in layers:
                layer = layers[module]
                tensors = writer.layer_tensors(layer, dtype)
                if module in mult and "pre_quant_scale" not in tensors:  # dense: x * p @ Q^T = x @ (Q p)^T
                    tensors["weight"] = (tensors["weight"].float() * mult[module].float().cpu()).to(dtype)
                for local, t in tensors.items():
                    shards.add(f"{module}.{local}", t)
                    if not local.startswith(_NOT_WEIGHT):
                        weight_bytes += tensor_bytes(t)
                weight_numel += value.numel()
                infos[module] = {**layer.info(), **writer.layer_info(layer)}
                layer.release()
                sk = _storage_key(value)
                break_tie |= sk in seen  # tied to a matrix written in high precision
                seen[sk] = key
                quantized_keys.add(key)
                if on_layer:
                    on_layer(module)
                continue
            sk = _storage_key(value)
            if pname == "weight" and module in mult:  # a layer kept in high precision: fold exactly
                value = value * mult[module].to(value.device, value.dtype)
            if sk in seen:
                if seen[sk] in quantized_keys:
                    break_tie = True  # tied to a matrix that was written quantized
                elif tie:
                    continue  # a tied copy (lm_head = embeddings): the loader ties it again
                value = value.clone()
            seen[sk] = key
            shards.add(key, value.to(dtype) if value.is_floating_point() else value)
        missing = [n for n in layers if n not in infos]
        if missing:
            raise ExportError(f"quantized layers whose weight is not in the model's state dict: {missing[:5]}")
        shards.finish()

        config = base_config(model, dtype)
        if break_tie:
            config["tie_word_embeddings"] = False  # the tied matrix is quantized on one side only
        qc = writer.quantization_config(layers, model)
        if qc:
            config["quantization_config"] = qc
        folder.write_json("config.json", config)
        for name, data in writer.extra_json(layers, model).items():
            folder.write_json(name, data)
        copy_side_files(folder, model, Path(source_dir) if source_dir else None, tokenizer)
        bits = 8.0 * weight_bytes / weight_numel if weight_numel else None
        marker = {
            "producer": {"name": PRODUCER, "version": producer_version()},
            "target": target,
            "dtype": dtype_name(dtype),
            "bits_per_param": bits,
            "layers": {n: infos[n] for n in layers},
            "high_precision": high_precision_linears(model, layers),
            "recipe": recipe,
            "files": sorted(folder.names + [MARKER]),
        }
        folder.write_json(MARKER, marker)
        folder.commit()
    except OSError as exc:  # disk full, read-only folder: nothing half-written under a final name
        folder.abort()
        raise _write_error(folder.final, exc) from exc
    except BaseException:
        folder.abort()
        raise
    size, n_files = folder_bytes(folder.final)
    return {"format": target, "path": str(folder.final), "bytes_on_disk": size,
            "bits_per_param": round(bits, 4) if bits is not None else None, "n_files": n_files,
            "n_quantized_layers": len(layers), "dtype": dtype_name(dtype)}


def _write_error(out: os.PathLike, exc: OSError) -> ExportError:
    reason = exc.strerror or str(exc)
    return ExportError(f"could not write the export to {out}: {reason} ({type(exc).__name__}, errno "
                       f"{exc.errno}). Nothing was left under the final file names (a previous export there is "
                       "unchanged); free disk space or choose a writable output folder, then export again.")


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
