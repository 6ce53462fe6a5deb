"""Pieces every page uses: the page frame, a path field, recipe-bound inputs, number text."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFrame, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QScrollArea, QSpinBox, QToolButton, QVBoxLayout,
                               QWidget)

from .. import theme
from ..state import RecipeState, doc


class Page(QWidget):
    """A workflow step: a title, one paragraph saying what to do, the content, a "Next" button."""

    next_requested = Signal()

    def __init__(self, title: str, help_text: str, next_label: Optional[str] = None, scroll: bool = False,
                 parent: Optional[QWidget] = None):
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(20, 16, 20, 12)
        outer.setSpacing(8)
        self.title = QLabel(title)
        font = QFont(self.title.font())
        font.setPointSizeF(font.pointSizeF() * 1.45)
        font.setBold(True)
        self.title.setFont(font)
        self.help = QLabel(help_text)
        self.help.setWordWrap(True)
        self.help.setObjectName("pageHelp")
        outer.addWidget(self.title)
        outer.addWidget(self.help)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        outer.addWidget(line)

        self.body = QWidget()
        self.content = QVBoxLayout(self.body)
        self.content.setContentsMargins(0, 4, 0, 4)
        self.content.setSpacing(10)
        if scroll:
            area = QScrollArea()
            area.setWidgetResizable(True)
            area.setFrameShape(QFrame.Shape.NoFrame)
            area.setWidget(self.body)
            outer.addWidget(area, 1)
        else:
            outer.addWidget(self.body, 1)

        footer = QHBoxLayout()
        footer.addStretch(1)
        self.next_button: Optional[QPushButton] = None
        if next_label:
            self.next_button = QPushButton(next_label)
            self.next_button.setIcon(theme.icon("next"))
            self.next_button.setLayoutDirection(Qt.LayoutDirection.RightToLeft)  # icon after the text
            self.next_button.clicked.connect(self.next_requested)
            footer.addWidget(self.next_button)
        outer.addLayout(footer)

    def restyle(self) -> None:
        self.help.setStyleSheet(f"color: {theme.muted_text()};")
        if self.next_button is not None:
            self.next_button.setIcon(theme.icon("next"))


class PathField(QWidget):
    """A path line edit with a Browse button; ``chosen(path)`` on Enter or after browsing."""

    chosen = Signal(str)
    browse_requested = Signal()

    def __init__(self, placeholder: str, clearable: bool = False, parent: Optional[QWidget] = None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.returnPressed.connect(lambda: self.chosen.emit(self.edit.text().strip()))
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self.browse_requested)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.browse)
        self.clear_button: Optional[QToolButton] = None
        if clearable:
            self.clear_button = QToolButton()
            self.clear_button.setText("Clear")
            self.clear_button.clicked.connect(lambda: (self.edit.clear(), self.chosen.emit("")))
            layout.addWidget(self.clear_button)

    def text(self) -> str:
        return self.edit.text().strip()

    def set_text(self, text: str) -> None:
        self.edit.setText(text or "")


class StatusLine(QLabel):
    """One line of state under a field: muted info, green ok, orange warning, red error."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._kind = "muted"

    def show_text(self, text: str, kind: str = "muted") -> None:
        self._kind = kind
        self.setText(text)
        self.restyle()

    def restyle(self) -> None:
        self.setStyleSheet(f"color: {theme.status_colors()[self._kind]};")


class SciSpinBox(QDoubleSpinBox):
    """A float spin box that shows and reads scientific notation (learning rates)."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setDecimals(12)
        self.setRange(1e-9, 10.0)
        self.setMinimumWidth(120)

    def textFromValue(self, value: float) -> str:
        return f"{value:.3g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text, pos):
        from PySide6.QtGui import QValidator

        try:
            float(text)
            return QValidator.State.Acceptable, text, pos
        except ValueError:
            return QValidator.State.Intermediate, text, pos

    def stepBy(self, steps: int) -> None:
        value = self.value() * (2.0 ** steps)
        self.setValue(min(self.maximum(), max(self.minimum(), value)))


def bind(widget: QWidget, state: RecipeState, key: str, tooltip: str = "",
         to_recipe: Callable[[Any], Any] = lambda v: v, from_recipe: Callable[[Any], Any] = lambda v: v) -> QWidget:
    """Keep ``widget`` and the recipe key ``key`` in step both ways; tooltip = ``tooltip`` + the schema's doc."""
    parts = [p for p in (tooltip, doc(key)) if p]
    widget.setToolTip("<p>" + "</p><p><i>".join(parts) + ("</i>" if len(parts) > 1 else "") + "</p>"
                      + f"<p><tt>{key}</tt></p>")
    widget.setProperty("recipeKey", key)

    def pull() -> None:
        value = from_recipe(state.get(key))
        widget.blockSignals(True)
        if isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, QComboBox):
            index = widget.findData(value)
            widget.setCurrentIndex(max(0, index))
        elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
            widget.setValue(value if value is not None else widget.minimum())
        elif isinstance(widget, QLineEdit):
            widget.setText("" if value is None else str(value))
        widget.blockSignals(False)

    def push(*_: Any) -> None:
        if isinstance(widget, QCheckBox):
            value = widget.isChecked()
        elif isinstance(widget, QComboBox):
            value = widget.currentData()
        elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
            value = widget.value()
        else:
            value = widget.text().strip() or None
        state.set(key, to_recipe(value))

    if isinstance(widget, QCheckBox):
        widget.toggled.connect(push)
    elif isinstance(widget, QComboBox):
        widget.currentIndexChanged.connect(push)
    elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        widget.valueChanged.connect(push)
    elif isinstance(widget, QLineEdit):
        widget.editingFinished.connect(push)
    state.changed.connect(lambda changed: pull() if changed == key else None)
    state.reset.connect(pull)
    pull()
    return widget


def spin(lo: int, hi: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setGroupSeparatorShown(True)
    box.setMinimumWidth(120)
    return box


def fspin(lo: float, hi: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    box.setMinimumWidth(120)
    return box


def human_count(n: Optional[float]) -> str:
    """1234567 -> '1.23 M'."""
    if n is None:
        return "—"
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)}"


def human_bytes(n: Optional[float]) -> str:
    if n is None or not math.isfinite(n):
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def human_seconds(s: Optional[float]) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    s = int(round(max(0.0, s)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"
