"""One self-contained HTML page about one or more runs (or sweeps): plots as inline SVG, tables.

Nothing on the page points outside it (no scripts, style sheets, fonts or
images by URL), so it opens from a file in any browser and can be mailed.
The figures come from the same data functions as the window's Compare and
Sweep views (:mod:`.compare`, :mod:`.tradeoff`).
"""

from __future__ import annotations

import math
import os
import time
from html import escape
from pathlib import Path
from typing import Iterable, List, Sequence

from ..errors import LowbitError
from ..fsutil import write_text_atomic
from . import svg
from .compare import eval_curves, layer_diff, result_table, train_curves
from .library import SWEEP, LibraryError, RunRecord, find_runs, is_run_folder, load_run
from .tradeoff import AXES, LOWER_IS_BETTER, describe_row, ship_rows, trade_points

STYLE = """
body{font-family:sans-serif;margin:24px auto;max-width:1180px;color:#222;background:#fff}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f2f2f2}
td.l,th.l{text-align:left} .better{color:#1a7f37} .worse{color:#b42318} .muted{color:#777}
.figs{display:flex;flex-wrap:wrap;gap:12px} .ship{background:#fff6d6}
"""


def expand_runs(paths: Iterable[os.PathLike]) -> List[Path]:
    """Run folders named directly, and the runs inside named sweep folders or run collections."""
    out: List[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise LowbitError(f"{p} is not a folder; give run folders or sweep folders")
        if is_run_folder(p):
            out.append(p)
            continue
        inner = [f for f, _, _ in find_runs([p])]
        if not inner:
            raise LowbitError(f"{p} holds no run folder (no recipe.yaml, events.jsonl or report.json)")
        out.extend(inner)
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.4g}" if isinstance(v, float) else escape(str(v))


def _runs_table(records: Sequence[RunRecord]) -> str:
    head = ["run", "model", "scheme", "mode", "status", "metric", "bits / weight", "weights MB", "started"]
    rows = []
    for r in records:
        s = r.summary
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started)) if s.started else "—"
        metric = f"{s.metric_name} {_num(s.metric)}" if s.metric_name else "—"
        rows.append([s.name, s.model, s.scheme, s.mode, s.status + (f": {s.error}" if s.error else ""), metric,
                     _num(s.bits_per_weight), _num(s.size_bytes / 1e6 if s.size_bytes else None), started])
    return _table(head, rows, left=5)


def _table(head: List[str], rows: List[List[str]], left: int = 1, classes: Sequence[str] = ()) -> str:
    h = "".join(f'<th class="l">{escape(c)}</th>' if i < left else f"<th>{escape(c)}</th>" for i, c in enumerate(head))
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{classes[k]}"' if k < len(classes) and classes[k] else ""
        cells = "".join(f'<td class="l">{c if c.startswith("<") else escape(str(c))}</td>' if i < left
                        else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def _trade_off_section(records: Sequence[RunRecord]) -> str:
    points = trade_points([r.summary for r in records])
    if len(points) < 2:
        return ""
    metric = points[0].metric
    arrow = "lower is better" if LOWER_IS_BETTER.get(metric, True) else "higher is better"
    figs = [svg.scatter_front([(p.bits, p.value, p.label, p.front_bits, p.mixed) for p in points],
                              f"{metric} vs bits per weight", AXES["bits"], f"{metric} ({arrow})"),
            svg.scatter_front([(p.size_bytes / 1e6, p.value, p.label, p.front_size, p.mixed) for p in points],
                              f"{metric} vs weights size", AXES["size"], f"{metric} ({arrow})")]
    ship = ship_rows(points)
    rows = [[row.point.name, row.point.label, _num(row.point.bits), _num(row.point.size_bytes / 1e6),
             _num(row.point.value), escape(describe_row(row))] for row in ship]
    return ("<h2>Trade-off: accuracy against size</h2>"
            f'<p class="muted">Red points are on the Pareto front (nothing else is both smaller and more accurate); '
            f"squares are per-layer mixes.</p><div class=\"figs\">{''.join(figs)}</div>"
            "<h3>Which run to ship</h3>"
            + _table(["run", "result", "bits / weight", "weights MB", metric, "ship it when"], rows, left=2))


def _compare_section(records: Sequence[RunRecord]) -> str:
    if len(records) < 2:
        return ""
    t = result_table(records)
    head = ["run"] + [label for _, label, _ in t.columns]
    rows = []
    for i, name in enumerate(t.runs):
        cells = [name]
        for key, _, _ in t.columns:
            v = t.values[i].get(key)
            d = t.diffs[i].get(key)
            cell = _num(v)
            if d is not None and i > 0:
                b = t.better(i, key)
                cls = "better" if b else ("worse" if b is False else "muted")
                cell += f' <span class="{cls}">({d:+.3g})</span>'
            cells.append(cell)
        rows.append(cells)
    parts = ["<h2>Results side by side</h2>",
             f'<p class="muted">Differences are against the first run, {escape(t.runs[0])}; green is better.</p>',
             _table(head, rows)]
    figs = []
    curves = [c for c in eval_curves(records) if c.steps]
    if any(len(c.steps) > 1 for c in curves):
        figs.append(svg.lines([(c.label, c.steps, c.values) for c in curves], "evaluation perplexity",
                              "training step", "perplexity"))
    losses = [c for c in train_curves(records) if c.steps]
    if losses:
        figs.append(svg.lines([(c.label, c.steps, c.values) for c in losses], "training loss", "training step", "loss"))
    if figs:
        parts.append("<h2>Curves</h2><div class=\"figs\">" + "".join(figs) + "</div>")
    diff = layer_diff(records)
    if diff.layers and diff.columns:
        parts.append("<h2>Per-layer change</h2><p class=\"muted\">Weight SQNR of each layer minus the first run's, "
                     "in dB, in the first run's layer order: blue got better, red got worse.</p>")
        parts.append(svg.heatmap(diff.layers, diff.columns, diff.values,
                                 f"weight SQNR of each run minus {t.runs[0]} (dB)"))
    return "".join(parts)


def render(records: Sequence[RunRecord], title: str = "Lowbit Studio report") -> str:
    if not records:
        raise LowbitError("no runs to report on")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>{escape(title)}</h1><p class=\"muted\">{len(records)} run(s), written {stamp}.</p>",
            "<h2>Runs</h2>", _runs_table(records), _trade_off_section(records), _compare_section(records)]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>")


def write_report(paths: Iterable[os.PathLike], out: os.PathLike, title: str = "Lowbit Studio report") -> Path:
    """Read the runs (or sweeps) at ``paths`` and write one HTML page to ``out``."""
    runs = expand_runs(paths)
    records = []
    for p in runs:
        try:
            records.append(load_run(p))
        except LibraryError as exc:
            raise LowbitError(f"cannot report on {p}: {exc}") from exc
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise LowbitError(f"{out}: the report is an HTML page; give a file name ending in .html")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, render(records, title))
    return out


__all__ = ["write_report", "render", "expand_runs", "SWEEP"]
