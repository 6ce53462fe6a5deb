"""The Runs, Compare and Sweep steps driven through the real window, with real runs on the tiny Llama."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from app_helpers import GapProbe, apply_fast, choose_data, image_is_not_blank, load_model, screenshot
from PySide6.QtWidgets import QMessageBox

from engine.errors import Cancelled
from engine.events import CancelToken, Progress
from engine.pipeline import run
from engine.pipeline.tradeoff import pareto_front
from engine.recipe import Recipe

FAST = {"seq_len": 64, "batch_size": 2, "calib_batches": 2, "eval_batches": 2}


def _recipe(model, data, scheme, mode="ptq", **train):
    d = {"model": {"path": str(model)}, "data": {"path": str(data), **FAST}, "quant": {"scheme": scheme},
         "mode": mode, "analysis": {"benchmark": False}, "train": {"steps": 6, "eval_every": 2,
                                                                   "warmup_steps": 1, **train}}
    return Recipe.from_dict(d, require_version=False)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny_llama_dir, text_file):
    """A runs folder: one PTQ run from the CLI, a QAD run and a PTQ run in-process, and a cancelled QAD run."""
    root = tmp_path_factory.mktemp("library") / "runs"
    root.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LOWBIT_COMPILE": "0"}
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "quantize", "--model", str(tiny_llama_dir), "--data",
                           str(text_file), "--scheme", "W4A16-NVFP4", "--seq-len", "64", "--batch-size", "2",
                           "--calib-batches", "2", "--eval-batches", "2", "--quiet", "--out", str(root / "cli-nvfp4")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run(_recipe(tiny_llama_dir, text_file, "W8A8-INT8", "qad"), run_dir=root / "qad-int8")
    run(_recipe(tiny_llama_dir, text_file, "W2A16-INT2"), run_dir=root / "ptq-int2")
    token = CancelToken()

    def cancel_in_training(event):
        if isinstance(event, Progress) and event.stage == "train":
            token.cancel()

    with pytest.raises(Cancelled):
        run(_recipe(tiny_llama_dir, text_file, "W4A16-INT4", "qad", steps=1000), sink=cancel_in_training,
            cancel=token, run_dir=root / "cancelled-int4")
    return root


def _show_library(qtbot, window, folder):
    window.run_panel.run_folder.set_text(str(folder))
    window.library.rescan()
    qtbot.waitUntil(lambda: not window.library.scan_task.busy and window.library_panel.rowCount() >= 4,
                    timeout=30_000)
    window.go_to("library")


def test_library_lists_cli_and_cancelled_runs_and_opens_them(qtbot, window, runs_dir, tmp_path, monkeypatch):
    _show_library(qtbot, window, runs_dir)
    panel = window.library_panel
    assert panel.rowCount() == 4
    assert panel.status_of(str(runs_dir / "cli-nvfp4")) == "completed"
    assert panel.status_of(str(runs_dir / "cancelled-int4")) == "cancelled"
    row = panel.row_of(str(runs_dir / "cli-nvfp4"))
    assert panel.text(row, 2) == "W4A16-NVFP4" and panel.text(row, 5).startswith("perplexity")
    screenshot(qtbot, window, "8-runs-library")

    # the cancelled run opens in Results as it was: its training curve up to the cancel, its log
    panel.select_paths([str(runs_dir / "cancelled-int4")])
    panel.open_button.click()
    qtbot.waitUntil(lambda: window.current_step() == "results", timeout=30_000)
    assert "cancelled" in window.results_panel.log.toPlainText()
    assert window.last_report is None or window.last_report.get("status") != "cancelled"
    # the finished QAD run: its report, curves and layers
    panel.select_paths([str(runs_dir / "qad-int8")])
    panel.open_button.click()
    qtbot.waitUntil(lambda: window.last_report is not None and window.run_dir == str(runs_dir / "qad-int8"),
                    timeout=30_000)
    assert len(window.results_panel.curves.series["loss"]) == 6
    window.results_panel.tabs.setCurrentIndex(0)
    screenshot(qtbot, window, "8-runs-opened-qad")

    # rename and delete ask first; "No" keeps the folder
    scratch = tmp_path / "scratch"
    shutil.copytree(runs_dir / "ptq-int2", scratch / "ptq-int2")
    _show_library_small(qtbot, window, scratch)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    window.library.ask_delete([str(scratch / "ptq-int2")])
    qtbot.wait(200)
    assert (scratch / "ptq-int2").exists()
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    window.library.ask_delete([str(scratch / "ptq-int2")])
    qtbot.waitUntil(lambda: not (scratch / "ptq-int2").exists() and panel.rowCount() == 0, timeout=30_000)


def _show_library_small(qtbot, window, folder):
    window.run_panel.run_folder.set_text(str(folder))
    window.library.rescan()
    qtbot.waitUntil(lambda: not window.library.scan_task.busy, timeout=30_000)


def test_compare_three_runs(qtbot, window, runs_dir):
    _show_library(qtbot, window, runs_dir)
    paths = [str(runs_dir / n) for n in ("cli-nvfp4", "qad-int8", "ptq-int2")]
    window.library_panel.select_paths(paths)
    window.library_panel.compare_button.click()
    qtbot.waitUntil(lambda: window.current_step() == "compare", timeout=30_000)
    cmp_ = window.compare_panel
    data = cmp_.data
    assert len(data.records) == 3 and cmp_.table.rowCount() == 3
    # differences are against the first run
    t = data.table
    assert t.diffs[2]["perplexity"] == pytest.approx(t.values[2]["perplexity"] - t.values[0]["perplexity"])
    assert "(" in cmp_.table.item(1, 0).text()
    # the per-layer view: the same layer order, one column per compared run
    names = [r.summary.name for r in data.records]  # in the list's order; the first is the reference
    assert sorted(names) == sorted(Path(p).name for p in paths)
    assert cmp_.heatmap.rows == data.layers.layers and cmp_.heatmap.columns == names[1:]
    sqnr = np.asarray(data.layers.sqnr)  # [layer][run]
    assert (sqnr[:, names.index("ptq-int2")] < sqnr[:, names.index("cli-nvfp4")]).all()  # ternary loses everywhere
    np.testing.assert_allclose(cmp_.heatmap.values, sqnr[:, 1:] - sqnr[:, :1], atol=1e-4)
    qad_curve = next(c for c in data.eval_curves if c.label == "qad-int8")
    assert qad_curve.steps[0] == 0 and qad_curve.steps[-1] == 6
    shots = []
    for i, name in enumerate(("curves", "results", "layers")):
        cmp_.tabs.setCurrentIndex(i)
        qtbot.wait(100)
        shots.append(screenshot(qtbot, window, f"9-compare-{name}"))
    assert all(image_is_not_blank(p) for p in shots)


def test_sweep_of_three_schemes(qtbot, window, tiny_llama_dir, text_file, eval_text_file, tmp_path):
    load_model(qtbot, window, tiny_llama_dir)
    choose_data(qtbot, window, text_file, eval_text_file)
    apply_fast(window, **{"data.calib_batches": 2, "data.eval_batches": 2, "analysis.benchmark": False})
    window.go_to("sweep")
    sw = window.sweep_panel
    sw.set_ticked(["W8A8-INT8", "W4A16-NVFP4", "W2A16-INT2"])
    sw.start_button.click()
    assert not sw.start_button.isEnabled()
    qtbot.waitUntil(lambda: window.library.trade is not None, timeout=180_000)
    assert window.last_error is None, window.last_error and window.last_error.message
    pts = window.library.trade.points
    assert len(pts) == 3 and sw.table.rowCount() == 3
    front = {pts[i]["name"] for i in pareto_front([p["size_bytes"] for p in pts], [p["value"] for p in pts])}
    assert {p["name"] for p in pts if p["front_size"]} == front
    best = min(pts, key=lambda p: p["value"])
    assert sw.chosen == best["path"]  # no target: the most accurate
    smallest = min(pts, key=lambda p: p["size_bytes"])
    sw.size_target.setValue(smallest["size_bytes"] / 1e6 + 1e-3)
    assert sw.chosen == smallest["path"]  # a size target: the best that fits
    sw.size_target.setValue(0)
    qtbot.wait(100)
    path = screenshot(qtbot, window, "10-sweep")
    assert image_is_not_blank(path)
    # the sweep's runs show in the library, inside their sweep folder
    qtbot.waitUntil(lambda: window.library_panel.rowCount() == 3, timeout=30_000)


def test_window_stays_responsive_while_rescanning_200_runs(qtbot, window, runs_dir, tmp_path):
    """A 10 ms timer on the GUI thread: the largest wait while the library reads 200 run folders."""
    big = tmp_path / "many"
    big.mkdir()
    src = runs_dir / "qad-int8"
    for i in range(200):
        dst = big / f"run-{i:03d}"
        dst.mkdir()
        for name in ("recipe.yaml", "events.jsonl", "report.json"):
            shutil.copyfile(src / name, dst / name)
    window.go_to("library")
    probe = GapProbe()
    gaps = probe.gaps
    # the same probe with nothing to do first: on a shared, loaded machine the OS alone delays the timer
    probe.start()
    qtbot.wait(1000)
    idle = max(gaps[1:])
    gaps.clear()
    t0 = time.perf_counter()
    for _ in range(2):  # the first scan fills the table, the second refreshes it in place
        window.run_panel.run_folder.set_text(str(big))
        window.library.rescan()
        qtbot.waitUntil(lambda: not window.library.scan_task.busy, timeout=60_000)
        qtbot.wait(100)
    scan_s = time.perf_counter() - t0
    probe.stop()
    worst = max(gaps)
    print(f"200 runs: two rescans in {scan_s:.2f} s, timer ticks {len(gaps)}, largest gap {1000 * worst:.1f} ms, "
          f"median {1000 * sorted(gaps)[len(gaps) // 2]:.1f} ms; idle probe's largest gap {1000 * idle:.1f} ms")
    assert window.library_panel.rowCount() == 200
    # 50 ms is the bar; what the idle probe already shows of the machine's load is not the scan's doing
    assert worst < 0.050 + max(0.0, idle - 0.010), \
        f"the GUI thread was blocked for {1000 * worst:.0f} ms (idle probe: {1000 * idle:.0f} ms)"
