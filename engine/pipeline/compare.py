"""Two or more runs side by side: evaluation curves, result rows with differences, per-layer changes.

Plain data for the Compare view and the HTML report (both draw from these).
The first run is the reference: differences are ``run - reference``; in the
per-layer view a positive value means the layer's weight SQNR went up (less
rounding error) against the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .library import RunRecord, final_result

# (key, label, lower is better)
COLUMNS: List[Tuple[str, str, bool]] = [
    ("perplexity", "perplexity", True),
    ("kl", "KL vs original", True),
    ("top1_agreement", "top-1 agreement", False),
    ("embedding_cosine", "embedding cosine", False),
    ("cosine", "cosine", False),
    ("bits_per_weight", "bits / weight", True),
    ("size_mb", "weights MB", True),
    ("tokens_per_s", "tokens / s", False),
]


def run_label(rec: RunRecord) -> str:
    s = rec.summary
    return s.name


@dataclass
class Curve:
    label: str
    steps: List[float] = field(default_factory=list)
    values: List[float] = field(default_factory=list)


def eval_curves(records: Sequence[RunRecord], metric: str = "perplexity") -> List[Curve]:
    """Per run: ``metric`` at step 0 (after PTQ), at each evaluation during training, and at the end."""
    curves = []
    for rec in records:
        c = Curve(run_label(rec))
        ptq = [v for stage, name, v, _ in rec.metrics if stage == "ptq" and name == metric]
        if ptq:
            c.steps.append(0.0)
            c.values.append(ptq[-1])
        last_step = 0
        for stage, name, v, step in rec.metrics:
            if stage == "train" and step is not None:
                last_step = max(last_step, step)
            if stage == "eval" and name == metric and step is not None:
                c.steps.append(float(step))
                c.values.append(v)
                last_step = max(last_step, step)
        final = [v for stage, name, v, _ in rec.metrics if stage == "final" and name == metric]
        if final and last_step > 0 and (not c.steps or c.steps[-1] != last_step):
            c.steps.append(float(last_step))
            c.values.append(final[-1])
        curves.append(c)
    return curves


def train_curves(records: Sequence[RunRecord], name: str = "loss") -> List[Curve]:
    curves = []
    for rec in records:
        c = Curve(run_label(rec))
        for stage, n, v, step in rec.metrics:
            if stage == "train" and n == name and step is not None:
                c.steps.append(float(step))
                c.values.append(v)
        curves.append(c)
    return curves


def result_values(rec: RunRecord) -> Dict[str, float]:
    """The final numbers of one run (the COLUMNS keys it has)."""
    out: Dict[str, float] = {}
    final = final_result(rec.report)
    for key, _, _ in COLUMNS:
        v = final.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[key] = float(v)
    if rec.summary.bits_per_weight is not None:
        out["bits_per_weight"] = rec.summary.bits_per_weight
    if rec.summary.size_bytes is not None:
        out["size_mb"] = rec.summary.size_bytes / 1e6
    speed = (rec.report.get("benchmark") or {}).get("quantized") or {}
    if isinstance(speed.get("tokens_per_s"), (int, float)):
        out["tokens_per_s"] = float(speed["tokens_per_s"])
    return out


@dataclass
class ResultTable:
    runs: List[str]
    columns: List[Tuple[str, str, bool]]  # the COLUMNS at least one run has
    values: List[Dict[str, float]]  # per run
    diffs: List[Dict[str, float]]  # per run: value - reference value (empty for the reference)

    def better(self, i: int, key: str) -> Optional[bool]:
        """True when run ``i`` is better than the reference on ``key``, False when worse, None when equal/absent."""
        d = self.diffs[i].get(key)
        if d is None or d == 0:
            return None
        lower = next(low for k, _, low in self.columns if k == key)
        return d < 0 if lower else d > 0


def result_table(records: Sequence[RunRecord]) -> ResultTable:
    values = [result_values(r) for r in records]
    cols = [c for c in COLUMNS if any(c[0] in v for v in values)]
    ref = values[0] if values else {}
    diffs = [{} if i == 0 else {k: v[k] - ref[k] for k in v if k in ref} for i, v in enumerate(values)]
    return ResultTable([run_label(r) for r in records], cols, values, diffs)


def layer_sqnr(rec: RunRecord) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for layer in rec.report.get("layers") or []:
        v = layer.get("weight_sqnr_db")
        if isinstance(v, (int, float)) and layer.get("name"):
            out[str(layer["name"])] = float(v)
    if not out:
        for name, stats in rec.layer_stats:
            v = stats.get("weight_sqnr_db")
            if isinstance(v, (int, float)):
                out[name] = float(v)
    return out


@dataclass
class LayerDiff:
    layers: List[str]  # the reference's layer order, then layers only later runs have
    columns: List[str]  # the compared runs; each column is that run minus the reference
    values: List[List[float]]  # [layer][column] SQNR difference in dB; NaN where a run lacks the layer
    sqnr: List[List[float]]  # [layer][run] the SQNR itself, reference first


def layer_diff(records: Sequence[RunRecord]) -> LayerDiff:
    per_run = [layer_sqnr(r) for r in records]
    order: List[str] = []
    for rec, values in zip(records, per_run):
        for name in (rec.layer_names or list(values)):
            if name in values and name not in order:
                order.append(name)
        for name in values:
            if name not in order:
                order.append(name)
    nan = float("nan")
    ref = per_run[0] if per_run else {}
    labels = [run_label(r) for r in records]
    columns = labels[1:]  # each minus the reference (labels[0])
    values, sqnr = [], []
    for name in order:
        row = []
        for values_i in per_run[1:]:
            a, b = ref.get(name), values_i.get(name)
            row.append(b - a if a is not None and b is not None and math.isfinite(a) and math.isfinite(b) else nan)
        values.append(row)
        sqnr.append([v.get(name, nan) for v in per_run])
    return LayerDiff(order, columns, values, sqnr)
