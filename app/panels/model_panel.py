"""Step 1: open a Hugging Face model folder and see what is inside."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QMenu, QToolButton,
                               QVBoxLayout, QWidget)

from engine.io.demo import DEMO_NAMES, demo_data, demo_encoder_recipe_dict, demo_recipe_dict, demo_sentences

from ..jobs import ModelInfo
from ..state import RecipeState
from .common import Page, PathField, StatusLine, bind, human_count
from .tables import Column, RowsModel, make_table

LAYER_COLUMNS = [
    Column("Layer", lambda r: r["name"]),
    Column("Type", lambda r: r.get("type", "Linear")),
    Column("In", lambda r: r["in_features"], lambda v: f"{v:,}", numeric=True, tooltip="input features"),
    Column("Out", lambda r: r["out_features"], lambda v: f"{v:,}", numeric=True, tooltip="output features"),
    Column("Parameters", lambda r: r["params"], lambda v: f"{v:,}", numeric=True,
           tooltip="weight and bias elements of the layer"),
]


class ModelPanel(Page):
    open_requested = Signal(str)  # a folder to load
    browse_requested = Signal()

    def __init__(self, state: RecipeState, parent: Optional[QWidget] = None):
        super().__init__(
            "1  Model",
            "Open a Hugging Face model folder: the one with config.json, the weights (*.safetensors) and the "
            "tokenizer. You can also drop the folder onto this window. Nothing is downloaded.",
            next_label="Next: data",
        )
        self.path = PathField("Model folder, e.g. ~/models/Llama-3.2-1B")
        self.path.chosen.connect(lambda p: p and self.open_requested.emit(p))
        self.path.browse_requested.connect(self.browse_requested)
        self.recent_button = QToolButton()
        self.recent_button.setText("Recent")
        self.recent_button.setMinimumWidth(84)
        self.recent_button.setToolTip("Model folders you opened before")
        self.recent_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.recent_menu = QMenu(self)
        self.recent_button.setMenu(self.recent_menu)
        self.path.layout().addWidget(self.recent_button)
        self.demo_button = QToolButton()
        self.demo_button.setText("Demos")
        self.demo_button.setMinimumWidth(84)
        self.demo_button.setToolTip("The small models that ship with Lowbit Studio: a Llama-style causal LM and a "
                                    "BERT-style sentence encoder (dropout 0.1), both trained on Python's docs")
        self.demo_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        demo_menu = QMenu(self)
        self._state = state
        demo_menu.addAction("Demo Llama (causal LM, W2A16-INT2)", lambda: self._open_demo("demo"))
        demo_menu.addAction("Demo encoder (BERT-style, W4A4-NVFP4)", lambda: self._open_demo("demo-encoder"))
        self.demo_button.setMenu(demo_menu)
        self.path.layout().addWidget(self.demo_button)
        self.content.addWidget(self.path)
        self.status = StatusLine()
        self.status.show_text("No model yet.")
        self.content.addWidget(self.status)

        options = QHBoxLayout()
        options.addWidget(QLabel("Load as:"))
        dtype = QComboBox()
        for value, label in (("float32", "float32 (exact, most memory)"), ("bfloat16", "bfloat16"),
                             ("float16", "float16"), ("auto", "as saved in the checkpoint")):
            dtype.addItem(label, value)
        self.dtype = bind(dtype, state, "model.dtype", "The precision the original model is held in while it "
                                                       "is quantized; it is the reference for every comparison.")
        options.addWidget(self.dtype)
        options.addSpacing(16)
        self.trust = bind(QCheckBox("Run code shipped with the model"), state, "model.trust_remote_code",
                          "Some models need Python files from their folder. That code runs with your permissions: "
                          "only turn this on for models you trust.")
        options.addWidget(self.trust)
        options.addStretch(1)
        self.content.addLayout(options)

        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.fields = {}
        for key, label in (("name", "Name"), ("architecture", "Architecture"), ("kind", "Kind"),
                           ("n_params", "Parameters"), ("dtype", "Data type"), ("linear", "Linear layers")):
            value = QLabel("—")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            form.addRow(label + ":", value)
            self.fields[key] = value
        self.content.addWidget(box)

        self.layers = RowsModel(LAYER_COLUMNS, self)
        self.table = make_table(self.layers, self)
        layers_box = QGroupBox("Linear layers (these are what gets quantized)")
        QVBoxLayout(layers_box).addWidget(self.table)
        self.content.addWidget(layers_box, 1)
        self.set_recent([])

    def set_recent(self, paths: List[str]) -> None:
        self.recent_menu.clear()
        for p in paths:
            action = self.recent_menu.addAction(p)
            action.triggered.connect(lambda _=False, path=p: self.open_requested.emit(path))
        self.recent_button.setEnabled(bool(paths))

    def show_loading(self, path: str) -> None:
        self.path.set_text(path)
        self.status.show_text(f"Loading {Path(path).name}…", "muted")

    def show_model(self, info: ModelInfo) -> None:
        s = info.summary
        self.path.set_text(info.path)
        self.fields["name"].setText(s["name"])
        self.fields["architecture"].setText(s["architecture"])
        self.fields["kind"].setText({"causal-lm": "Causal language model (text generation)",
                                     "encoder": "Encoder (embeddings / classification)"}.get(s["kind"], s["kind"]))
        self.fields["n_params"].setText(f"{s['n_params']:,}  ({human_count(s['n_params'])})")
        self.fields["dtype"].setText(s["dtype"])
        self.fields["linear"].setText(f"{s['n_linear']:,} layers, {s['linear_params']:,} parameters "
                                      f"({100 * s['linear_params'] / max(1, s['n_params']):.0f}% of the model)")
        self.layers.set_rows(s["layers"])
        if info.warnings:
            self.status.show_text("Loaded, with notes:\n• " + "\n• ".join(info.warnings), "warn")
        else:
            self.status.show_text(f"Loaded {s['name']}.", "ok")

    def show_error(self, message: str) -> None:
        self.status.show_text(message, "error")
        for value in self.fields.values():
            value.setText("—")
        self.layers.set_rows([])

    def restyle(self) -> None:
        super().restyle()
        self.status.restyle()

    def _open_demo(self, name: str) -> None:
        """Open a shipped demo model with its own data (small text files written once into the cache folder),
        scheme and sequence length."""
        recipe = demo_encoder_recipe_dict() if name == "demo-encoder" else demo_recipe_dict()
        train, evals = demo_sentences() if name == "demo-encoder" else demo_data()
        for key, value in (("data.path", str(train)), ("data.eval_path", str(evals)),
                           ("data.seq_len", recipe["data"]["seq_len"]),
                           ("quant.scheme", recipe["quant"]["scheme"]), ("mode", "qad")):
            self._state.set(key, value)
        self.open_requested.emit(str(DEMO_NAMES[name]))

