"""The Format step offers calibration.sequential (auto / on / off) next to the PTQ algorithm."""

from __future__ import annotations


def test_sequential_choice_sets_the_recipe_and_follows_it(window):
    panel = window.format_panel
    combo = panel.sequential_combo
    assert [combo.itemData(i) for i in range(combo.count())] == ["auto", True, False]
    assert window.state.get("calibration.sequential") == "auto" and combo.currentIndex() == 0
    assert "one transformer block" in combo.toolTip()
    combo.setCurrentIndex(1)
    assert window.state.get("calibration.sequential") is True
    combo.setCurrentIndex(2)
    assert window.state.get("calibration.sequential") is False
    window.state.set("calibration.sequential", "auto")  # a recipe loaded or edited elsewhere
    window._refresh_plan()
    assert combo.currentIndex() == 0 and window.state.get("calibration.sequential") == "auto"
