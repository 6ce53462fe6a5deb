"""Step 4: PTQ, QAT or QAD, and their settings."""

from __future__ import annotations

from typing import Dict, List, Optional

from PySide6.QtCore import Qt

from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QRadioButton, QVBoxLayout, QWidget)

from .. import theme
from ..state import RecipeState
from .common import Page, SciSpinBox, bind, fspin, spin

MODES = [
    ("ptq", "PTQ: post-training quantization",
     "Measures value ranges on a few batches and rounds the weights. Fast (seconds to minutes), no training. "
     "Start here."),
    ("qat", "QAT: quantization-aware training",
     "After PTQ, fine-tunes the quantized model on your text so it learns to live with the rounding. "
     "Slower; needs more text."),
    ("qad", "QAD: quantization-aware distillation",
     "Like QAT, but the quantized model learns to copy the original model's predictions. "
     "Usually recovers the most quality."),
]


def _form(box: QGroupBox) -> QFormLayout:
    form = QFormLayout(box)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
    form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return form


def _int_list(text) -> list:
    """'1, -1' -> [1, -1]; what is not a whole number is left out."""
    out = []
    for part in (text or "").replace(";", ",").split(","):
        try:
            out.append(int(part.strip()))
        except ValueError:
            continue
    return out


class ModePanel(Page):
    def __init__(self, state: RecipeState, parent: Optional[QWidget] = None):
        super().__init__(
            "4  Mode",
            "Choose how the model is quantized. The defaults are sensible; hover over a setting to see what it does.",
            next_label="Next: run", scroll=True,
        )
        self.state = state
        modes = QGroupBox("Mode")
        box = QVBoxLayout(modes)
        self.mode_group = QButtonGroup(self)
        self.mode_buttons: Dict[str, QRadioButton] = {}
        self.mode_notes: List[QLabel] = []
        for value, title, text in MODES:
            button = QRadioButton(title)
            button.setToolTip(text)
            note = QLabel(text)
            note.setWordWrap(True)
            note.setIndent(24)
            box.addWidget(button)
            box.addWidget(note)
            box.addSpacing(4)
            self.mode_group.addButton(button)
            self.mode_buttons[value] = button
            self.mode_notes.append(note)
            button.toggled.connect(lambda on, v=value: on and state.set("mode", v))
        self.content.addWidget(modes)

        columns = QHBoxLayout()
        left, right = QVBoxLayout(), QVBoxLayout()
        columns.addLayout(left, 1)
        columns.addLayout(right, 1)
        self.content.addLayout(columns)

        data = QGroupBox("Samples and calibration (every mode)")
        form = _form(data)
        form.addRow("Sequence length:", bind(spin(8, 32768, 64), state, "data.seq_len",
                                              "Tokens per sample. Longer samples need more memory."))
        form.addRow("Batch size:", bind(spin(1, 4096), state, "data.batch_size",
                                         "Samples processed together. Lower it if you run out of memory."))
        form.addRow("Calibration batches:", bind(spin(1, 100000), state, "data.calib_batches",
                                                  "How many batches PTQ looks at to pick the scales."))
        form.addRow("Evaluation batches:", bind(spin(1, 100000), state, "data.eval_batches",
                                                 "How many batches each quality measurement uses."))
        method = QComboBox()
        for value, label in (("max", "max: largest value seen"), ("percentile", "percentile: ignore rare outliers"),
                             ("mse", "mse: search the scale with the least error")):
            method.addItem(label, value)
        form.addRow("Calibration method:", bind(method, state, "calibration.method",
                                                 "How static scales are chosen from the values seen."))
        samples = QComboBox()
        for value, label in (("auto", "auto: sentences for encoders, blocks for LMs"),
                             ("lines", "one sample per line (padded, with masks)"),
                             ("packed", "packed blocks of running text")):
            samples.addItem(label, value)
        form.addRow("Samples:", bind(samples, state, "data.samples",
                                      "How text becomes samples. Encoders are used one sentence at a time."))
        form.addRow("Seed:", bind(spin(0, 2**31 - 1), state, "seed",
                                   "Same seed, same data order and results."))
        left.addWidget(data)
        left.addStretch(1)

        self.train_box = QGroupBox("Training (QAT and QAD)")
        form = _form(self.train_box)
        form.addRow("Steps:", bind(spin(1, 10_000_000, 50), state, "train.steps",
                                    "Optimizer steps. More steps recover more quality and take longer."))
        form.addRow("Learning rate:", bind(SciSpinBox(), state, "train.lr",
                                            "Peak learning rate. Small values (1e-5 … 1e-4) are safest.",
                                            from_recipe=lambda v: v if isinstance(v, float) else 1e-4))
        self.lr_auto = bind(QCheckBox("Probe automatically"), state, "train.lr",
                            "Tries a few learning rates for a few steps on held-out data and keeps the best.",
                            to_recipe=lambda on: "auto" if on else 1e-4, from_recipe=lambda v: v == "auto")
        form.addRow("", self.lr_auto)
        batch = spin(0, 65536)
        batch.setSpecialValueText("auto (by model kind)")
        form.addRow("Training batch:", bind(batch, state, "train.batch_size",
                                             "Samples per optimizer step; auto = 32 sentences for encoders.",
                                             to_recipe=lambda v: v or None, from_recipe=lambda v: v or 0))
        dropout = QComboBox()
        for value, label in (("auto", "auto: off, like the teacher"), ("off", "off"), ("on", "on (as in pre-training)")):
            dropout.addItem(label, value)
        form.addRow("Dropout:", bind(dropout, state, "train.dropout",
                                      "The quantized model trains deterministic by default, like the original."))
        form.addRow("Stop if worse than PTQ for:", bind(spin(0, 1000), state, "train.early_stop_patience",
                                                         "Evaluations in a row (0 = never stop early); the best "
                                                         "state is kept."))
        form.addRow("Scale penalty:", bind(fspin(0.0, 100.0, 0.01, 3), state, "train.scale_penalty",
                                            "With learnable scales: how strongly scales are kept near "
                                            "their calibrated values."))
        form.addRow("Warm-up steps:", bind(spin(0, 1_000_000), state, "train.warmup_steps",
                                            "Steps during which the learning rate ramps up from zero."))
        form.addRow("Gradient accumulation:", bind(spin(1, 4096), state, "train.grad_accum",
                                                    "Batches added up per step: a larger effective batch "
                                                    "without more memory."))
        form.addRow("Evaluate every:", bind(spin(0, 1_000_000, 10), state, "train.eval_every",
                                             "Steps between quality measurements (0 = only at the end)."))
        self.kd_box = QGroupBox("Distillation (QAD only)")
        kd = _form(self.kd_box)
        kd.addRow("Temperature:", bind(fspin(0.05, 100.0, 0.5), state, "train.kd_temperature",
                                        "Softens both models' predictions before they are compared; "
                                        "above 1 passes on more about unlikely tokens."))
        kd.addRow("Distillation weight (alpha):", bind(fspin(0.0, 1.0, 0.1), state, "train.kd_alpha",
                                                        "1 = learn only from the original model; "
                                                        "0 = only from the text (like QAT)."))
        final = fspin(-0.01, 1.0, 0.1)
        final.setSpecialValueText("constant")
        kd.addRow("Anneal alpha to:", bind(final, state, "train.kd_alpha_final",
                                            "The distillation weight moves from alpha to this over the run.",
                                            to_recipe=lambda v: None if v < 0 else v,
                                            from_recipe=lambda v: -0.01 if v is None else v))
        anneal = QComboBox()
        for value in ("linear", "cosine"):
            anneal.addItem(value, value)
        kd.addRow("Annealing:", bind(anneal, state, "train.kd_anneal", "How alpha moves to its final value."))
        kd.addRow("Hidden-state weight:", bind(fspin(0.0, 100.0, 0.1), state, "train.kd_hidden_weight",
                                                "Also align the layers' hidden states with the original's "
                                                "(0 = off)."))
        kd.addRow("Embedding weight (encoders):", bind(fspin(0.0, 1000.0, 1.0), state, "train.kd_embedding_weight",
                                                        "Also pull the pooled sentence embeddings together "
                                                        "(0 = off)."))
        layers = QLineEdit()
        layers.setPlaceholderText("all layers")
        kd.addRow("Aligned layers:", bind(layers, state, "train.kd_hidden_layers",
                                           "Comma-separated block numbers from 1 (-1 = the last); empty = all.",
                                           to_recipe=_int_list, from_recipe=lambda v: ", ".join(map(str, v or ()))))
        right.addWidget(self.train_box)
        right.addWidget(self.kd_box)
        right.addStretch(1)
        self.content.addStretch(1)

        state.changed.connect(lambda key: key == "mode" and self._pull_mode())
        state.reset.connect(self._pull_mode)
        self._pull_mode()

    def _pull_mode(self) -> None:
        mode = self.state.get("mode")
        button = self.mode_buttons.get(mode)
        if button is not None and not button.isChecked():
            button.setChecked(True)
        self.train_box.setEnabled(mode in ("qat", "qad"))
        self.kd_box.setEnabled(mode == "qad")
        tip = "" if mode in ("qat", "qad") else "Choose QAT or QAD above to train."
        self.train_box.setTitle("Training (QAT and QAD)" + (f" — {tip}" if tip else ""))

    def restyle(self) -> None:
        super().restyle()
        for note in self.mode_notes:
            note.setStyleSheet(f"color: {theme.muted_text()};")

    def inputs(self) -> List[QWidget]:
        return [w for w in self.findChildren(QWidget) if w.property("recipeKey")]
