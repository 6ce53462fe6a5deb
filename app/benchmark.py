"""The benchmark table's content, read from a run report (no Qt).

One row per result (the original model, PTQ, then QAT or QAD when trained),
one column per metric the report has. Sizes are computed from the layer list
(each quantized layer at its format's bits, scales included); speed comes from
``report["benchmark"]`` when the engine measured it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from .catalog import model_bytes


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: Callable[[float], str]
    better: str  # "lower" | "higher"
    tooltip: str


def _num(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def _pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def _mb(v: float) -> str:
    return f"{v / 1e6:.3g} MB"


METRICS = [
    Metric("perplexity", "Perplexity", _num, "lower", "How surprised the model is by the evaluation text."),
    Metric("kl", "KL vs original", _num, "lower",
           "How far the next-token predictions moved from the original model's (0 = identical)."),
    Metric("top1_agreement", "Top-1 agreement", _pct, "higher",
           "How often the most likely next token is the same as the original model's."),
    Metric("cosine", "Cosine vs original", _num, "higher", "Similarity of the output vectors (1 = identical)."),
    Metric("embedding_cosine", "Sentence-embedding cosine", _num, "higher",
           "Cosine of the L2-normalised mean-pooled sentence embeddings to the original's, on held-out "
           "sentences (1 = identical): what sentence-embedding users measure."),
    Metric("cls_embedding_cosine", "CLS-embedding cosine", _num, "higher",
           "The same for the first token's ([CLS]) embedding, for models pooled that way."),
    Metric("mse", "MSE vs original", _num, "lower", "Mean squared difference of the outputs."),
    Metric("size_bytes", "Weights size", _mb, "lower",
           "Stored size of the weights: quantized layers at their format's bits (scales included), "
           "the rest in the original data type."),
    Metric("tokens_per_s", "Speed (tokens/s)", lambda v: f"{v:,.0f}", "higher",
           "Inference throughput measured by the engine's benchmark."),
]
METRIC_BY_KEY = {m.key: m for m in METRICS}


@dataclass
class ResultRow:
    key: str  # baseline | ptq | qat | qad
    label: str
    values: Dict[str, float]


def _finite(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if not math.isnan(f) else None


def result_rows(report: Dict[str, Any]) -> List[ResultRow]:
    mode = str(report.get("mode", "ptq"))
    model = report.get("model") or {}
    layers = report.get("layers") or []
    speed = report.get("benchmark") or {}
    rows = [ResultRow("baseline", "Original", dict(report.get("baseline") or {})),
            ResultRow("ptq", "PTQ", dict(report.get("ptq") or {}))]
    if report.get("final"):
        rows.append(ResultRow(mode, mode.upper(), dict(report["final"])))
    if rows[0].values and "kl" in rows[1].values:
        rows[0].values.setdefault("kl", 0.0)
        rows[0].values.setdefault("top1_agreement", 1.0)
    if model.get("n_params"):
        rows[0].values["size_bytes"] = model_bytes(model["n_params"], model.get("dtype", "float32"))
        if layers:
            quantized = model_bytes(model["n_params"], model.get("dtype", "float32"), layers)
            for row in rows[1:]:
                row.values["size_bytes"] = quantized
    for row in rows:
        if isinstance(speed.get(row.key), dict) and "tokens_per_s" in speed[row.key]:
            row.values["tokens_per_s"] = speed[row.key]["tokens_per_s"]
        row.values = {k: f for k, f in ((k, _finite(v)) for k, v in row.values.items()) if f is not None}
    return [r for r in rows if r.values]


def columns(rows: List[ResultRow]) -> List[Metric]:
    """The metrics at least one row has, in METRICS order."""
    return [m for m in METRICS if any(m.key in r.values for r in rows)]
