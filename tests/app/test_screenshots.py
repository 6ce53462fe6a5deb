"""Pictures of every step with real data, under test-artifacts/screenshots/ (git-ignored).

They are for people to look at (and for packaging to show); the test checks
that each picture has content, not how it looks pixel by pixel.
"""

from __future__ import annotations

from app_helpers import apply_fast, choose_data, image_is_not_blank, load_model, screenshot, wait_run_end

from app import theme
from app.window import STEPS


def test_screenshots_of_every_step(qtbot, qapp, window, tiny_llama_dir, text_file, eval_text_file):
    load_model(qtbot, window, tiny_llama_dir)
    choose_data(qtbot, window, text_file, eval_text_file)
    window.state.set("quant.scheme", "W4A16-NVFP4")
    window.format_panel.layer_choice.emit(["model.layers.0.mlp.down_proj"], "none")
    window.format_panel.layer_choice.emit(["model.layers.1.mlp.down_proj"], "int8")
    window.format_panel.select_layer("model.layers.1.mlp.down_proj")
    window.state.set("export.format", "dense")
    apply_fast(window, **{"mode": "qad", "train.steps": 10, "train.eval_every": 3, "train.warmup_steps": 3,
                          "train.checkpoint_every": 0, "train.lr": 1e-3})

    shots = []
    for key, _ in STEPS[:5]:
        window.go_to(key)
        qtbot.wait(50)
        shots.append(screenshot(qtbot, window, f"{len(shots) + 1}-{key}"))

    window.compare_formats()
    qtbot.waitUntil(lambda: not window.compare_task.busy, timeout=60_000)
    window.start_run()
    wait_run_end(qtbot, window, timeout=180_000)
    assert window.last_error is None, window.last_error and window.last_error.message
    window.go_to("run")
    qtbot.wait(50)
    shots.append(screenshot(qtbot, window, "5-run-finished"))

    window.go_to("results")
    tabs = window.results_panel.tabs
    for index, name in enumerate(["curves", "layers", "benchmark", "log"]):
        tabs.setCurrentIndex(index)
        if name == "layers":
            heat = window.results_panel.heatmap
            heat._on_click(heat.rows.index("model.layers.0.mlp.down_proj"), 1)
        qtbot.wait(150)  # a few redraw-timer periods
        shots.append(screenshot(qtbot, window, f"6-results-{name}"))
    window.go_to("export")
    qtbot.wait(50)
    shots.append(screenshot(qtbot, window, "7-export"))

    # the same window in the dark theme
    window.set_theme("dark")
    try:
        for key, tab in (("results", 0), ("results", 2), ("format", None), ("model", None)):
            window.go_to(key)
            if tab is not None:
                tabs.setCurrentIndex(tab)
            qtbot.wait(150)
            shots.append(screenshot(qtbot, window, f"dark-{key}" + (f"-{tab}" if tab is not None else "")))
    finally:
        theme.apply_theme(qapp, "light")
        window.restyle()

    for path in shots:
        assert image_is_not_blank(path), f"{path.name} looks empty"
