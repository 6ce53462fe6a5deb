"""Stages: evaluate the quantized model against the original, and the per-layer report."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from ...analysis.metrics import evaluate, sqnr_db
from ...events import LayerStats
from ...quant.select import quant_layers
from ..context import RunContext
from .calibrate import layer_errors, original_model


def evaluate_stage(ctx: RunContext, label: str, baseline: bool = False) -> Dict[str, float]:
    """Evaluate the quantized model against the original; emits and returns ``label``'s metrics."""
    r = ctx.recipe
    batches = ctx.batches(ctx.splits.eval, r.data.eval_batches)
    # after GPTQ the model's own weights are the rounded ones: compare with the loaded model instead
    reference = original_model(ctx, ctx.device) if ctx.original_weights else None
    with ctx.stage(f"evaluate {label}", len(batches)) as prog:
        res = evaluate(ctx.loaded.model, batches, ctx.loaded.kind, ctx.device, on_batch=lambda i: prog.step(),
                       dist=ctx.dist, reference=reference)
    del reference
    if baseline:
        ctx.report["baseline"] = res["baseline"]
        for k, v in res["baseline"].items():
            if k != "tokens":
                ctx.metric("baseline", k, v)
    for k, v in res["quantized"].items():
        if k != "tokens":
            ctx.metric(label, k, v)
    return res["quantized"]


@torch.no_grad()
def layer_report(ctx: RunContext) -> List[Dict[str, Any]]:
    rows = []
    errors = layer_errors(ctx.report)  # output error before / after the PTQ algorithm, per layer
    for name, layer in quant_layers(ctx.loaded.model):
        wq = layer.weight_quantizer
        row = {"name": name, "format": wq.format_name, "activation_format": layer.input_quantizer.format_name,
               "in_features": layer.in_features, "out_features": layer.out_features,
               "params": layer.weight.numel()}
        if wq.fmt is not None and wq.enabled:
            original = ctx.original_weights.get(name)
            original = layer.weight if original is None else original.to(layer.weight.device, layer.weight.dtype)
            row["weight_sqnr_db"] = sqnr_db(original, layer.quantized_weight())
        row.update(errors.get(name, {}))
        iq = layer.input_quantizer
        if iq.amax is not None:
            row["input_amax"] = float(iq.amax.max())
        rows.append(row)
        ctx.sink(LayerStats(name, wq.format_name, {k: v for k, v in row.items() if k != "name"}))
    return rows
