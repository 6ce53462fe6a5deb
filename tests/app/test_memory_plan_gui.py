"""The Model page lists layers without loading weights, and the Run page shows the memory plan before Start."""

from __future__ import annotations

import time

from app_helpers import apply_fast, choose_data, load_model, screenshot


def test_model_step_lists_layers_from_the_meta_model_and_run_page_shows_the_plan(qtbot, window, tiny_llama_dir,
                                                                                  text_file):
    t0 = time.monotonic()
    load_model(qtbot, window, tiny_llama_dir)
    seconds = time.monotonic() - t0
    info = window.model_info
    assert info.inspected is not None
    assert all(p.device.type == "meta" for p in info.inspected.model.parameters())  # no weight was read
    assert info.summary["n_linear"] > 0 and info.summary["layers"][0]["name"].startswith("model.layers.0.")
    assert info.tokenizer is not None
    print(f"model step: {seconds:.2f} s to list {info.summary['n_linear']} layers")
    apply_fast(window)
    window.state.set("mode", "qad")
    choose_data(qtbot, window, text_file)
    # the plan of the recipe as it is now: a plan of an earlier state (before mode qad) may be on
    # show while the current one is computed, so wait for the planning task to be done too
    qtbot.waitUntil(lambda: not window.plan_task.busy and window.run_panel.memory_summary.text().startswith("Peak")
                    and "<td>train</td>" in window.run_panel.memory_stages.text(), timeout=30_000)
    text = window.run_panel.memory_summary.text()
    assert "fits" in text and "cpu" in text
    stages = window.run_panel.memory_stages.text()
    for name in ("load", "calibrate", "evaluate", "train"):
        assert f"<td>{name}</td>" in stages
    window.go_to("run")
    screenshot(qtbot, window, "run-page-memory-plan")
    # a changed recipe: the plan on show is the previous one's until the new one is in, and says so
    before = window.run_panel.memory_stages.text()
    window.state.set("data.seq_len", 2 * window.state.get("data.seq_len"))  # longer sequences: more activations
    qtbot.waitUntil(lambda: window.plan_task.busy, timeout=5_000)
    assert window.run_panel.memory_summary.text().startswith("Updating for the changed recipe... Peak")
    assert not window.run_panel.memory_stages.isEnabled()
    qtbot.waitUntil(lambda: not window.plan_task.busy and window.run_panel.memory_stages.isEnabled(), timeout=30_000)
    assert window.run_panel.memory_summary.text().startswith("Peak")
    assert window.run_panel.memory_stages.text() != before
