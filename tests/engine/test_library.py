"""The run library reader, the Pareto front, the ship table and the report's HTML (no Qt, no model runs)."""

from __future__ import annotations

import json
import re
import time

import pytest

from engine.pipeline import library, tradeoff
from engine.pipeline.html_report import render
from engine.pipeline.library import RunRecord, RunSummary


def _summary(name, bits, size, value, metric="perplexity"):
    return RunSummary(path=f"/runs/{name}", name=name, status="completed", scheme=name, mode="ptq",
                      metric_name=metric, metric=value, bits_per_weight=bits, size_bytes=size)


def test_pareto_front_on_known_points():
    # (bits, perplexity): a dominates d (cheaper and better); b, c, e trade size for accuracy; f ties e exactly
    xs = [4.25, 3.0, 8.0, 4.5, 2.0, 2.0]
    ys = [50.4, 64.8, 50.1, 50.5, 90.0, 90.0]
    assert tradeoff.pareto_front(xs, ys) == [4, 5, 1, 0, 2]
    # higher is better (cosine): the same geometry mirrored
    assert tradeoff.pareto_front([1, 2, 3], [0.90, 0.99, 0.95], lower_is_better=False) == [0, 1]
    # equal x, different y: only the better one
    assert tradeoff.pareto_front([4, 4], [10, 11]) == [0]


def test_trade_points_recommend_and_ship_rows():
    runs = [_summary("int8", 8.0, 3.4e6, 50.6), _summary("int4", 4.25, 2.5e6, 50.4),
            _summary("nvfp4", 4.5, 2.6e6, 50.5), _summary("int2", 3.0, 2.2e6, 64.8),
            RunSummary(path="/runs/x", name="x", status="cancelled", metric_name="perplexity", metric=40.0,
                       bits_per_weight=2.0, size_bytes=1e6)]
    points = tradeoff.trade_points(runs)
    assert [p.name for p in points] == ["int8", "int4", "nvfp4", "int2"]  # the cancelled run is not a point
    assert {p.name for p in points if p.front_size} == {"int4", "int2"}
    assert {p.name for p in points if p.front_bits} == {"int4", "int2"}
    assert tradeoff.recommend(points).name == "int4"  # most accurate of all
    assert tradeoff.recommend(points, max_size_bytes=2.4e6).name == "int2"
    assert tradeoff.recommend(points, target=50.55).name == "int4"  # smallest meeting the target
    assert tradeoff.recommend(points, max_size_bytes=2.4e6, target=50.55) is None
    rows = tradeoff.ship_rows(points)
    assert [r.point.name for r in rows] == ["int2", "int4"]
    assert rows[0].size_to == pytest.approx(2.5e6) and rows[1].size_to is None


def _write_events(folder, events, torn_tail=""):
    with open(folder / "events.jsonl", "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
        fh.write(torn_tail)


def test_reader_is_tolerant_of_running_interrupted_cancelled_and_broken_runs(tmp_path):
    now = time.time()
    start = {"type": "RunStarted", "time": now - 5, "run_dir": "x",
             "recipe": {"model": {"path": "/m/tiny"}, "quant": {"scheme": "W4A16-INT4"}, "mode": "qad"}}
    running = tmp_path / "running"
    running.mkdir()
    _write_events(running, [start, {"type": "StageStarted", "time": now - 4, "stage": "train", "total": 100},
                            {"type": "Progress", "time": now - 1, "stage": "train", "done": 40, "total": 100},
                            {"type": "Metric", "time": now - 1, "stage": "eval", "name": "perplexity",
                             "value": 55.5, "step": 40}],
                  torn_tail='{"type": "Progress", "time": 1')  # the line being written
    s = library.read_run(running, now=now)
    assert (s.status, s.stage, s.done, s.total, s.scheme, s.mode, s.model) == \
        ("running", "train", 40, 100, "W4A16-INT4", "qad", "tiny")
    assert s.metric == pytest.approx(55.5) and s.progress_text == "train 40/100"
    assert library.read_run(running, now=now + library.STALE_S + 10).status == "interrupted"

    cancelled = tmp_path / "cancelled"
    cancelled.mkdir()
    _write_events(cancelled, [start, {"type": "RunFailed", "time": now, "error": "cancelled", "kind": "cancelled"}])
    assert library.read_run(cancelled, now=now).status == "cancelled"
    (cancelled / "report.json").write_text(json.dumps({"status": "cancelled", "mode": "qad"}))
    assert library.read_run(cancelled, now=now).status == "cancelled"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "recipe.yaml").write_text("version: 1\n")
    (broken / "report.json").write_text("{not json")
    b = library.read_run(broken)
    assert b.status == "unreadable" and "report.json" in b.error

    (tmp_path / "notes").mkdir()  # not a run: ignored
    names = [r.name for r in library.scan_runs([tmp_path])]
    assert sorted(names) == ["broken", "cancelled", "running"]

    with pytest.raises(library.LibraryError, match="not a run folder"):
        library.delete_run(tmp_path / "notes")
    with pytest.raises(library.LibraryError, match="already exists"):
        library.rename_run(running, "cancelled")
    assert library.rename_run(running, "renamed").name == "renamed"
    library.delete_run(tmp_path / "renamed")
    assert not (tmp_path / "renamed").exists() and (tmp_path / "notes").exists()


EXTERNAL = re.compile(r"https?:|//|\bsrc\s*=|\bhref\s*=|@import|url\(", re.IGNORECASE)


def test_report_html_has_no_external_references():
    recs = []
    for name, bits, size, ppl in (("a/int4", 4.25, 2.5e6, 50.4), ("int2", 3.0, 2.2e6, 64.8), ("nv", 4.5, 2.6e6, 50.5)):
        s = _summary(name, bits, size, ppl)
        report = {"status": "completed", "mode": "ptq", "ptq": {"perplexity": ppl, "kl": 0.1},
                  "layers": [{"name": "model.layers.0.mlp.up_proj", "weight_sqnr_db": 20.0 + bits},
                             {"name": "model.layers.0.mlp.down_proj", "weight_sqnr_db": 18.0 + bits}]}
        recs.append(RunRecord(s, report, metrics=[("ptq", "perplexity", ppl, None)]))
    html = render(recs, "t <&>")
    assert html.startswith("<!DOCTYPE html>") and "t &lt;&amp;&gt;" in html
    assert html.count("<svg") == 3  # two trade-off plots and the per-layer heatmap
    assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)
