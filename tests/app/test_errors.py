"""Bad input gives a readable message box, and the window stays usable."""

from __future__ import annotations

import shutil

from app_helpers import apply_fast, choose_data, image_is_not_blank, load_model, screenshot, wait_run_end
from PySide6.QtGui import QGuiApplication


def test_a_folder_that_is_not_a_model(qtbot, window, tmp_path, tiny_llama_dir):
    folder = tmp_path / "holiday-photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")
    window.open_model(str(folder))
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=60_000)

    dialog = window.last_error
    assert dialog.isVisible()
    assert "config.json" in dialog.message and "holiday-photos" in dialog.message
    assert "Traceback" not in dialog.message  # a user error reads as a sentence, not a stack
    assert "config.json" in window.model_panel.status.text()
    assert window.model_info is None and not window.run_panel.start_button.isEnabled()

    assert image_is_not_blank(screenshot(qtbot, dialog, "error-not-a-model"))
    dialog.copy_button.click()
    assert "config.json" in QGuiApplication.clipboard().text()
    dialog.accept()

    # the window still works: a real model loads after the error
    load_model(qtbot, window, tiny_llama_dir)
    assert window.model_panel.fields["architecture"].text() == "LlamaForCausalLM"


def test_unreadable_data_and_a_broken_checkpoint(qtbot, window, tmp_path, tiny_llama_dir):
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    load_model(qtbot, window, tiny_llama_dir)
    window.set_data("train", str(binary))
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=30_000)
    assert "binary" in window.last_error.message
    assert not window.readiness()[0]
    window.last_error.accept()

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_llama_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    window.open_model(str(broken))
    qtbot.waitUntil(lambda: window.last_error is not None and window.last_error.isVisible(), timeout=60_000)
    assert "truncated" in window.last_error.message or "corrupt" in window.last_error.message


def test_a_run_that_fails_reports_and_recovers(qtbot, window, tiny_llama_dir, text_file, tmp_path):
    """The data vanishes between choosing it and running: the run fails with the engine's message."""
    data = tmp_path / "gone.txt"
    shutil.copy(text_file, data)
    load_model(qtbot, window, tiny_llama_dir)
    choose_data(qtbot, window, data)
    apply_fast(window)
    data.unlink()
    window.start_run()
    wait_run_end(qtbot, window, timeout=60_000)
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=5_000)
    assert "gone.txt" in window.last_error.message
    window.last_error.toggle.click() if hasattr(window.last_error, "toggle") else None
    screenshot(qtbot, window.last_error, "error-run-failed")
    assert "Failed" in window.run_panel.stage_label.text()
    assert window.run_panel.start_button.isEnabled()  # ready for another try
