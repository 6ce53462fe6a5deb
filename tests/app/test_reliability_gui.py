"""Reliability, GUI side: closing during a run asks and cancels cleanly; a worker failure shows a dialog with
the message and a "Copy details" button; the window stays usable afterwards; no input file is changed.

Related tests elsewhere: tests/app/test_errors.py (user errors from bad model folders and data, and a run
whose data vanished), tests/app/test_run_control.py (the Cancel button). The engine-side bullets are in
tests/e2e/test_reliability.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from app_helpers import apply_fast, choose_data, load_model, wait_run_end
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMessageBox


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", "0")


def hashes(*paths: Path) -> dict:
    out = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _ready(qtbot, window, model_dir, data, **recipe):
    load_model(qtbot, window, model_dir)
    choose_data(qtbot, window, data)
    apply_fast(window, **recipe)


def _finish_a_good_run(qtbot, window):
    """The window is still usable: a normal PTQ run starts, completes and reports."""
    assert window.run_panel.start_button.isEnabled()
    window.start_run()
    assert window.runner.running
    wait_run_end(qtbot, window, timeout=120_000)
    qtbot.waitUntil(lambda: window.last_report is not None, timeout=10_000)
    assert window.last_report["status"] == "completed"
    assert window.last_error is None or not window.last_error.isVisible()


def test_closing_the_window_during_a_run_asks_then_cancels_cleanly(qtbot, window, tiny_llama_dir, text_file,
                                                                   monkeypatch):
    before = hashes(tiny_llama_dir, text_file)
    _ready(qtbot, window, tiny_llama_dir, text_file, **{"mode": "qad", "train.steps": 100_000,
                                                        "train.eval_every": 0, "train.checkpoint_every": 0,
                                                        "train.warmup_steps": 2, "analysis.benchmark": False})
    window.start_run()
    curves = window.results_panel.curves
    qtbot.waitUntil(lambda: len(curves.series["loss"]) >= 2, timeout=90_000)  # training is under way
    run_dir = Path(window.run_dir)

    asked = []
    answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])

    def question(parent, title, text, *args, **kwargs):
        asked.append((title, text))
        return next(answers)

    monkeypatch.setattr(QMessageBox, "question", question)
    window.confirm_close = True

    # "No": nothing happens, the run goes on
    assert window.close() is False
    assert len(asked) == 1 and "Cancel the run" in asked[0][1]
    assert window.isVisible() and window.runner.running
    steps = len(curves.series["loss"])
    qtbot.waitUntil(lambda: len(curves.series["loss"]) > steps, timeout=30_000)

    # "Yes": the window goes, the run is cancelled and its thread joined
    thread = window.runner._thread
    assert window.close() is True
    window.confirm_close = False
    assert len(asked) == 2
    assert not window.isVisible()
    assert thread.isFinished()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "cancelled"
    assert not any(p.name.endswith(".tmp") for p in run_dir.rglob("*"))
    assert hashes(tiny_llama_dir, text_file) == before


def test_a_worker_exception_shows_a_dialog_with_copy_details_and_the_window_stays_usable(
        qtbot, window, tiny_llama_dir, text_file, monkeypatch):
    import engine.pipeline

    before = hashes(tiny_llama_dir, text_file)
    _ready(qtbot, window, tiny_llama_dir, text_file, **{"analysis.benchmark": False})

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash inside the worker")

    monkeypatch.setattr(engine.pipeline, "run", crash)
    window.start_run()
    wait_run_end(qtbot, window, timeout=30_000)
    qtbot.waitUntil(lambda: window.last_error is not None and window.last_error.isVisible(), timeout=10_000)
    dialog = window.last_error
    assert "RuntimeError: simulated crash inside the worker" in dialog.message
    assert "Traceback" in dialog.details and "crash" in dialog.details
    dialog.toggle.click()
    assert dialog.details_view.isVisible()
    dialog.copy_button.click()
    copied = QGuiApplication.clipboard().text()
    assert "simulated crash inside the worker" in copied and "Traceback" in copied
    assert "Failed" in window.run_panel.stage_label.text()
    dialog.accept()

    monkeypatch.undo()
    monkeypatch.setenv("LOWBIT_COMPILE", "0")
    _finish_a_good_run(qtbot, window)
    assert hashes(tiny_llama_dir, text_file) == before


def test_out_of_memory_in_a_run_reads_as_advice_in_the_dialog(qtbot, window, tiny_llama_dir, text_file,
                                                             monkeypatch):
    from transformers import LlamaForCausalLM

    before = hashes(tiny_llama_dir, text_file)
    _ready(qtbot, window, tiny_llama_dir, text_file, **{"analysis.benchmark": False})

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    monkeypatch.setattr(LlamaForCausalLM, "forward", oom)
    window.start_run()
    wait_run_end(qtbot, window, timeout=60_000)
    qtbot.waitUntil(lambda: window.last_error is not None and window.last_error.isVisible(), timeout=10_000)
    dialog = window.last_error
    assert "out of GPU memory" in dialog.message
    assert "data.batch_size" in dialog.message and "train.teacher_device: cpu" in dialog.message
    assert "Traceback" not in dialog.message
    dialog.copy_button.click()
    assert "out of GPU memory" in QGuiApplication.clipboard().text()
    dialog.accept()
    assert json.loads((Path(window.run_dir) / "report.json").read_text())["status"] == "failed"
    assert hashes(tiny_llama_dir, text_file) == before
