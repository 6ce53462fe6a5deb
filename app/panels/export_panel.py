"""Step 7: the checkpoint format the run writes, where, and whether it verified."""

from __future__ import annotations

from typing import Any, Dict, Optional

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton,
                               QRadioButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from .. import theme
from ..state import RecipeState
from .common import Page, PathField, StatusLine, bind

TARGETS = [
    (None, "Don't export", "Keep only the run folder (report and quantized weights for later)."),
    ("compressed-tensors", "compressed-tensors",
     "Packed low-bit weights that vLLM and SGLang load directly."),
    ("modelopt", "NVIDIA ModelOpt (Hugging Face layout)",
     "The checkpoint layout TensorRT-LLM and ModelOpt-aware loaders read."),
    ("dense", "Dense (fake-quantized)",
     "Ordinary high-precision weights holding the rounded values: loads anywhere, not smaller."),
]


class ExportPanel(Page):
    browse_requested = Signal()
    export_now_requested = Signal()

    def __init__(self, state: RecipeState, parent: Optional[QWidget] = None):
        super().__init__(
            "7  Export",
            "Choose the checkpoint format your inference engine reads. The export is written at the end of "
            "the run, then read back and compared with the quantized model (verification).",
        )
        self.state = state
        box = QGroupBox("Format")
        layout = QVBoxLayout(box)
        self.group = QButtonGroup(self)
        self.buttons: Dict[Optional[str], QRadioButton] = {}
        for value, title, text in TARGETS:
            button = QRadioButton(title)
            button.setToolTip(text)
            note = QLabel(text)
            note.setWordWrap(True)
            note.setIndent(24)
            layout.addWidget(button)
            layout.addWidget(note)
            self.group.addButton(button)
            self.buttons[value] = button
            button.toggled.connect(lambda on, v=value: on and state.set("export.format", v))
        self.content.addWidget(box)

        where = QGroupBox("Where")
        form = QFormLayout(where)
        self.folder = PathField("Empty = an 'export' folder inside the run folder", clearable=True)
        self.folder.chosen.connect(lambda p: state.set("export.path", p or None))
        self.folder.browse_requested.connect(self.browse_requested)
        form.addRow("Folder:", self.folder)
        self.verify = bind(QCheckBox("Read the export back and compare it with the quantized model"), state,
                           "export.verify")
        form.addRow("", self.verify)
        self.content.addWidget(where)

        row = QHBoxLayout()
        self.export_now = QPushButton("Export the last run now")
        self.export_now.setIcon(theme.icon("export"))
        self.export_now.setToolTip("Write the chosen format from the last finished run, without running again.")
        self.export_now.clicked.connect(self.export_now_requested)
        self.export_now.setEnabled(False)
        self.export_now_note = StatusLine()
        self.export_now_note.show_text("Or export a run that has already finished:")
        row.addWidget(self.export_now_note, 1)
        row.addWidget(self.export_now)
        self.content.addLayout(row)

        result = QGroupBox("Last export")
        rl = QVBoxLayout(result)
        self.result_status = StatusLine()
        self.result_status.show_text("No export yet. Choose a format, then start a run (step 5).")
        self.details = QTreeWidget()
        self.details.setHeaderLabels(["Item", "Value"])
        self.details.setColumnWidth(0, 220)
        rl.addWidget(self.result_status)
        rl.addWidget(self.details, 1)
        self.content.addWidget(result, 1)

        state.changed.connect(lambda key: key.startswith("export.") and self._pull())
        state.reset.connect(self._pull)
        self._pull()

    def _pull(self) -> None:
        fmt = self.state.get("export.format")
        button = self.buttons.get(fmt)
        if button is not None and not button.isChecked():
            button.setChecked(True)
        self.folder.set_text(self.state.get("export.path") or "")
        on = fmt is not None
        self.folder.setEnabled(on)
        self.verify.setEnabled(on)

    def set_export_now(self, enabled: bool, note: str) -> None:
        self.export_now.setEnabled(enabled)
        self.export_now_note.show_text(note)

    def show_busy(self, text: str) -> None:
        self.details.clear()
        self.result_status.show_text(text, "muted")

    def show_report(self, report: Dict[str, Any]) -> None:
        export = report.get("export")
        self.details.clear()
        if not export:
            self.result_status.show_text("This run did not export (no format was chosen).", "muted")
            return
        verify = export.get("verify") if isinstance(export.get("verify"), dict) else {}
        ok = verify.get("passed")
        where = export.get("path", "")
        size = f"{export['bytes_on_disk'] / 1e6:.3g} MB" if "bytes_on_disk" in export else ""
        if ok is True:
            self.result_status.show_text(
                f"Exported {size} to {where}.\nVerified: reading it back gives the same outputs "
                f"(largest logit difference {verify.get('max_abs_logit_diff', 0):.3g}, allowed "
                f"{verify.get('tolerance', 0):.3g}).", "ok")
        elif ok is False:
            self.result_status.show_text(f"Exported to {where}, but verification FAILED: the files do not "
                                         "reproduce the quantized model (details below).", "error")
        else:
            self.result_status.show_text(f"Exported {size} to {where} (not verified).", "warn")
        self._add_items(self.details.invisibleRootItem(), export)
        self.details.expandAll()

    def _add_items(self, parent, value: Any) -> None:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, v in items:
            item = QTreeWidgetItem(parent, [str(key), "" if isinstance(v, (dict, list)) else str(v)])
            if isinstance(v, (dict, list)):
                self._add_items(item, v)

    def restyle(self) -> None:
        super().restyle()
        self.result_status.restyle()
        self.export_now_note.restyle()
        self.export_now.setIcon(theme.icon("export"))
