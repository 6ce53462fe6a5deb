"""Stage: calibrate the quantizers' scales."""

from __future__ import annotations

from ...io.batch import model_inputs
from ... import calib
from ...parallel.sync import sync_amax, sync_calibration
from ...quant.select import quant_layers
from ..context import RunContext


def calibrate_stage(ctx: RunContext) -> None:
    """Weight scales, then static activation scales on the calibration batches."""
    r = ctx.recipe
    model = ctx.loaded.model
    n_layers = len(quant_layers(model))
    with ctx.stage("calibrate weights", n_layers, detail=r.calibration.method) as prog:
        calib.calibrate_weights(model, r.calibration.method, r.calibration.mse_grid, r.calibration.mse_min_ratio,
                                progress=lambda name: prog.step(detail=name))
    # each rank calibrates on its own batches and the statistics are merged (one rank: all of them, unchanged)
    batches = ctx.dist.shard_batches(ctx.batches(ctx.splits.calib, r.data.calib_batches))
    with ctx.stage("calibrate", len(batches), detail=f"{len(batches)} batches") as prog:
        def loop(m):
            for ids in batches:
                m(**model_inputs(ids, ctx.device))
                prog.step()

        calib.calibrate_activations(model, loop, r.calibration.method, r.calibration.percentile,
                                    reduce=lambda qs: sync_calibration(qs, ctx.dist))
    sync_amax(model, ctx.dist)  # identical scales on every rank before the model is wrapped
