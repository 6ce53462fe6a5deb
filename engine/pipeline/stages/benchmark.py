"""Stage: time the model before and after quantization (latency, tokens/s, memory, size)."""

from __future__ import annotations

from typing import Any, Dict

from ...analysis.benchmark import bench_model, comparison_rows
from ...quant.select import quantization_disabled
from ..context import RunContext


def benchmark_stage(ctx: RunContext, repeats: int = 3) -> Dict[str, Any]:
    """The runner's stage: bench the model before and after on one eval batch; records
    ``report["benchmark"]`` and ``report["comparison"]`` (call it after training and export)."""
    batches = ctx.batches(ctx.splits.eval, 1)
    model = ctx.loaded.model
    with ctx.stage("benchmark", 2, detail=f"{repeats} timed passes of one batch") as prog:
        with quantization_disabled(model):
            base = bench_model(model, batches, ctx.device, repeats)
        prog.step(detail="baseline")
        quant = bench_model(model, batches, ctx.device, repeats)
        prog.step(detail="quantized")
    ctx.report["benchmark"] = {"baseline": base, "quantized": quant}
    for label, res in (("baseline", base), ("quantized", quant)):
        for k in ("latency_ms", "tokens_per_s", "peak_memory_mb", "param_bytes", "bits_per_weight"):
            if res.get(k) is not None:
                ctx.metric("benchmark", f"{label}_{k}", res[k])
    ctx.report["comparison"] = comparison_rows(ctx.report)
    return ctx.report["benchmark"]
