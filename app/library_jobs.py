"""The work behind the Runs, Compare and Sweep steps, as plain functions for worker threads (no Qt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from engine.pipeline import compare, library, tradeoff
from engine.pipeline.html_report import write_report
from engine.pipeline.sweep import SweepSpec, plan_runs, read_sweep, run_sweep


SCAN_PAUSE_S = 0.001  # per run folder: the GUI thread gets the interpreter lock while a big folder is read


def scan(folders: Sequence[str], state=None) -> List[library.RunSummary]:
    return library.scan_runs(folders, state=state, pause_s=SCAN_PAUSE_S)


def open_run(path: str, state=None) -> library.RunRecord:
    return library.load_run(path)


def rename(path: str, new_name: str, state=None) -> str:
    return str(library.rename_run(path, new_name))


def delete(paths: Sequence[str], state=None) -> int:
    for p in paths:
        library.delete_run(p)
    return len(paths)


@dataclass
class Comparison:
    records: List[library.RunRecord]
    table: compare.ResultTable
    eval_curves: List[compare.Curve]
    train_curves: List[compare.Curve]
    layers: compare.LayerDiff


def compare_runs(paths: Sequence[str], state=None) -> Comparison:
    records = [library.load_run(p) for p in paths]
    return Comparison(records, compare.result_table(records), compare.eval_curves(records),
                      compare.train_curves(records), compare.layer_diff(records))


def report(paths: Sequence[str], out: str, state=None) -> str:
    return str(write_report(paths, out))


@dataclass
class TradeOff:
    folder: str
    points: List[Dict[str, Any]]
    ship: List[Dict[str, Any]]
    texts: Dict[str, str] = field(default_factory=dict)  # run path -> when to ship it
    runs: List[Dict[str, Any]] = field(default_factory=list)


def trade_off(folder: str, state=None) -> TradeOff:
    data = read_sweep(folder)
    points = [tradeoff.TradePoint(**p) for p in data["points"]]
    rows = tradeoff.ship_rows(points)
    return TradeOff(folder, data["points"], data["ship"], {r.point.path: tradeoff.describe_row(r) for r in rows},
                    data.get("runs", []))


def recommend(points: Sequence[Dict[str, Any]], max_size: Optional[float], target: Optional[float]) -> Optional[str]:
    p = tradeoff.recommend([tradeoff.TradePoint(**d) for d in points], max_size, target)
    return p.path if p else None


def sweep(spec: SweepSpec, out: str, state=None) -> TradeOff:
    n = len(plan_runs(spec, Path(out)))

    def on_run(i, total, r):
        if state is not None:
            state.progress(i, total, f"run {i + 1} of {total}: {r.name}" if i < total else "done")

    run_sweep(spec, out, cancel=state.cancel if state is not None else None, on_run=on_run)
    if state is not None:
        state.progress(n, n, "done")
    return trade_off(out)

