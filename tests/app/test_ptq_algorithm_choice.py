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
