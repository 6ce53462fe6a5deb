"""PTQ algorithms side by side: perplexity after RTN / GPTQ / AWQ / SmoothQuant, and after QAD from each start.

Every cell is a whole run of the same recipe (same data, seed, calibration and evaluation
batches) with only ``calibration.algorithm`` (and, for the QAD column, ``mode`` and
``train.steps``) changed, so the figures are what a user of the pipeline gets. The GPTQ
time per block comes from the run's report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .runner import run

WEIGHT_ONLY = ("W4A16-INT4", "W3A16-INT3", "W2A16-INT2", "W4A16-NVFP4")
WEIGHT_ALGOS = ("rtn", "gptq", "awq")
ACT_SCHEMES = ("W8A8-INT8", "W4A4-NVFP4")
ACT_ALGOS = ("rtn", "smoothquant")


def default_cells() -> List[tuple]:
    return [(s, a) for s in WEIGHT_ONLY for a in WEIGHT_ALGOS] + [(s, a) for s in ACT_SCHEMES for a in ACT_ALGOS]


def ptq_bench(recipe, cells: Optional[Sequence[tuple]] = None, qad_steps: int = 60, workdir: Optional[Path] = None,
              log: Callable[[str], None] = print) -> Dict[str, object]:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="lowbit-ptqbench-"))
    base = recipe.with_updates({"export.format": None, "analysis.benchmark": False, "analysis.formats": []})
    rows = []
    baseline = None
    for scheme, algo in (cells or default_cells()):
        r = base.with_updates({"quant.scheme": scheme, "calibration.algorithm": algo, "mode": "ptq"})
        rep = run(r, run_dir=workdir / f"{scheme}-{algo}-ptq").report
        baseline = rep["baseline"]["perplexity"]
        row = {"scheme": scheme, "algorithm": algo, "ptq": rep["ptq"]["perplexity"],
               "algorithm_seconds": rep["timings"].get("gptq", 0.0) + rep["timings"].get("awq", 0.0)
               + rep["timings"].get("smoothquant", 0.0)}
        gptq_step = next((s for s in (rep.get("ptq_algorithm") or {}).get("steps", []) if s["algorithm"] == "gptq"),
                         None)
        if gptq_step:
            row["gptq_block_seconds"] = [b["seconds"] for b in gptq_step["blocks"]]
        if qad_steps:
            rq = r.with_updates({"mode": "qad", "train.steps": qad_steps})
            row["qad"] = run(rq, run_dir=workdir / f"{scheme}-{algo}-qad").report["final"]["perplexity"]
        rows.append(row)
        log(format_row(row, baseline))
    return {"baseline": baseline, "qad_steps": qad_steps, "rows": rows}


def format_row(row: Dict, baseline: float) -> str:
    gap = row["ptq"] - baseline
    qad = f"{row['qad']:10.3f}" if "qad" in row else f"{'-':>10}"
    return f"{row['scheme']:<13} {row['algorithm']:<12} {row['ptq']:10.3f} {gap:10.3f} {qad} {row['algorithm_seconds']:8.1f}"


def format_table(res: Dict) -> str:
    head = (f"baseline perplexity {res['baseline']:.3f}; QAD: {res['qad_steps']} steps from each start\n"
            f"{'scheme':<13} {'algorithm':<12} {'PTQ ppl':>10} {'gap':>10} {'QAD ppl':>10} {'algo s':>8}")
    lines = [head] + [format_row(r, res["baseline"]) for r in res["rows"]]
    by_scheme: Dict[str, Dict[str, Dict]] = {}
    for r in res["rows"]:
        by_scheme.setdefault(r["scheme"], {})[r["algorithm"]] = r
    for scheme, algos in by_scheme.items():
        if "rtn" in algos and "gptq" in algos:
            g_rtn = algos["rtn"]["ptq"] - res["baseline"]
            g = algos["gptq"]["ptq"] - res["baseline"]
            if g_rtn > 0:
                lines.append(f"{scheme}: GPTQ closes {(g_rtn - g) / g_rtn:.0%} of RTN's perplexity gap")
            else:  # RTN already at or below the baseline (evaluation noise): a ratio would mean nothing
                lines.append(f"{scheme}: RTN has no perplexity gap to close ({g_rtn:+.3f}); GPTQ's gap {g:+.3f}")
    return "\n".join(lines)
