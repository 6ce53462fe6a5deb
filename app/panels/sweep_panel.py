"""The Sweep step: run several schemes on the open model and data, see the trade-off, ship one."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QDoubleSpinBox, QGridLayout, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QProgressBar, QPushButton, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from .. import theme
from .common import Page

FRONT = "#D55E00"
POINT = "#0072B2"
DEFAULT_TICKED = ("W8A8-INT8", "W4A16-INT4", "W4A16-NVFP4", "W4A16-MXFP4", "W2A16-INT2")


class SweepPanel(Page):
    start_requested = Signal(list, list, object)  # PTQ schemes, QAD schemes, mixed budget (None = off)
    cancel_requested = Signal()
    export_requested = Signal(str)  # run folder
    report_requested = Signal(str)  # sweep folder
    target_changed = Signal()

    def __init__(self, schemes: Sequence[str], parent: Optional[QWidget] = None):
        super().__init__("Sweep", "Which format should you ship? Run PTQ for several schemes (and QAD for the ones "
                         "you tick) on the model and data of steps 1-2, with the same calibration and evaluation "
                         "blocks, then read the trade-off: red points are on the Pareto front.")
        top = QHBoxLayout()
        box = QGroupBox("Schemes")
        grid = QGridLayout(box)
        grid.addWidget(QLabel("<b>PTQ</b>"), 0, 1)
        grid.addWidget(QLabel("<b>+ QAD</b>"), 0, 2)
        self.ptq_boxes: Dict[str, QCheckBox] = {}
        self.qad_boxes: Dict[str, QCheckBox] = {}
        for i, name in enumerate(schemes):
            grid.addWidget(QLabel(name), i + 1, 0)
            p, q = QCheckBox(), QCheckBox()
            p.setChecked(name in DEFAULT_TICKED)
            q.setToolTip("also train this scheme with QAD (the Mode step's training settings)")
            self.ptq_boxes[name], self.qad_boxes[name] = p, q
            grid.addWidget(p, i + 1, 1)
            grid.addWidget(q, i + 1, 2)
        top.addWidget(box)

        side = QVBoxLayout()
        self.mixed_box = QCheckBox("Add the per-layer mix from `lowbit mixed` within")
        self.mixed_bits = QDoubleSpinBox()
        self.mixed_bits.setRange(2.0, 16.0)
        self.mixed_bits.setSingleStep(0.25)
        self.mixed_bits.setValue(4.5)
        self.mixed_bits.setSuffix(" bits / weight")
        mixed_row = QHBoxLayout()
        mixed_row.addWidget(self.mixed_box)
        mixed_row.addWidget(self.mixed_bits)
        mixed_row.addStretch(1)
        side.addLayout(mixed_row)
        run_row = QHBoxLayout()
        self.start_button = QPushButton("Run sweep")
        self.start_button.setIcon(theme.icon("start"))
        self.start_button.clicked.connect(self._start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        run_row.addWidget(self.start_button)
        run_row.addWidget(self.cancel_button)
        run_row.addWidget(self.progress, 1)
        side.addLayout(run_row)
        side.addWidget(self.status)
        target = QGroupBox("Your target")
        tl = QGridLayout(target)
        self.size_target = QDoubleSpinBox()
        self.size_target.setRange(0.0, 1e7)
        self.size_target.setDecimals(3)
        self.size_target.setSuffix(" MB")
        self.size_target.setSpecialValueText("any size")
        self.size_target.setToolTip("the most the weights may take; 0 = any size")
        self.metric_target = QDoubleSpinBox()
        self.metric_target.setRange(0.0, 1e9)
        self.metric_target.setDecimals(4)
        self.metric_target.setSpecialValueText("best accuracy")
        self.metric_target.setToolTip("the accuracy the run must reach; 0 = the most accurate within the size")
        tl.addWidget(QLabel("Weights at most"), 0, 0)
        tl.addWidget(self.size_target, 0, 1)
        self.metric_label = QLabel("Metric at least as good as")
        tl.addWidget(self.metric_label, 1, 0)
        tl.addWidget(self.metric_target, 1, 1)
        self.size_target.valueChanged.connect(lambda _: self.target_changed.emit())
        self.metric_target.valueChanged.connect(lambda _: self.target_changed.emit())
        side.addWidget(target)
        side.addStretch(1)
        top.addLayout(side, 1)
        self.content.addLayout(top)

        split = QSplitter(Qt.Orientation.Vertical)
        self.plots = pg.GraphicsLayoutWidget()
        self.bits_plot = self.plots.addPlot(row=0, col=0, title="Accuracy vs bits per weight")
        self.size_plot = self.plots.addPlot(row=0, col=1, title="Accuracy vs weights size")
        self.bits_plot.setLabel("bottom", "bits per weight (quantized layers, scales included)")
        self.size_plot.setLabel("bottom", "weights size (MB)")
        for p in (self.bits_plot, self.size_plot):
            p.showGrid(x=True, y=True, alpha=0.25)
            p.getAxis("bottom").enableAutoSIPrefix(False)
            p.getAxis("left").enableAutoSIPrefix(False)
        split.addWidget(self.plots)
        lower = QWidget()
        ll = QVBoxLayout(lower)
        ll.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(["Run", "Bits / weight", "Weights", "Metric", "Front", "Ship it when"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        ll.addWidget(self.table, 1)
        buttons = QHBoxLayout()
        self.choice_label = QLabel("")
        self.choice_label.setWordWrap(True)
        self.export_button = QPushButton("Export the chosen run")
        self.export_button.setIcon(theme.icon("export"))
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(lambda: self.chosen and self.export_requested.emit(self.chosen))
        self.report_button = QPushButton("Write report…")
        self.report_button.setEnabled(False)
        self.report_button.clicked.connect(lambda: self.folder and self.report_requested.emit(self.folder))
        buttons.addWidget(self.choice_label, 1)
        buttons.addWidget(self.report_button)
        buttons.addWidget(self.export_button)
        ll.addLayout(buttons)
        split.addWidget(lower)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([300, 200])
        self.content.addWidget(split, 1)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.points: List[Dict[str, Any]] = []
        self.chosen: Optional[str] = None
        self.folder: Optional[str] = None

    # -- intent ----------------------------------------------------------------------------
    def ticked(self) -> tuple:
        ptq = [n for n, b in self.ptq_boxes.items() if b.isChecked() or self.qad_boxes[n].isChecked()]
        qad = [n for n, b in self.qad_boxes.items() if b.isChecked()]
        return ptq, qad

    def set_ticked(self, ptq: Sequence[str], qad: Sequence[str] = ()) -> None:
        for n, b in self.ptq_boxes.items():
            b.setChecked(n in ptq)
        for n, b in self.qad_boxes.items():
            b.setChecked(n in qad)

    def _start(self) -> None:
        ptq, qad = self.ticked()
        self.start_requested.emit(ptq, qad, self.mixed_bits.value() if self.mixed_box.isChecked() else None)

    def targets(self) -> tuple:
        size = self.size_target.value() * 1e6 or None
        metric = self.metric_target.value() or None
        return size, metric

    # -- state -----------------------------------------------------------------------------
    def sweep_started(self, folder: str, n_runs: int) -> None:
        self.folder = folder
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setVisible(True)
        self.progress.setRange(0, n_runs)
        self.progress.setValue(0)
        self.status.setText(f"Sweeping into {folder}…")

    def show_progress(self, done: int, total: int, text: str) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)
        if text:
            self.status.setText(text)

    def sweep_ended(self, text: str) -> None:
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setVisible(False)
        self.status.setText(text)

    def show_trade_off(self, folder: str, points: List[Dict[str, Any]], ship: List[Dict[str, Any]],
                       texts: Dict[str, str], recommended: Optional[str]) -> None:
        """Points and ship rows from engine.pipeline.tradeoff (as dicts); ``texts``: run -> "ship it when"."""
        self.folder = folder
        self.points = points
        self.report_button.setEnabled(bool(points))
        metric = points[0]["metric"] if points else "metric"
        self.metric_label.setText(f"{metric} at least as good as")
        for plot, x_key, front_key, scale in ((self.bits_plot, "bits", "front_bits", 1.0),
                                              (self.size_plot, "size_bytes", "front_size", 1e-6)):
            plot.clear()
            plot.setLabel("left", metric)
            front = sorted((p for p in points if p[front_key]), key=lambda p: p[x_key])
            if len(front) > 1:
                plot.plot([p[x_key] * scale for p in front], [p["value"] for p in front],
                          pen=pg.mkPen(FRONT, width=2, style=Qt.PenStyle.DashLine))
            right = max((q[x_key] for q in points), default=0.0)
            left = min((q[x_key] for q in points), default=0.0)
            for p in points:
                on = p[front_key]
                chosen = p["path"] == recommended
                plot.plot([p[x_key] * scale], [p["value"]], pen=None, symbol="s" if p["mixed"] else "o",
                          symbolSize=16 if chosen else 11, symbolBrush=FRONT if on else POINT,
                          symbolPen=pg.mkPen("#222222", width=3 if chosen else 1))
                near_right = right > left and (p[x_key] - left) > 0.7 * (right - left)
                label = pg.TextItem(p["label"], color=theme.plot_colors()[1], anchor=(1 if near_right else 0, 1))
                label.setPos(p[x_key] * scale, p["value"])
                plot.addItem(label)
        rows = sorted(points, key=lambda p: p["size_bytes"])
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        colours = theme.status_colors()
        for i, p in enumerate(rows):
            values = [p["name"], f"{p['bits']:.3f}", f"{p['size_bytes'] / 1e6:.3f} MB", f"{p['value']:.4g}",
                      "Pareto front" if p["front_size"] else "", texts.get(p["path"], "dominated: another run is "
                                                                                     "smaller and as good")]
            for j, v in enumerate(values):
                item = QTableWidgetItem(v)
                item.setData(Qt.ItemDataRole.UserRole, p["path"])
                if p["front_size"] and j == 4:
                    item.setForeground(QBrush(QColor(FRONT)))
                if p["path"] == recommended:
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                    item.setForeground(QBrush(QColor(colours["ok"])))
                self.table.setItem(i, j, item)
        self.table.blockSignals(False)
        self.select_run(recommended)

    def select_run(self, path: Optional[str]) -> None:
        self.chosen = path
        for i in range(self.table.rowCount()):
            if self.table.item(i, 0).data(Qt.ItemDataRole.UserRole) == path:
                self.table.blockSignals(True)
                self.table.selectRow(i)
                self.table.blockSignals(False)
        name = next((p["name"] for p in self.points if p["path"] == path), None)
        self.choice_label.setText(f"Chosen: <b>{name}</b>" if name else "No run meets the target.")
        self.export_button.setEnabled(path is not None)

    def _on_row_selected(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if rows:
            self.select_run(self.table.item(min(rows), 0).data(Qt.ItemDataRole.UserRole))

    def restyle(self) -> None:
        super().restyle()
        bg, fg, _ = theme.plot_colors()
        self.plots.setBackground(bg)
        for p in (self.bits_plot, self.size_plot):
            for axis in ("left", "bottom"):
                p.getAxis(axis).setPen(fg)
                p.getAxis(axis).setTextPen(fg)
        self.status.setStyleSheet(f"color: {theme.muted_text()};")
