"""Step 3: the quantization scheme, and per-layer formats or exclusions."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from PySide6.QtCore import QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QAction, QFont
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QGroupBox, QHeaderView, QLabel, QMenu, QSplitter,
                               QHBoxLayout, QStyledItemDelegate, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from engine.calib import ALGORITHMS

from ..catalog import SchemeRow, weight_format_choices
from ..plan import EXCLUDE
from ..state import doc
from .. import theme
from .common import Page, StatusLine
from .tables import Column, RowsModel, make_table

SCHEME_DEFAULT_LABEL = "Scheme default"
# calibration.sequential: the choices and what each one shows
SEQUENTIAL_CHOICES = (("auto", "Auto (when the model does not fit the GPU)"), (True, "On"), (False, "Off"))
# calibration.awq_unfoldable: the choices and what each one shows (used by AWQ only)
AWQ_UNFOLDABLE_CHOICES = (("auto", "Auto (explicit where the export can carry it)"),
                          ("explicit", "Explicit input scale"), ("skip", "Leave unscaled"))
AWQ_ALGORITHMS = ("awq", "awq+gptq")
EXCLUDE_LABEL = "Keep high precision"


def _fmt_text(fmt: Optional[str]) -> str:
    return fmt if fmt else "kept (high precision)"


def _reason_text(row: Dict[str, Any]) -> str:
    if row["choice"] == EXCLUDE:
        return "you keep it in high precision"
    if row["choice"]:
        return "your choice"
    return row["reason"] or "follows the scheme"


class LayerPlanModel(RowsModel):
    """Rows: {name, in_features, out_features, weight, activation, reason, choice}; column 3 is editable."""

    CHOICE_COLUMN = 3

    def __init__(self, parent=None):
        super().__init__([
            Column("Layer", lambda r: r["name"]),
            Column("Shape", lambda r: r["in_features"] * r["out_features"],
                   tooltip="input features → output features"),
            Column("Weights", lambda r: r["weight"], _fmt_text, tooltip="the weight format this layer gets"),
            Column("Your choice", lambda r: r["choice"], self._choice_text,
                   tooltip="Double-click to pick a format for this layer, or keep it in high precision. "
                           "Right-click for several selected layers."),
            Column("Activations", lambda r: r["activation"], _fmt_text,
                   tooltip="the format of the layer's input activations"),
            Column("Why", lambda r: _reason_text(r)),
        ], parent)

    @staticmethod
    def _choice_text(choice: Optional[str]) -> str:
        if choice is None:
            return SCHEME_DEFAULT_LABEL
        return EXCLUDE_LABEL if choice == EXCLUDE else choice

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if index.isValid() and index.column() == 1 and role == Qt.ItemDataRole.DisplayRole:
            r = self.rows[index.row()]
            return f"{r['in_features']:,} → {r['out_features']:,}"
        if index.isValid() and index.column() == self.CHOICE_COLUMN:
            if role == Qt.ItemDataRole.EditRole:
                return self.rows[index.row()]["choice"]
            if role == Qt.ItemDataRole.FontRole and self.rows[index.row()]["choice"] is not None:
                font = QFont()
                font.setBold(True)
                return font
        return super().data(index, role)

    def flags(self, index):
        flags = super().flags(index)
        if index.isValid() and index.column() == self.CHOICE_COLUMN:
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole):
        if not index.isValid() or index.column() != self.CHOICE_COLUMN or role != Qt.ItemDataRole.EditRole:
            return False
        self.choice_edited(self.rows[index.row()]["name"], value)
        return True

    def choice_edited(self, name: str, choice: Optional[str]) -> None:  # replaced by the panel
        pass


class ChoiceDelegate(QStyledItemDelegate):
    """A combo box editor: scheme default, keep high precision, or one weight format."""

    def __init__(self, choices: List[Dict[str, Any]], parent=None):
        super().__init__(parent)
        self.choices = choices

    def createEditor(self, parent, option, index):
        combo = QComboBox(parent)
        combo.addItem(SCHEME_DEFAULT_LABEL, None)
        combo.addItem(EXCLUDE_LABEL, EXCLUDE)
        combo.insertSeparator(2)
        for c in self.choices:
            combo.addItem(c["label"], c["name"])
            combo.setItemData(combo.count() - 1, c["description"], Qt.ItemDataRole.ToolTipRole)
        combo.activated.connect(lambda _=0, c=combo: self.commitData.emit(c))
        return combo

    def setEditorData(self, editor, index):
        i = editor.findData(index.data(Qt.ItemDataRole.EditRole))
        editor.setCurrentIndex(max(0, i))

    def setModelData(self, editor, model, index):
        model.setData(index, editor.currentData(), Qt.ItemDataRole.EditRole)


def _select_quietly(combo: QComboBox, index: int) -> None:
    """Show ``index`` without emitting the change: the recipe already holds that value."""
    if index != combo.currentIndex():
        combo.blockSignals(True)
        combo.setCurrentIndex(index)
        combo.blockSignals(False)


class FormatPanel(Page):
    scheme_chosen = Signal(str)
    algorithm_chosen = Signal(str)  # calibration.algorithm
    sequential_chosen = Signal(object)  # calibration.sequential: "auto", True or False
    awq_unfoldable_chosen = Signal(str)  # calibration.awq_unfoldable: "auto", "explicit" or "skip"
    layer_choice = Signal(list, object)  # layer names, choice (None | "none" | format)

    def __init__(self, schemes: Sequence[SchemeRow], parent: Optional[QWidget] = None):
        super().__init__(
            "3  Format",
            "Pick how numbers are stored. Fewer bits make the model smaller and faster but less accurate; "
            "W = weights, A = activations (A16 keeps activations in high precision). "
            "Below, you can give single layers another format or keep them in high precision.",
            next_label="Next: mode",
        )
        self.schemes = list(schemes)
        self.scheme_table = QTableWidget(len(self.schemes), 6)
        self.scheme_table.setHorizontalHeaderLabels(["Scheme", "Bits / weight", "Weights", "Activations", "Scales",
                                                     "What it is"])
        self.scheme_table.horizontalHeaderItem(1).setToolTip(
            "Average bits stored per weight, including the scales (rows of 4096).")
        for row, s in enumerate(self.schemes):
            cells = [s.name, f"{s.bits_per_weight:.2f}", s.weight or "kept",
                     s.activation or "kept (16-bit)", f"{s.block}, {s.scale_type}", s.summary]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
                item.setToolTip(s.summary)
                if col == 1:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.scheme_table.setItem(row, col, item)
        self.scheme_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.scheme_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.scheme_table.verticalHeader().setVisible(False)
        self.scheme_table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.scheme_table.setAlternatingRowColors(True)
        header = self.scheme_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.scheme_table.itemSelectionChanged.connect(self._on_scheme_selected)
        rows_height = self.scheme_table.verticalHeader().length() + self.scheme_table.horizontalHeader().sizeHint().height()
        self.scheme_table.setMinimumHeight(min(rows_height + 6, 320))

        self.plan_model = LayerPlanModel(self)
        self.plan_model.choice_edited = lambda name, choice: self.layer_choice.emit([name], choice)
        self.layer_table = make_table(self.plan_model, self, stretch_column=5)
        self.layer_table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.layer_table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                         | QAbstractItemView.EditTrigger.SelectedClicked)
        self.choices = weight_format_choices()
        self.layer_table.setItemDelegateForColumn(LayerPlanModel.CHOICE_COLUMN, ChoiceDelegate(self.choices, self))
        self.layer_table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.layer_table.customContextMenuRequested.connect(self._context_menu)

        scheme_box = QGroupBox("Scheme")
        scheme_layout = QVBoxLayout(scheme_box)
        scheme_layout.addWidget(self.scheme_table)
        self.algorithm_combo = QComboBox()
        for key, text in ALGORITHMS.items():
            self.algorithm_combo.addItem(text.split(":")[0] if ":" in text else key, key)
            self.algorithm_combo.setItemData(self.algorithm_combo.count() - 1, text, Qt.ItemDataRole.ToolTipRole)
        self.algorithm_help = QLabel(ALGORITHMS["rtn"])
        self.algorithm_help.setObjectName("hint")
        self.algorithm_help.setWordWrap(True)
        self.algorithm_combo.currentIndexChanged.connect(self._on_algorithm_selected)
        algo_row = QHBoxLayout()
        algo_row.addWidget(QLabel("PTQ algorithm:"))
        algo_row.addWidget(self.algorithm_combo)
        algo_row.addWidget(self.algorithm_help, 1)
        scheme_layout.addLayout(algo_row)
        self.awq_unfoldable_combo, self.awq_unfoldable_label = self._choice_row(
            scheme_layout, "Where AWQ finds no fold:", AWQ_UNFOLDABLE_CHOICES, "calibration.awq_unfoldable",
            self.awq_unfoldable_chosen, "layers whose input no norm or linear can rescale (BERT's FFN down "
            "projection): an explicit input scale, which dense and ModelOpt AWQ exports carry, or none")
        self._show_awq_choice(self.algorithm_combo.currentData())
        self.sequential_combo, _ = self._choice_row(
            scheme_layout, "Calibrate one block on the GPU at a time:", SEQUENTIAL_CHOICES, "calibration.sequential",
            self.sequential_chosen, "for a model larger than the GPU's memory; the weights wait in CPU memory")
        layer_box = QGroupBox("Layers")
        layer_layout = QVBoxLayout(layer_box)
        layer_layout.addWidget(self.layer_table)
        hint = QLabel("To change a layer, double-click its \"Your choice\" cell, or select layers and right-click.")
        hint.setObjectName("hint")
        layer_layout.addWidget(hint)
        self.hint = hint
        self.summary = StatusLine()
        self.summary.show_text("Open a model (step 1) to see its layers here.")
        layer_layout.addWidget(self.summary)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(scheme_box)
        split.addWidget(layer_box)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        self.content.addWidget(split, 1)

    def _choice_row(self, layout, label: str, choices, key: str, signal, hint: str):
        """A labelled combo of (value, text) choices for recipe ``key``, emitting ``signal`` with the
        value, and a hint beside it: (combo, label)."""
        combo = QComboBox()
        for value, text in choices:
            combo.addItem(text, value)
        combo.setToolTip(doc(key))
        combo.currentIndexChanged.connect(lambda i: signal.emit(combo.itemData(i)))
        row = QHBoxLayout()
        title = QLabel(label)
        row.addWidget(title)
        row.addWidget(combo)
        note = QLabel(hint)
        note.setObjectName("hint")
        note.setWordWrap(True)
        row.addWidget(note, 1)
        layout.addLayout(row)
        return combo, title

    # -- scheme ------------------------------------------------------------------------
    def set_scheme(self, name: str) -> None:
        for row, s in enumerate(self.schemes):
            if s.name == name:
                if self.scheme_table.currentRow() != row:
                    self.scheme_table.blockSignals(True)
                    self.scheme_table.selectRow(row)
                    self.scheme_table.blockSignals(False)
                return
        self.scheme_table.clearSelection()

    def set_algorithm(self, name: str) -> None:
        i = self.algorithm_combo.findData(name)
        if i >= 0:
            _select_quietly(self.algorithm_combo, i)
        self.algorithm_help.setText(ALGORITHMS.get(name, ""))
        self._show_awq_choice(name)

    def _show_awq_choice(self, algorithm: Optional[str]) -> None:
        """The AWQ fallback choice is live only for the algorithms that run AWQ."""
        on = algorithm in AWQ_ALGORITHMS
        self.awq_unfoldable_combo.setEnabled(on)
        self.awq_unfoldable_label.setEnabled(on)

    def set_awq_unfoldable(self, value: Any) -> None:
        _select_quietly(self.awq_unfoldable_combo, max(self.awq_unfoldable_combo.findData(value), 0))

    def set_sequential(self, value: Any) -> None:
        # by value and type, since True == 1
        i = next((n for n, (v, _) in enumerate(SEQUENTIAL_CHOICES) if v == value and type(v) is type(value)), 0)
        _select_quietly(self.sequential_combo, i)

    def _on_algorithm_selected(self, index: int) -> None:
        key = self.algorithm_combo.itemData(index)
        self.algorithm_help.setText(ALGORITHMS.get(key, ""))
        self._show_awq_choice(key)
        self.algorithm_chosen.emit(key)

    def _on_scheme_selected(self) -> None:
        rows = {i.row() for i in self.scheme_table.selectedIndexes()}
        if rows:
            self.scheme_chosen.emit(self.schemes[min(rows)].name)

    # -- layers ------------------------------------------------------------------------
    def set_plan(self, rows: List[Dict[str, Any]], summary: str, warnings: Sequence[str] = ()) -> None:
        self.plan_model.update_rows(rows)
        text = summary + ("".join(f"\n⚠ {w}" for w in warnings))
        self.summary.show_text(text, "warn" if warnings else "muted")

    def selected_layers(self) -> List[str]:
        proxy: QSortFilterProxyModel = self.layer_table.model()
        rows = {proxy.mapToSource(i).row() for i in self.layer_table.selectionModel().selectedRows()}
        return [self.plan_model.rows[r]["name"] for r in sorted(rows)]

    def select_layer(self, name: str) -> None:
        proxy: QSortFilterProxyModel = self.layer_table.model()
        for r, row in enumerate(self.plan_model.rows):
            if row["name"] == name:
                index = proxy.mapFromSource(self.plan_model.index(r, 0))
                self.layer_table.selectRow(index.row())
                self.layer_table.scrollTo(index)
                return

    def _context_menu(self, pos) -> None:
        names = self.selected_layers()
        if not names:
            return
        menu = self.build_layer_menu(names)
        menu.exec(self.layer_table.viewport().mapToGlobal(pos))

    def build_layer_menu(self, names: List[str]) -> QMenu:
        what = names[0] if len(names) == 1 else f"{len(names)} layers"
        menu = QMenu(self)
        menu.addSection(what)
        exclude = menu.addAction(f"Keep {what} in high precision (exclude)")
        exclude.triggered.connect(lambda: self.layer_choice.emit(names, EXCLUDE))
        follow = menu.addAction("Use the scheme's format")
        follow.triggered.connect(lambda: self.layer_choice.emit(names, None))
        sub = menu.addMenu("Weight format")
        for c in self.choices:
            action: QAction = sub.addAction(c["label"])
            action.setToolTip(c["description"])
            action.triggered.connect(lambda _=False, f=c["name"]: self.layer_choice.emit(names, f))
        sub.setToolTipsVisible(True)
        return menu

    def restyle(self) -> None:
        super().restyle()
        self.summary.restyle()
        self.hint.setStyleSheet(f"color: {theme.muted_text()};")
