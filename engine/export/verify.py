"""Verify an export: rebuild a model from the written files with our reader and
compare its logits with the fake-quant student that produced them.

The rebuilt model is a fresh transformers model made from ``config.json``
holding the dequantized weights, with input quantizers restored from the
saved activation formats and scales (and ModelOpt's ``pre_quant_scale`` input
multipliers before them), so activation quantization runs as in the student.
The two must agree to float rounding.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Optional, Union

import torch
from torch import nn

from .. import formats
from ..errors import ExportError
from ..io.batch import model_inputs, token_mask
from ..quant.linear import QuantLinear
from .checkpoint import ExportedCheckpoint
from .reader import read_export

# Relative tolerance on logits, per dtype of the rebuilt model: identical weights and
# identical ops give identical logits; this only absorbs float reassociation.
REL_TOL = {torch.float32: 1e-5, torch.float64: 1e-9}
REL_TOL_DEFAULT = 2e-3  # 16-bit floats


def _config_from(ckpt: ExportedCheckpoint):
    from transformers import AutoConfig

    cfg = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ExportError(f"{ckpt.path}/config.json has no model_type")
    return AutoConfig.for_model(model_type, **cfg)


def _model_class(config, model_class):
    if model_class is not None:
        return model_class
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    raise ExportError(f"cannot tell which model class to build from config.json (architectures: "
                      f"{getattr(config, 'architectures', None)})")


def rebuild_model(source: Union[str, os.PathLike, ExportedCheckpoint], model_class=None,
                  device: Union[str, torch.device] = "cpu") -> nn.Module:
    """A fresh model from an export: dequantized weights plus rebuilt input quantizers."""
    ckpt = source if isinstance(source, ExportedCheckpoint) else read_export(source)
    config = _config_from(ckpt)
    cls = _model_class(config, model_class)
    model = cls._from_config(config, dtype=ckpt.dtype)
    state = ckpt.state_dict()
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ExportError(f"{ckpt.path}: tensors that the model does not have: {result.unexpected_keys[:5]}")
    own = model.state_dict()
    missing = [k for k in result.missing_keys if not _is_tied_copy(own, k, state)]
    if missing:
        raise ExportError(f"{ckpt.path}: the export lacks tensors the model needs: {missing[:5]}")
    modules = dict(model.named_modules())
    for name, layer in ckpt.layers.items():
        if layer.activation_format is None and layer.pre_quant_scale is None:
            continue
        mod = modules.get(name)
        if mod is None or type(mod) is not nn.Linear:
            raise ExportError(f"{ckpt.path}: quantized layer {name} is not a Linear layer of the rebuilt model")
        act = formats.get(layer.activation_format) if layer.activation_format is not None else None
        QuantLinear.convert(mod, None, act)
        if layer.input_amax is not None:
            mod.input_quantizer.set_amax(layer.input_amax.reshape(()))
        if layer.pre_quant_scale is not None:  # ModelOpt's AWQ layouts: x * pre_quant_scale before the quantizer
            mod.set_pre_quant_scale(layer.pre_quant_scale)
    return model.to(device).eval()


def _is_tied_copy(own: Dict[str, torch.Tensor], key: str, state: Dict[str, torch.Tensor]) -> bool:
    """True when ``key`` shares storage with a tensor that was loaded (tied embeddings)."""
    t = own[key]
    ptr = t.untyped_storage().data_ptr()
    return any(k in state and v.untyped_storage().data_ptr() == ptr for k, v in own.items() if k != key)


def _logits(out) -> torch.Tensor:
    for attr in ("logits", "last_hidden_state"):
        value = getattr(out, attr, None)
        if value is not None:
            return value
    return out[0]


@torch.no_grad()
def compare_logits(a: nn.Module, b: nn.Module, batches: Iterable, device=None,
                   on_batch: Optional[Callable[[int], None]] = None) -> Dict[str, float]:
    device = device or next(a.parameters()).device
    max_diff, max_logit, n = 0.0, 0.0, 0
    for i, batch in enumerate(batches):
        # token blocks, or padded sentences with their attention mask (encoders): padding is not compared
        inputs = model_inputs(batch, device)
        la = _logits(a(**inputs)).float()
        lb = _logits(b(**inputs)).float()
        if la.shape != lb.shape:
            raise ExportError(f"the rebuilt model gives logits of shape {tuple(lb.shape)}, not {tuple(la.shape)}")
        mask = token_mask(inputs)
        if mask is not None:
            real = mask.bool()
            la, lb = la[real], lb[real]
        max_diff = max(max_diff, float((la - lb).abs().max()))
        max_logit = max(max_logit, float(la.abs().max()))
        n += 1
        if on_batch:
            on_batch(i)
    return {"max_abs_logit_diff": max_diff, "max_abs_logit": max_logit, "batches": n}


def verify_export(out_dir: Union[str, os.PathLike], student_model: nn.Module, eval_batches: Iterable,
                  on_batch: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Reload ``out_dir`` with our reader, rebuild the model and compare its logits with the student's.

    Returns ``{max_abs_logit_diff, passed, tolerance, batches}``.
    """
    device = next(student_model.parameters()).device
    rebuilt = rebuild_model(out_dir, model_class=type(student_model), device=device)
    export_dtype = next(rebuilt.parameters()).dtype
    was_training = student_model.training
    student_model.eval()
    try:
        res = compare_logits(student_model, rebuilt, list(eval_batches), device, on_batch)
    finally:
        student_model.train(was_training)
        del rebuilt
    dtypes = (next(student_model.parameters()).dtype, export_dtype)
    tol = max(REL_TOL.get(d, REL_TOL_DEFAULT) for d in dtypes) * max(1.0, res["max_abs_logit"])
    return {"max_abs_logit_diff": res["max_abs_logit_diff"], "passed": bool(res["max_abs_logit_diff"] <= tol),
            "tolerance": tol, "batches": res["batches"]}
