"""The workflow a newcomer follows, on a real tiny model and the real engine."""

from __future__ import annotations

import json
from pathlib import Path

from app_helpers import apply_fast, choose_data, load_model, wait_run_end
from PySide6.QtCore import Qt

from app.panels.results_panel import RUN_COLUMN


def test_ptq_run_fills_the_benchmark(qtbot, window, tiny_llama_dir, text_file, eval_text_file):
    load_model(qtbot, window, tiny_llama_dir)
    info = window.model_info.summary
    assert window.model_panel.fields["name"].text() == "tiny-llama"
    assert window.model_panel.layers.rowCount() == info["n_linear"] == 15  # 2 x 7 + lm_head
    assert window.format_panel.plan_model.rowCount() == 15

    choose_data(qtbot, window, text_file, eval_text_file)
    assert "tokens" in window.data_panel.status["train"].text()

    # Step 3: the scheme from the table, one layer kept in high precision, one with its own format.
    table = window.format_panel.scheme_table
    row = [table.item(r, 0).text() for r in range(table.rowCount())].index("W8A8-INT8")
    table.selectRow(row)
    assert window.state.get("quant.scheme") == "W8A8-INT8"
    window.format_panel.layer_choice.emit(["model.layers.0.mlp.down_proj"], "none")
    window.format_panel.layer_choice.emit(["model.layers.1.self_attn.q_proj"], "int4_g32")
    quant = window.state.get("quant")
    assert quant["exclude"] == ["model.layers.0.mlp.down_proj"]
    assert quant["overrides"] == [{"pattern": "model.layers.1.self_attn.q_proj", "weight": "int4_g32",
                                   "activation": None}]
    rows = {r["name"]: r for r in window.format_panel.plan_model.rows}
    assert rows["model.layers.0.mlp.down_proj"]["weight"] is None
    assert rows["model.layers.1.self_attn.q_proj"]["weight"] == "int4_g32"
    assert rows["lm_head"]["weight"] is None  # default exclusion

    apply_fast(window)
    assert window.run_panel.start_button.isEnabled()
    qtbot.mouseClick(window.run_panel.start_button, Qt.MouseButton.LeftButton)
    assert window.runner.running
    assert not window.run_panel.start_button.isEnabled()
    wait_run_end(qtbot, window)

    assert window.last_error is None, window.last_error and window.last_error.message
    report = window.last_report
    assert report["status"] == "completed" and report["scheme"] == "W8A8-INT8"
    assert json.loads((Path(window.run_dir) / "report.json").read_text())["status"] == "completed"
    plan = {p["name"]: p for p in report["plan"]}
    assert plan["model.layers.0.mlp.down_proj"]["weight"] is None
    assert plan["model.layers.1.self_attn.q_proj"]["weight"] == "int4_g32"

    # The benchmark table: Original and PTQ rows with the report's numbers.
    bench = window.results_panel.table
    labels = [bench.verticalHeaderItem(i).text() for i in range(bench.rowCount())]
    headers = [bench.horizontalHeaderItem(j).text() for j in range(bench.columnCount())]
    assert labels == ["Original", "PTQ"]
    assert {"Perplexity", "KL vs original", "Top-1 agreement", "Weights size"} <= set(headers)
    ppl = headers.index("Perplexity")
    assert bench.item(1, ppl).text() == f"{report['ptq']['perplexity']:.4g}"
    assert bench.item(0, ppl).text() == f"{report['baseline']['perplexity']:.4g}"
    size = headers.index("Weights size")
    assert float(bench.item(1, size).text().split()[0]) < float(bench.item(0, size).text().split()[0])

    # The heatmap got the run's per-layer SQNR, the run page says finished, Start is back.
    heat = window.results_panel.heatmap
    col = heat.columns.index(RUN_COLUMN)
    sqnr = {layer["name"]: layer["weight_sqnr_db"] for layer in report["layers"]}
    r = heat.rows.index("model.layers.0.self_attn.k_proj")
    assert abs(heat.value(r, col) - sqnr["model.layers.0.self_attn.k_proj"]) < 1e-3
    assert "Finished" in window.run_panel.stage_label.text()
    assert window.run_panel.start_button.isEnabled()
    assert window.results_panel.log.toPlainText().count("\n") > 5

    # Step 7: export the finished run without running again; the verification result shows.
    window.state.set("export.format", "dense")
    assert window.export_panel.export_now.isEnabled()
    window.export_panel.export_now.click()
    qtbot.waitUntil(lambda: not window.export_task.busy, timeout=60_000)
    assert window.last_error is None, window.last_error and window.last_error.message
    assert "Verified" in window.export_panel.result_status.text()
    assert (Path(window.run_dir) / "export-dense" / "config.json").is_file()


def test_recipe_round_trip_through_the_file_menu(qtbot, window, tiny_llama_dir, text_file, tmp_path):
    from engine.recipe import Recipe

    load_model(qtbot, window, tiny_llama_dir)
    choose_data(qtbot, window, text_file)
    window.state.set("mode", "qad")
    window.state.set("train.steps", 37)
    window.state.set("train.kd_temperature", 2.0)
    window.format_panel.layer_choice.emit(["model.layers.0.mlp.up_proj"], "none")
    path = tmp_path / "recipe.yaml"
    assert window.save_recipe(path=str(path))
    saved = Recipe.load(path)
    assert saved.mode == "qad" and saved.train.steps == 37 and saved.train.kd_temperature == 2.0
    assert saved.quant.exclude == ("model.layers.0.mlp.up_proj",)
    assert saved.model.path == str(Path(tiny_llama_dir).resolve())

    # The mode page shows what the file says after it is opened again.
    window.state.set("train.steps", 5)
    assert window.open_recipe(str(path))
    spin = [w for w in window.mode_panel.inputs() if w.property("recipeKey") == "train.steps"][0]
    assert spin.value() == 37
    assert window.mode_panel.mode_buttons["qad"].isChecked()
    assert window.mode_panel.kd_box.isEnabled()
    assert window.windowTitle().startswith("recipe.yaml")


def test_settings_stay_in_the_test_folder(qtbot, window, tiny_llama_dir, isolated_settings):
    load_model(qtbot, window, tiny_llama_dir)
    window.settings.sync()
    files = list(isolated_settings.glob("*.ini"))
    assert files and str(Path(tiny_llama_dir).resolve()) in files[0].read_text()
    assert window.model_panel.recent_button.isEnabled()


def test_an_encoder_run_shows_its_own_metrics(qtbot, window, tiny_bert_dir, text_file):
    load_model(qtbot, window, tiny_bert_dir)
    assert "Encoder" in window.model_panel.fields["kind"].text()
    choose_data(qtbot, window, text_file)
    window.state.set("quant.scheme", "W8A8-FP8")
    apply_fast(window)
    window.start_run()
    wait_run_end(qtbot, window)
    assert window.last_error is None, window.last_error and window.last_error.message
    bench = window.results_panel.table
    headers = [bench.horizontalHeaderItem(j).text() for j in range(bench.columnCount())]
    assert "Cosine vs original" in headers and "Perplexity" not in headers
    assert window.results_panel.curves.stack.currentIndex() == 0  # no training: the placeholder stays
