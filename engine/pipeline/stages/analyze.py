"""Stage: per-layer error of candidate formats (and sensitivity) after calibration."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from ...analysis.layers import DEFAULT_BATCHES, analyze_layers, resolve_formats
from ...analysis.sensitivity import sensitivity as measure_sensitivity
from ...quant.select import quant_layers
from ..context import RunContext


def analysis_stage(ctx: RunContext, formats: Iterable[str], sensitivity: bool = False, n_batches: int = DEFAULT_BATCHES,
                   activation: Optional[str] = None) -> Dict[str, Any]:
    """Analyse the run's quantized layers under ``formats``; writes ``analysis.json`` / ``.csv``.

    Call it after calibration (the run's own quantizers are switched off while
    the analysis measures, and left as they were). Records ``report["analysis"]``
    (the path of the files and the layers x formats matrices) and returns it.
    """
    model = ctx.loaded.model
    layers = [(n, m) for n, m in quant_layers(model) if m.weight_quantizer.fmt is not None]
    if not layers:
        return {}
    fmts = [f.name for f in resolve_formats(formats)]
    batches = ctx.batches(ctx.splits.calib, n_batches)
    with ctx.stage("analyze", len(layers), detail=", ".join(fmts)):
        result = analyze_layers(model, batches, fmts, layers=layers, activation=activation, device=ctx.device,
                                sink=ctx.sink, cancel=ctx.cancel)
    if sensitivity:
        with ctx.stage("sensitivity", len(layers) * len(fmts), detail=", ".join(fmts)):
            sens = measure_sensitivity(model, batches, fmts, layers=[n for n, _ in layers], activation=activation,
                                       device=ctx.device, sink=ctx.sink, cancel=ctx.cancel)
        result.add_sensitivity(sens)
    json_path, csv_path = result.write(ctx.run_dir)
    summary = {"json": str(json_path), "csv": str(csv_path), "formats": result.formats,
               "layers": [r.name for r in result.layers],
               "weight_sqnr_db": result.matrix("weight_sqnr_db"),
               "output_sqnr_db": result.matrix("output_sqnr_db")}
    if sensitivity:
        summary["sensitivity"] = result.matrix("sensitivity")
    ctx.report["analysis"] = summary
    return summary
