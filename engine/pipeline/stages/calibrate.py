"""Stage: the PTQ algorithm (calibration.algorithm), then the quantizers' scales."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ...errors import LowbitError
from ...export import carries_input_multipliers, preflight
from ...io.batch import model_inputs
from ... import calib
from ...calib.awq import awq, resolve_unfoldable
from ...calib.blocks import find_blocks, input_device
from ...calib.gptq import gptq
from ...calib.sequential import calibrate_activations_sequential, left_outside
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
    # sequential calibration: the model is in CPU memory, and the whole-model passes (AWQ, SmoothQuant,
    # GPTQ, weight scales) run there; only the activation scales go one block on the device at a time
    where = torch.device("cpu") if ctx.sequential is not None else ctx.device
    if ctx.sequential is not None:
        outside = left_outside(model)
        if outside:
            raise LowbitError(f"calibration.sequential calibrates the layers inside the transformer blocks, and "
                              f"{', '.join(outside[:3])} sit outside them: leave them unquantized (quant.exclude) "
                              "or set calibration.sequential: false")
        whole = [s for s in steps if s in ("awq", "smoothquant")]
        if whole:
            ctx.log(f"calibration.algorithm {'+'.join(whole)} runs on the whole model where its weights are "
                    "(CPU memory); GPTQ and the activation scales go one block on the device at a time")

    def plain_loop(m):
        for ids in batches:
            m(**model_inputs(ids, where))

    def block_loop(m):  # GPTQ's: the inputs go where the embeddings are (on the device under sequential)
        at = input_device(m)
        for ids in batches:
            m(**model_inputs(ids, at))

    algo_report: Dict[str, Any] = {"algorithm": r.calibration.algorithm, "steps": []}
    for step in steps:  # scaling first: it changes the weights that the scales are measured on
        if step not in ("awq", "smoothquant"):
            continue
        with ctx.stage(step, None, detail=f"{len(batches)} batches") as prog:
            if step == "awq":
                res = awq(model, plain_loop, grid=r.calibration.awq_grid, cancel=ctx.cancel,
                          unfoldable=resolve_unfoldable(r.calibration.awq_unfoldable, r.export.format,
                                                        carries_input_multipliers(model, r.export.format)))
            else:
                alpha = None if r.calibration.smoothquant_alpha == "auto" else float(r.calibration.smoothquant_alpha)
                res = smoothquant(model, plain_loop, alpha=alpha, cancel=ctx.cancel)
        folded = sum(1 for g in res.groups if g.get("folded"))
        explicit = sum(1 for g in res.groups if g.get("explicit"))
        kept = f", {explicit} without one given explicit input scales" if explicit else ""
        ctx.log(f"{step}: {folded} of {len(res.groups)} layer groups rescaled and folded{kept} "
                f"({len(res.groups) - folded - explicit} without an exact fold left as they were), {res.seconds:.1f} s")
        algo_report["steps"].append(res.to_dict())
        if explicit and r.export.format:  # a packed export refuses explicit scales: say so now, not after training
            preflight(model, r.export.format, before_calibration=True)
    with ctx.stage("calibrate weights", n_layers, detail=r.calibration.method) as prog:
        calib.calibrate_weights(model, r.calibration.method, r.calibration.mse_grid, r.calibration.mse_min_ratio,
                                progress=lambda name: prog.step(detail=name))
    if "gptq" in steps:
        ctx.original_weights = {n: m.weight.detach().to("cpu", copy=True) for n, m in quant_layers(model)}
        n_blocks = len(find_blocks(model)[1] or []) or None
        with ctx.stage("gptq", n_blocks, detail=f"{len(batches)} batches") as prog:
            def block_done(i, total, info):
                prog.step(detail=f"{info['block']} in {info['seconds']:.1f} s")
                ctx.log(f"gptq: block {i}/{total} ({info['block']}) in {info['seconds']:.2f} s")

            res = gptq(model, block_loop, damp=r.calibration.gptq_damp, block_size=r.calibration.gptq_block_size,
                       act_order=r.calibration.gptq_act_order, scale_search=r.calibration.gptq_scale_search,
                       search_grid=r.calibration.mse_grid, search_min_ratio=r.calibration.mse_min_ratio,
                       cancel=ctx.cancel, device=ctx.device if ctx.sequential is not None else None,
                       progress=block_done)
        ctx.log(f"gptq: {len(res.layers)} layers in {res.seconds:.1f} s")
        algo_report["steps"].append(res.to_dict())
    if algo_report["steps"]:
        ctx.report["ptq_algorithm"] = algo_report
    if ctx.sequential is not None:
        _calibrate_sequential(ctx, model, batches)
        return
    with ctx.stage("calibrate", len(batches), detail=f"{len(batches)} batches") as prog:
        def loop(m):
            for ids in batches:
                m(**model_inputs(ids, ctx.device))
                prog.step()

        calib.calibrate_activations(model, loop, r.calibration.method, r.calibration.percentile,
                                    reduce=lambda qs: sync_calibration(qs, ctx.dist))
    sync_amax(model, ctx.dist)  # identical scales on every rank before the model is wrapped


def _calibrate_sequential(ctx: RunContext, model: torch.nn.Module, batches) -> None:
    """Static activation scales one block on ``ctx.device`` at a time (engine.calib.sequential), then the
    model to the device the rest of the run uses (``ctx.sequential``: the run's, or the CPU when the memory
    plan says the whole model does not fit there)."""
    r = ctx.recipe
    calib_device = ctx.device
    n_blocks = len(find_blocks(model)[1] or [])
    with ctx.stage("calibrate", n_blocks, detail=f"{len(batches)} batches, one block at a time on {calib_device}") \
            as prog:
        def loop(m):
            for ids in batches:
                m(**model_inputs(ids, calib_device))

        calibrate_activations_sequential(model, loop, calib_device, r.calibration.method, r.calibration.percentile,
                                         progress=lambda what: prog.step(detail=what))
    if ctx.sequential != calib_device:
        ctx.log(f"the whole model does not fit {calib_device}: the stages after calibration run on "
                f"{ctx.sequential}", "warning")
        ctx.device = ctx.sequential
    model.to(ctx.device)
    ctx.report["calibration"] = {"sequential": True, "device": str(calib_device), "blocks": n_blocks,
                                 "after": str(ctx.device)}


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
