"""Issue 13's recipe keys show in the Mode step and write the recipe (real widgets, offscreen)."""

from __future__ import annotations

from app.panels.mode_panel import ModePanel
from app.panels.model_panel import ModelPanel
from app.state import RecipeState

NEW_KEYS = ["data.samples", "train.lr", "train.batch_size", "train.dropout", "train.early_stop_patience",
            "train.scale_penalty", "train.kd_alpha_final", "train.kd_anneal", "train.kd_hidden_weight",
            "train.kd_hidden_layers", "train.kd_embedding_weight"]


def _widget(panel, key, kind=None):
    found = [w for w in panel.inputs() if w.property("recipeKey") == key and (kind is None or isinstance(w, kind))]
    assert found, f"no control for {key}"
    return found[0]


def test_every_new_key_has_a_control_that_writes_the_recipe(qtbot):
    from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

    state = RecipeState()
    panel = ModePanel(state)
    qtbot.addWidget(panel)
    for key in NEW_KEYS:
        _widget(panel, key)
    _widget(panel, "train.lr", QCheckBox).setChecked(True)
    assert state.get("train.lr") == "auto"
    _widget(panel, "train.lr", QCheckBox).setChecked(False)
    assert isinstance(state.get("train.lr"), float)
    dropout = _widget(panel, "train.dropout", QComboBox)
    dropout.setCurrentIndex(dropout.findData("on"))
    assert state.get("train.dropout") == "on"
    layers = _widget(panel, "train.kd_hidden_layers", QLineEdit)
    layers.setText("1, -1, x")
    layers.editingFinished.emit()
    assert tuple(state.get("train.kd_hidden_layers")) == (1, -1)
    final = _widget(panel, "train.kd_alpha_final", QDoubleSpinBox)
    final.setValue(0.5)
    assert state.get("train.kd_alpha_final") == 0.5
    final.setValue(final.minimum())  # shown as "constant"
    assert state.get("train.kd_alpha_final") is None
    batch = _widget(panel, "train.batch_size", QSpinBox)
    assert batch.value() == 0 and batch.text() == "auto (by model kind)"
    _widget(panel, "train.early_stop_patience", QSpinBox).setValue(3)
    assert state.get("train.early_stop_patience") == 3
    # the recipe's values come back into the widgets
    state.set("train.lr", "auto")
    assert _widget(panel, "train.lr", QCheckBox).isChecked()
    state.set("data.samples", "lines")
    assert _widget(panel, "data.samples", QComboBox).currentData() == "lines"


def test_the_demo_encoder_is_selectable_in_the_model_step(qtbot):
    state = RecipeState()
    panel = ModelPanel(state)
    qtbot.addWidget(panel)
    opened = []
    panel.open_requested.connect(opened.append)
    names = [a.text() for a in panel.demo_button.menu().actions()]
    assert any("encoder" in n for n in names) and any("Llama" in n for n in names)
    next(a for a in panel.demo_button.menu().actions() if "encoder" in a.text()).trigger()
    assert opened and opened[0].endswith("demo-encoder")
    assert state.get("quant.scheme") == "W4A4-NVFP4" and state.get("data.path").endswith("sentences-train.txt")
