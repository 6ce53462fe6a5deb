"""Step 2: the text used for calibration / training, and optional evaluation text."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFormLayout, QGroupBox, QLineEdit, QVBoxLayout, QWidget

from ..jobs import DataInfo
from ..state import RecipeState
from .common import Page, PathField, StatusLine, bind

ROLES = ("train", "eval")  # data.path, data.eval_path


class DataPanel(Page):
    open_requested = Signal(str, str)  # role, path ("" clears)
    browse_requested = Signal(str)  # role

    def __init__(self, state: RecipeState, parent: Optional[QWidget] = None):
        super().__init__(
            "2  Data",
            "Choose text the model should see. Calibration (PTQ) measures value ranges on a few batches of it; "
            "QAT and QAD also train on it. Use text like what the model will meet in use. "
            "Accepted: .txt / .md files, a folder of them, or JSON lines (.jsonl) with a text field.",
            next_label="Next: format",
        )
        self.state = state
        self.fields: Dict[str, PathField] = {}
        self.status: Dict[str, StatusLine] = {}
        self.info: Dict[str, Optional[DataInfo]] = {"train": None, "eval": None}
        for role, title, placeholder, hint in (
            ("train", "Calibration and training text", "A .txt / .jsonl file or a folder of .txt files",
             "Required."),
            ("eval", "Evaluation text (optional)", "Held-out text to measure quality on",
             "Optional: without it, part of the text above is held out for evaluation."),
        ):
            box = QGroupBox(title)
            layout = QVBoxLayout(box)
            field = PathField(placeholder, clearable=(role == "eval"))
            field.chosen.connect(lambda p, r=role: self.open_requested.emit(r, p))
            field.browse_requested.connect(lambda r=role: self.browse_requested.emit(r))
            line = StatusLine()
            line.show_text(hint)
            layout.addWidget(field)
            layout.addWidget(line)
            self.content.addWidget(box)
            self.fields[role], self.status[role] = field, line

        options = QGroupBox("Reading")
        form = QFormLayout(options)
        self.text_field = bind(QLineEdit(), state, "data.text_field",
                               "Only for JSON lines: the key of each record that holds the text.")
        form.addRow("JSON text field:", self.text_field)
        self.content.addWidget(options)
        self.content.addStretch(1)
        state.changed.connect(self._on_state_changed)
        state.reset.connect(self._pull_paths)
        self._pull_paths()

    def _pull_paths(self) -> None:
        self.fields["train"].set_text(self.state.get("data.path") or "")
        self.fields["eval"].set_text(self.state.get("data.eval_path") or "")

    def _on_state_changed(self, key: str) -> None:
        if key in ("data.path", "data.eval_path"):
            self._pull_paths()
        elif key == "data.seq_len":
            for role in ROLES:
                if self.info[role] is not None:
                    self.show_info(role, self.info[role])

    def show_loading(self, role: str, path: str) -> None:
        self.fields[role].set_text(path)
        self.status[role].show_text(f"Reading {Path(path).name}…")

    def show_info(self, role: str, info: DataInfo) -> None:
        self.info[role] = info
        seq_len = int(self.state.get("data.seq_len"))
        text = f"{info.documents:,} document{'s' if info.documents != 1 else ''} · {info.characters:,} characters"
        if info.tokens is None:
            self.status[role].show_text(text + " · load a model to count tokens", "ok")
            return
        blocks = info.blocks(seq_len)
        text += f" · {info.tokens:,} tokens = {blocks:,} samples of {seq_len} tokens"
        if blocks == 0:
            self.status[role].show_text(text + ". Too short: give more text or lower the sequence length "
                                               "(step 4).", "warn")
        else:
            self.status[role].show_text(text, "ok")

    def show_error(self, role: str, message: str) -> None:
        self.info[role] = None
        self.status[role].show_text(message, "error")

    def clear(self, role: str) -> None:
        self.info[role] = None
        self.status[role].show_text("Optional: without it, part of the text above is held out for evaluation."
                                    if role == "eval" else "Required.")

    def restyle(self) -> None:
        super().restyle()
        for line in self.status.values():
            line.restyle()
