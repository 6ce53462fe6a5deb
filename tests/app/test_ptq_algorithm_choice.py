"""The Format step offers the PTQ algorithm, explains it in one line, and writes calibration.algorithm."""

from __future__ import annotations

from engine.calib import ALGORITHMS


def test_algorithm_choice_sets_the_recipe(window, qtbot, tmp_path):
    panel = window.format_panel
    combo = panel.algorithm_combo
    assert [combo.itemData(i) for i in range(combo.count())] == list(ALGORITHMS)
    assert window.state.get("calibration.algorithm") == "rtn"
    combo.setCurrentIndex(combo.findData("gptq"))
    assert window.state.get("calibration.algorithm") == "gptq"
    assert panel.algorithm_help.text() == ALGORITHMS["gptq"]
    panel.grab().save(str(tmp_path / "format.png"))
    combo.setCurrentIndex(combo.findData("rtn"))
    assert window.state.get("calibration.algorithm") == "rtn"


def test_per_layer_view_shows_error_before_and_after(window):
    panel = window.results_panel
    layers = [{"name": f"model.layers.0.{n}", "weight_sqnr_db": 20.0, "error_rtn": 0.01, "error_gptq": 0.001}
              for n in ("q_proj", "k_proj")]
    panel.heatmap.set_table([l["name"] for l in layers], [], None)
    panel.show_report({"mode": "ptq", "baseline": {"perplexity": 10.0}, "ptq": {"perplexity": 11.0},
                       "layers": layers})
    cols = panel.heatmap.columns
    assert "output dB, RTN" in cols and "output dB, GPTQ" in cols
    r = panel.heatmap.rows.index("model.layers.0.q_proj")
    assert abs(panel.heatmap.value(r, cols.index("output dB, RTN")) - 20.0) < 1e-4
    assert abs(panel.heatmap.value(r, cols.index("output dB, GPTQ")) - 30.0) < 1e-4


def test_awq_fallback_choice_sits_with_the_algorithm_and_sets_the_recipe(window):
    from app.panels.format_panel import AWQ_UNFOLDABLE_CHOICES

    panel = window.format_panel
    combo = panel.awq_unfoldable_combo
    assert [combo.itemData(i) for i in range(combo.count())] == [v for v, _ in AWQ_UNFOLDABLE_CHOICES]
    assert combo.currentData() == window.state.get("calibration.awq_unfoldable") == "auto"
    assert not combo.isEnabled()  # RTN runs no AWQ
    assert "explicit" in combo.toolTip()
    panel.algorithm_combo.setCurrentIndex(panel.algorithm_combo.findData("awq+gptq"))
    assert combo.isEnabled()
    combo.setCurrentIndex(combo.findData("skip"))
    assert window.state.get("calibration.awq_unfoldable") == "skip"
    window.state.set("calibration.awq_unfoldable", "explicit")  # a recipe loaded or edited elsewhere
    window._refresh_plan()
    assert combo.currentData() == "explicit" and window.state.get("calibration.awq_unfoldable") == "explicit"
    panel.algorithm_combo.setCurrentIndex(panel.algorithm_combo.findData("gptq"))
    assert not combo.isEnabled()
    window.state.set("calibration.awq_unfoldable", "auto")
    panel.algorithm_combo.setCurrentIndex(panel.algorithm_combo.findData("rtn"))
