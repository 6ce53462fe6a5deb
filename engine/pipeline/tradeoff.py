"""Accuracy against size for a set of runs: the points, the Pareto front, and which run to ship.

Every finished run is one point: x is its cost (average bits per quantized
weight, or the bytes of all its weights), y its accuracy loss (perplexity for
language models, 1 - embedding cosine read as "lower is better" for encoders;
the value shown is the metric itself). A point is on the Pareto front when no
other point is at least as cheap *and* at least as accurate, and strictly
better in one of the two. The GUI's plot, the HTML report and
``lowbit sweep``'s table all draw from :func:`trade_points` and
:func:`ship_rows`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

from .library import RunSummary

LOWER_IS_BETTER = {"perplexity": True, "kl": True, "embedding_cosine": False, "cosine": False}
MIXED_PREFIX = "mixed"  # run folders of per-layer mixes (the sweep names them mixed-<budget>b)
AXES = {"bits": "bits per weight (quantized layers, scales included)", "size": "weights size (MB)"}


@dataclass
class TradePoint:
    name: str
    path: str
    label: str  # "W4A16-NVFP4 ptq"
    scheme: str
    mode: str
    bits: float
    size_bytes: float
    metric: str
    value: float
    mixed: bool = False  # a per-layer mix from `lowbit mixed`
    front_bits: bool = False  # on the Pareto front of value vs bits
    front_size: bool = False  # on the Pareto front of value vs size

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def pareto_front(xs: Sequence[float], ys: Sequence[float], lower_is_better: bool = True) -> List[int]:
    """Indices of the points no other point dominates (x lower is better; y as told), sorted by x.

    Ties: of identical points all are kept (none is strictly better than the others).
    """
    sign = 1.0 if lower_is_better else -1.0
    pts = [(float(x), sign * float(y)) for x, y in zip(xs, ys)]
    front = []
    for i, (xi, yi) in enumerate(pts):
        dominated = any(xj <= xi and yj <= yi and (xj < xi or yj < yi) for j, (xj, yj) in enumerate(pts) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], pts[i][1]))


def common_metric(runs: Sequence[RunSummary]) -> str:
    """The headline metric most of the finished runs share (perplexity for LMs, cosine for encoders)."""
    counts: Dict[str, int] = {}
    for r in runs:
        if r.status == "completed" and r.metric_name:
            counts[r.metric_name] = counts.get(r.metric_name, 0) + 1
    return max(counts, key=counts.get) if counts else ""


def trade_points(runs: Sequence[RunSummary], metric: Optional[str] = None) -> List[TradePoint]:
    """One point per completed run with a size and ``metric``; the front flags set on both axes."""
    metric = metric or common_metric(runs)
    points = []
    for r in runs:
        if r.status != "completed" or r.metric_name != metric or r.metric is None:
            continue
        if r.bits_per_weight is None or r.size_bytes is None:
            continue
        mixed = r.name.lower().split("/")[-1].startswith(MIXED_PREFIX)
        label = (f"mixed {r.bits_per_weight:.2f} b" if mixed else r.scheme) + f" {r.mode}"
        points.append(TradePoint(r.name, r.path, label, r.scheme, r.mode, float(r.bits_per_weight),
                                 float(r.size_bytes), metric, float(r.metric), mixed=mixed))
    lower = LOWER_IS_BETTER.get(metric, True)
    for i in pareto_front([p.bits for p in points], [p.value for p in points], lower):
        points[i].front_bits = True
    for i in pareto_front([p.size_bytes for p in points], [p.value for p in points], lower):
        points[i].front_size = True
    return points


def _better(a: float, b: float, lower: bool) -> bool:
    return a < b if lower else a > b


def recommend(points: Sequence[TradePoint], max_size_bytes: Optional[float] = None,
              target: Optional[float] = None) -> Optional[TradePoint]:
    """The run to ship: within ``max_size_bytes`` the most accurate; meeting ``target`` the smallest.

    With both, the smallest run that meets the target within the size; None when nothing qualifies.
    """
    if not points:
        return None
    lower = LOWER_IS_BETTER.get(points[0].metric, True)
    ok = [p for p in points if max_size_bytes is None or p.size_bytes <= max_size_bytes]
    if target is not None:
        ok = [p for p in ok if (p.value <= target if lower else p.value >= target)]
        return min(ok, key=lambda p: (p.size_bytes, p.value if lower else -p.value), default=None)
    best = None
    for p in ok:
        if best is None or _better(p.value, best.value, lower) or (p.value == best.value and p.size_bytes < best.size_bytes):
            best = p
    return best


@dataclass
class ShipRow:
    """A run on the size front and the targets for which it is the one to ship."""

    point: TradePoint
    size_from: float  # ship it when the size budget is at least this ...
    size_to: Optional[float]  # ... and below this (None: any larger budget)
    meets: float  # ... or it is the smallest run whose metric is at least this good

    def to_dict(self) -> Dict[str, Any]:
        return {**self.point.to_dict(), "size_from": self.size_from, "size_to": self.size_to, "meets": self.meets}


def ship_rows(points: Sequence[TradePoint]) -> List[ShipRow]:
    """The size front from small to large; each row says for which budget / target it is the answer."""
    front = []
    for p in sorted((p for p in points if p.front_size), key=lambda p: p.size_bytes):
        if front and front[-1].size_bytes == p.size_bytes and front[-1].value == p.value:
            continue  # the same result twice (a repeated run): one row
        front.append(p)
    rows = []
    for i, p in enumerate(front):
        nxt = front[i + 1].size_bytes if i + 1 < len(front) else None
        rows.append(ShipRow(p, p.size_bytes, nxt, p.value))
    return rows


def describe_row(row: ShipRow) -> str:
    """One sentence: "ship when the weights may take 1.2 MB to 2.0 MB, or perplexity <= 55 is needed"."""
    p = row.point
    budget = (f"the weights may take {row.size_from / 1e6:.3g} MB to under {row.size_to / 1e6:.3g} MB"
              if row.size_to is not None else f"the weights may take {row.size_from / 1e6:.3g} MB or more")
    op = "<=" if LOWER_IS_BETTER.get(p.metric, True) else ">="
    return f"{budget}, or {p.metric} {op} {p.value:.4g} is needed at the smallest size"
