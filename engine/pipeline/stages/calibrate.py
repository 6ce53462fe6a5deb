"""Stage: the PTQ algorithm (calibration.algorithm), then the quantizers' scales."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ...errors import LowbitError
from ...io.batch import model_inputs
from ... import calib
from ...calib.awq import awq
from ...calib.gptq import gptq
from ...calib.smoothquant import smoothquant
from ...train import frozen_original
from ...parallel.sync import sync_amax, sync_calibration
from ...quant.select import quant_layers
from ..context import RunContext


def calibrate_stage(ctx: RunContext) -> None:
    """Weight scales, then static activation scales on the calibration batches."""
    r = ctx.recipe
    model = ctx.loaded.model
    n_layers = len(quant_layers(model))
    steps = r.calibration.algorithm.split("+")
    if ctx.dist.active and steps != ["rtn"]:
        raise LowbitError(f"calibration.algorithm {r.calibration.algorithm} runs in one process (each rank would "
                          "round differently): run it without torchrun, or use algorithm rtn")
    # each rank calibrates on its own batches and the statistics are merged (one rank: all of them, unchanged)
    batches = ctx.dist.shard_batches(ctx.batches(ctx.splits.calib, r.data.calib_batches))

    def plain_loop(m):
        for ids in batches:
            m(**model_inputs(ids, ctx.device))

    algo_report: Dict[str, Any] = {"algorithm": r.calibration.algorithm, "steps": []}
    for step in steps:  # scaling first: it changes the weights that the scales are measured on
        if step not in ("awq", "smoothquant"):
            continue
        with ctx.stage(step, None, detail=f"{len(batches)} batches") as prog:
            if step == "awq":
                res = awq(model, plain_loop, grid=r.calibration.awq_grid, cancel=ctx.cancel)
            else:
                alpha = None if r.calibration.smoothquant_alpha == "auto" else float(r.calibration.smoothquant_alpha)
                res = smoothquant(model, plain_loop, alpha=alpha, cancel=ctx.cancel)
        folded = sum(1 for g in res.groups if g.get("folded"))
        ctx.log(f"{step}: {folded} of {len(res.groups)} layer groups rescaled and folded "
                f"({len(res.groups) - folded} without an exact fold left as they were), {res.seconds:.1f} s")
        algo_report["steps"].append(res.to_dict())
    with ctx.stage("calibrate weights", n_layers, detail=r.calibration.method) as prog:
        calib.calibrate_weights(model, r.calibration.method, r.calibration.mse_grid, r.calibration.mse_min_ratio,
                                progress=lambda name: prog.step(detail=name))
    if "gptq" in steps:
        ctx.original_weights = {n: m.weight.detach().to("cpu", copy=True) for n, m in quant_layers(model)}
        with ctx.stage("gptq", None, detail=f"{len(batches)} batches") as prog:
            res = gptq(model, plain_loop, damp=r.calibration.gptq_damp, block_size=r.calibration.gptq_block_size,
                       act_order=r.calibration.gptq_act_order, scale_search=r.calibration.gptq_scale_search,
                       search_grid=r.calibration.mse_grid, search_min_ratio=r.calibration.mse_min_ratio,
                       cancel=ctx.cancel,
                       progress=lambda i, total, info: ctx.log(
                           f"gptq: block {i}/{total} ({info['block']}) in {info['seconds']:.2f} s"))
        ctx.log(f"gptq: {len(res.layers)} layers in {res.seconds:.1f} s")
        algo_report["steps"].append(res.to_dict())
    if algo_report["steps"]:
        ctx.report["ptq_algorithm"] = algo_report
    with ctx.stage("calibrate", len(batches), detail=f"{len(batches)} batches") as prog:
        def loop(m):
            for ids in batches:
                m(**model_inputs(ids, ctx.device))
                prog.step()

        calib.calibrate_activations(model, loop, r.calibration.method, r.calibration.percentile,
                                    reduce=lambda qs: sync_calibration(qs, ctx.dist))
    sync_amax(model, ctx.dist)  # identical scales on every rank before the model is wrapped


def layer_errors(report: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """Per layer, the output error of round-to-nearest and after each algorithm step (report["ptq_algorithm"])."""
    out: Dict[str, Dict[str, float]] = {}
    for step in (report.get("ptq_algorithm") or {}).get("steps", []):
        algo = step["algorithm"]
        for row in step.get("layers", []):
            d = out.setdefault(row["name"], {})
            d.setdefault("error_rtn", row["rtn_error"])
            d[f"error_{algo}"] = row[f"{algo}_error"]
            if "seconds" in row:
                d[f"{algo}_seconds"] = row["seconds"]
    return out


def original_model(ctx: RunContext, device: Optional[torch.device] = None) -> torch.nn.Module:
    """A frozen full-precision copy of the model as loaded: weights a PTQ algorithm rewrote are put back.

    (AWQ / SmoothQuant rescalings are exact re-parametrisations, so the copy computes what the
    loaded model computes.)"""
    ref = frozen_original(ctx.loaded.model, device)
    if ctx.original_weights:
        modules = dict(ref.named_modules())
        with torch.no_grad():
            for name, w in ctx.original_weights.items():
                modules[name].weight.copy_(w.to(modules[name].weight.device, modules[name].weight.dtype))
    return ref
