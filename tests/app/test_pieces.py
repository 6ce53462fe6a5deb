"""The window's small parts: layer choices, the plan preview, benchmark rows, drops, menus, themes."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from app import plan, theme
from app.benchmark import columns, result_rows
from app.catalog import model_bytes
from app.window import classify_drop

LAYERS = [{"name": "model.layers.0.mlp.up_proj", "type": "Linear", "in_features": 64, "out_features": 128},
          {"name": "model.layers.0.mlp.down_proj", "type": "Linear", "in_features": 128, "out_features": 64},
          {"name": "lm_head", "type": "Linear", "in_features": 64, "out_features": 1000}]


def test_layer_choices_become_exclusions_and_overrides():
    quant = {"scheme": "W4A16-INT4", "exclude": ["*gate*"], "overrides": [{"pattern": "*up*", "weight": "int8"}]}
    q = plan.with_layer_choice(quant, ["model.layers.0.mlp.down_proj"], plan.EXCLUDE)
    assert q["exclude"] == ["*gate*", "model.layers.0.mlp.down_proj"]  # hand-written patterns kept
    q = plan.with_layer_choice(q, ["model.layers.0.mlp.down_proj", "lm_head"], "nvfp4")
    assert q["exclude"] == ["*gate*"]
    assert q["overrides"][1:] == [{"pattern": "lm_head", "weight": "nvfp4", "activation": None},
                                  {"pattern": "model.layers.0.mlp.down_proj", "weight": "nvfp4", "activation": None}]
    assert plan.layer_choice(q, "lm_head") == "nvfp4"
    q = plan.with_layer_choice(q, ["lm_head"], None)
    assert plan.layer_choice(q, "lm_head") is None
    assert quant["exclude"] == ["*gate*"]  # the input is not changed


def test_preview_follows_the_engine_rules():
    quant = {"scheme": "W4A16-INT4", "overrides": [{"pattern": "model.layers.0.mlp.down_proj", "weight": "int8",
                                                    "activation": None}]}
    plans, warnings = plan.preview(plan.skeleton(LAYERS), plan.with_layer_choice(quant, ["model.layers.0.mlp.up_proj"], plan.EXCLUDE))
    by_name = {p.name: p for p in plans}
    assert by_name["model.layers.0.mlp.up_proj"].weight is None and by_name["model.layers.0.mlp.up_proj"].reason == "excluded"
    assert by_name["model.layers.0.mlp.down_proj"].weight == "int8"
    assert by_name["lm_head"].weight is None and "default" in by_name["lm_head"].reason
    assert warnings == []


def test_preview_matches_plan_layers_on_the_real_model(tiny_llama_dir):
    from engine.io.model import describe_model, load_model
    from engine.quant import schemes
    from engine.quant.select import plan_layers

    loaded = load_model(tiny_llama_dir)
    quant = {"scheme": "W8A8-INT8", "exclude": ["model.layers.1.mlp.up_proj"],
             "overrides": [{"pattern": "*k_proj", "weight": "int4_g32", "activation": None}]}
    real, _ = plan_layers(loaded.model, schemes.get("W8A8-INT8"), ["*"], quant["exclude"], True, quant["overrides"])
    preview, _ = plan.preview(plan.skeleton(describe_model(loaded)["layers"]), quant)
    assert [p.to_dict() for p in preview] == [p.to_dict() for p in real]


def test_result_rows_from_a_report():
    report = {"mode": "qad", "model": {"n_params": 1000, "dtype": "float32"},
              "baseline": {"perplexity": 10.0, "tokens": 5}, "ptq": {"perplexity": 12.0, "kl": 0.1,
                                                                    "top1_agreement": 0.9},
              "final": {"perplexity": 10.5, "kl": 0.02, "top1_agreement": 0.97},
              "layers": [{"name": "a", "format": "int8", "params": 512, "in_features": 64}]}
    rows = result_rows(report)
    assert [r.label for r in rows] == ["Original", "PTQ", "QAD"]
    assert rows[0].values["kl"] == 0.0 and rows[0].values["top1_agreement"] == 1.0
    assert rows[0].values["size_bytes"] == 4000
    assert rows[1].values["size_bytes"] == pytest.approx(4000 - 512 * (32 - 8.5) / 8)  # int8 + an fp32 scale per 64
    assert "tokens" not in {m.key for m in columns(rows)}
    assert result_rows({"ptq": {"perplexity": "inf"}, "baseline": {}})[0].values == {"perplexity": float("inf")}


def test_model_bytes_counts_quantized_layers_at_their_bits():
    assert model_bytes(100, "bfloat16") == 200
    assert model_bytes(100, "float32", [{"params": 64, "in_features": 64, "format": None}]) == 400


def test_classify_drop(tmp_path, tiny_llama_dir):
    (tmp_path / "r.yaml").write_text("version: 1")
    (tmp_path / "t.jsonl").write_text("{}")
    (tmp_path / "x.bin").write_bytes(b"")
    assert classify_drop(Path(tiny_llama_dir)) == "model"
    assert classify_drop(tmp_path / "r.yaml") == "recipe"
    assert classify_drop(tmp_path / "t.jsonl") == "data"
    assert classify_drop(tmp_path) == "data"  # a folder of text files
    assert classify_drop(tmp_path / "x.bin") is None


def test_dropping_a_model_folder_opens_it(qtbot, window, tiny_llama_dir):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tiny_llama_dir))])
    event = QDropEvent(QPointF(200, 200), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    qtbot.waitUntil(lambda: window.model_info is not None, timeout=60_000)
    assert window.current_step() == "model"


def test_the_layer_menu_and_the_format_cell_change_the_recipe(qtbot, window, tiny_llama_dir):
    from app.panels.format_panel import LayerPlanModel

    window.open_model(str(tiny_llama_dir))
    qtbot.waitUntil(lambda: window.model_info is not None, timeout=60_000)
    panel = window.format_panel
    menu = panel.build_layer_menu(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"])
    exclude = [a for a in menu.actions() if a.text().startswith("Keep")][0]
    exclude.trigger()
    assert window.state.get("quant.exclude") == ["model.layers.0.self_attn.k_proj",
                                                 "model.layers.0.self_attn.q_proj"]
    # the editable cell, as the combo-box delegate commits it
    model = panel.plan_model
    row = [r["name"] for r in model.rows].index("lm_head")
    assert model.flags(model.index(row, LayerPlanModel.CHOICE_COLUMN)) & Qt.ItemFlag.ItemIsEditable
    model.setData(model.index(row, LayerPlanModel.CHOICE_COLUMN), "int8")
    assert {"pattern": "lm_head", "weight": "int8", "activation": None} in window.state.get("quant.overrides")
    assert [r for r in model.rows if r["name"] == "lm_head"][0]["weight"] == "int8"
    assert "13 of 15" in panel.summary.text()  # 14 blocks layers - 2 excluded + lm_head


def test_dark_and_light_palettes_and_tinted_icons(qapp):
    try:
        assert theme.apply_theme(qapp, "dark") is True
        assert theme.is_dark()
        dark_icon = theme.icon("model")
        assert not dark_icon.isNull()
        assert theme.apply_theme(qapp, "light") is False
        assert not theme.is_dark()
        assert theme.icon("model").cacheKey() != dark_icon.cacheKey()  # re-tinted for the new palette
        assert not theme.app_icon().isNull()
    finally:
        theme.apply_theme(qapp, "light")
