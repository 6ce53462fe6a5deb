"""Cancelling a run, and the window staying responsive while one goes."""

from __future__ import annotations

import json
from pathlib import Path

from app_helpers import GapProbe, apply_fast, choose_data, load_model, wait_run_end


def _start_qad(qtbot, window, tiny_llama_dir, text_file, steps=100_000):
    load_model(qtbot, window, tiny_llama_dir)
    choose_data(qtbot, window, text_file)
    apply_fast(window, **{"mode": "qad", "train.steps": steps, "train.eval_every": 20, "train.checkpoint_every": 0,
                          "train.warmup_steps": 2})
    window.start_run()
    assert window.runner.running


def test_cancel_a_qad_run(qtbot, window, tiny_llama_dir, text_file):
    _start_qad(qtbot, window, tiny_llama_dir, text_file)
    curves = window.results_panel.curves
    qtbot.waitUntil(lambda: len(curves.series["kd_loss"]) >= 3, timeout=90_000)  # training is under way
    assert window.run_panel.cancel_button.isEnabled()
    window.run_panel.cancel_button.click()
    wait_run_end(qtbot, window, timeout=30_000)

    assert window.last_error is None
    assert window.last_report is None
    assert "Cancelled" in window.run_panel.stage_label.text()
    report = json.loads((Path(window.run_dir) / "report.json").read_text())
    assert report["status"] == "cancelled"
    # usable again: Start is back, and the curves kept what was drawn
    assert window.run_panel.start_button.isEnabled() and not window.run_panel.cancel_button.isEnabled()
    assert len(curves.series["loss"]) >= 3 and curves.curves["loss"].xData is not None


def test_gui_thread_stays_responsive_during_a_run(qtbot, window, tiny_llama_dir, text_file):
    """A 10 ms timer on the GUI thread never waits more than 100 ms while the engine loads, calibrates and trains."""
    load_model(qtbot, window, tiny_llama_dir)
    choose_data(qtbot, window, text_file)
    apply_fast(window, **{"mode": "qad", "train.steps": 100_000, "train.eval_every": 5, "train.checkpoint_every": 0,
                          "train.warmup_steps": 2})
    probe = GapProbe()
    gaps = probe.gaps
    curves = window.results_panel.curves
    probe.start()
    window.start_run()  # the run loads the model again, calibrates, evaluates, then trains
    # at least two evaluations and a second of ticks (a fast machine gets to the evaluations in under one)
    qtbot.waitUntil(lambda: len(curves.series["perplexity"]) >= 2 and len(gaps) > 100, timeout=90_000)
    qtbot.wait(200)
    probe.stop()
    window.cancel_run()
    wait_run_end(qtbot, window, timeout=30_000)
    worst = max(gaps)
    print(f"timer ticks {len(gaps)}, largest gap {1000 * worst:.1f} ms, "
          f"median {1000 * sorted(gaps)[len(gaps) // 2]:.1f} ms, curve frames {curves.frames}, "
          f"training steps seen {len(curves.series['loss'])}")
    assert len(gaps) > 100
    assert worst < 0.100, f"the GUI thread was blocked for {1000 * worst:.0f} ms"
