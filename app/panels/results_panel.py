"""Step 6: live curves, per-layer error, the benchmark table and chart, the log."""

from __future__ import annotations

import math

import time
from typing import Any, Dict, List, Optional

import numpy as np

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont, QFontDatabase, QTextCursor
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QHeaderView, QLabel, QPlainTextEdit, QProgressBar,
                               QPushButton, QSplitter, QTableWidget, QTableWidgetItem, QTabWidget, QVBoxLayout,
                               QWidget)

from .. import theme
from ..benchmark import METRIC_BY_KEY, ResultRow, columns, result_rows
from ..plots.bars import BarChart
from ..plots.curves import LiveCurves
from ..plots.heatmap import LayerHeatmap
from .common import Page

RUN_COLUMN = "this run"


class LogView(QPlainTextEdit):
    MAX_LINES = 5000

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(self.MAX_LINES)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)

    def add(self, message: str, level: str = "info") -> None:
        stamp = time.strftime("%H:%M:%S")
        prefix = "warning: " if level == "warning" else ("error: " if level == "error" else "")
        self.appendPlainText(f"{stamp}  {prefix}{message}")
        self.moveCursor(QTextCursor.MoveOperation.End)


class ResultsPanel(Page):
    compare_requested = Signal()
    layer_selected = Signal(str)

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(
            "6  Results",
            "Watch training live, find the layers that suffer most from rounding, and compare the original "
            "model with the quantized one.",
            next_label="Next: export",
        )
        self.tabs = QTabWidget()
        self.content.addWidget(self.tabs, 1)

        # curves
        self.curves = LiveCurves()
        self.tabs.addTab(self.curves, "Training curves")

        # layers
        layers = QWidget()
        lay = QVBoxLayout(layers)
        lay.setContentsMargins(4, 4, 4, 4)
        top = QHBoxLayout()
        self.layers_help = QLabel("Weight error of every layer, as SQNR in dB: higher is better; below about "
                                  "20 dB a layer is a candidate to keep in high precision. Grey = not quantized "
                                  "or not computed. \"Compare formats\" adds one column per format. Click a "
                                  "cell to select its layer.")
        self.layers_help.setWordWrap(True)
        self.compare_button = QPushButton("Compare formats")
        self.compare_button.setToolTip("Quantize every layer's weights with several formats and measure the "
                                       "error of each (runs in the background).")
        self.compare_button.clicked.connect(self.compare_requested)
        self.compare_progress = QProgressBar()
        self.compare_progress.setMaximumWidth(160)
        self.compare_progress.setVisible(False)
        top.addWidget(self.layers_help, 1)
        top.addWidget(self.compare_progress)
        top.addWidget(self.compare_button)
        lay.addLayout(top)
        self.heatmap = LayerHeatmap(value_name="weight SQNR", unit="dB")
        self.heatmap.layer_clicked.connect(self.layer_selected)
        self.heatmap.cell_clicked.connect(self._show_cell)
        lay.addWidget(self.heatmap, 1)
        self.layer_info = QLabel("")
        self.layer_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.layer_info)
        self.tabs.addTab(layers, "Layers")

        # benchmark
        bench = QWidget()
        blay = QVBoxLayout(bench)
        blay.setContentsMargins(4, 4, 4, 4)
        self.table = QTableWidget(0, 0)
        self.table.verticalHeader().setVisible(True)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        chart_row = QHBoxLayout()
        chart_row.addWidget(QLabel("Chart:"))
        self.metric_combo = QComboBox()
        self.metric_combo.currentIndexChanged.connect(self._draw_bars)
        chart_row.addWidget(self.metric_combo)
        chart_row.addStretch(1)
        self.bench_note = QLabel("The table fills in as the run measures each model.")
        self.bench_note.setWordWrap(True)
        self.bars = BarChart()
        split = QSplitter(Qt.Orientation.Vertical)
        top_part = QWidget()
        tl = QVBoxLayout(top_part)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.bench_note)
        tl.addWidget(self.table)
        bottom_part = QWidget()
        bl = QVBoxLayout(bottom_part)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addLayout(chart_row)
        bl.addWidget(self.bars, 1)
        split.addWidget(top_part)
        split.addWidget(bottom_part)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)
        blay.addWidget(split)
        self.bench_tab = self.tabs.addTab(bench, "Benchmark")
        self.tabs.currentChanged.connect(lambda _: self._bars_dirty and self._draw_bars())  # after the switch

        # log
        self.log = LogView()
        self.tabs.addTab(self.log, "Log")

        self.rows: List[ResultRow] = []
        self.layer_names: List[str] = []
        self.has_run = False
        self.comparison: Optional[tuple] = None  # (formats, values[layer, format])
        self.partial: Dict[str, Dict[str, float]] = {}
        self.mode = "ptq"
        self._bars_dirty = False
        self._bench_timer = QTimer(self)
        self._bench_timer.setSingleShot(True)
        self._bench_timer.setInterval(100)
        self._bench_timer.timeout.connect(self._fill_from_partial)

    # -- run lifecycle -------------------------------------------------------------------
    def run_started(self, layer_names: List[str], scheme: str, mode: str = "ptq") -> None:
        self.mode = mode
        self.curves.clear()
        self.curves.set_live(True)
        self.partial = {}
        self.rows = []
        self._fill_table()
        if layer_names != self.layer_names:
            self.comparison = None
        self.layer_names = list(layer_names)
        self.heatmap.missing_text[RUN_COLUMN] = f"not quantized by {scheme} (kept in high precision)"
        self.has_run = False  # a fresh, empty column for this run
        self._compose_heatmap(with_run=True)

    def run_ended(self) -> None:
        self.curves.set_live(False)

    def add_metric(self, stage: str, name: str, value: float, step: Optional[int]) -> None:
        if stage == "train":
            self.curves.add(name, step or 0, value)
        elif stage == "eval":
            if name in ("perplexity", "embedding_cosine"):  # the headline of a causal LM / an encoder
                self.curves.add(name, step or 0, value)
        else:
            self.partial.setdefault(stage, {})[name] = value
            if name in ("perplexity", "embedding_cosine") and stage in ("baseline", "ptq"):
                label = "original" if stage == "baseline" else "PTQ"
                self.curves.set_reference(label, value, theme.SERIES[stage])
            elif name in ("perplexity", "embedding_cosine") and stage == "final":  # the evaluation curve's end
                steps = self.curves.series["loss"]
                if len(steps):
                    self.curves.add(name, steps.view()[0][-1], value)
            if not self._bench_timer.isActive():  # a burst of metrics rebuilds the table once
                self._bench_timer.start()

    def layer_stats(self, name: str, stats: Dict[str, Any]) -> None:
        value = stats.get("weight_sqnr_db")
        if value is not None:
            self.heatmap.set_value(name, RUN_COLUMN, float(value))

    def show_report(self, report: Dict[str, Any]) -> None:
        self._bench_timer.stop()
        self.rows = result_rows(report)
        self._fill_table()
        layers = report.get("layers") or []
        if layers:
            self.heatmap.set_column(RUN_COLUMN, {layer["name"]: float(layer["weight_sqnr_db"]) for layer in layers
                                                 if layer.get("weight_sqnr_db") is not None})
            # output error on the calibration inputs before / after the PTQ algorithm, as dB (higher is better)
            for key in sorted({k for layer in layers for k in layer if k.startswith("error_")}):
                label = "output dB, " + ("RTN" if key == "error_rtn" else key[len("error_"):].upper())
                self.heatmap.set_column(label, {layer["name"]: -10.0 * math.log10(max(float(layer[key]), 1e-12))
                                                for layer in layers if layer.get(key) is not None})

    def _fill_from_partial(self) -> None:
        report = {"mode": self.mode, "baseline": self.partial.get("baseline"), "ptq": self.partial.get("ptq"),
                  "final": self.partial.get("final")}
        self.rows = result_rows(report)
        self._fill_table()

    # -- the table and chart -------------------------------------------------------------
    def _fill_table(self) -> None:
        metrics = columns(self.rows)
        self.table.clear()
        self.table.setRowCount(len(self.rows))
        self.table.setColumnCount(len(metrics))
        self.table.setHorizontalHeaderLabels([m.label for m in metrics])
        self.table.setVerticalHeaderLabels([r.label for r in self.rows])
        bold = QFont(self.table.font())
        bold.setBold(True)
        for j, m in enumerate(metrics):
            self.table.horizontalHeaderItem(j).setToolTip(f"{m.tooltip} ({m.better} is better)")
            present = [r.values[m.key] for r in self.rows[1:] if m.key in r.values]
            best = (min(present) if m.better == "lower" else max(present)) if len(present) > 1 else None
            for i, r in enumerate(self.rows):
                v = r.values.get(m.key)
                item = QTableWidgetItem("—" if v is None else m.fmt(v))
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if v is not None and i > 0 and v == best:
                    item.setFont(bold)
                    item.setToolTip("best of the quantized results")
                self.table.setItem(i, j, item)
        height = self.table.horizontalHeader().sizeHint().height() + 2 * self.table.frameWidth()
        height += sum(self.table.rowHeight(i) for i in range(self.table.rowCount()))
        self.table.setFixedHeight(max(height, 60))
        if self.rows:
            self.bench_note.setText("Original = the model before quantization. Bold = best quantized result. "
                                    "Hover a column title for its meaning.")
        current = self.metric_combo.currentData()
        self.metric_combo.blockSignals(True)
        self.metric_combo.clear()
        for m in metrics:
            self.metric_combo.addItem(m.label, m.key)
        index = self.metric_combo.findData(current)
        self.metric_combo.setCurrentIndex(index if index >= 0 else 0)
        self.metric_combo.blockSignals(False)
        self._draw_bars()

    def _draw_bars(self) -> None:
        if not self.bars.isVisible():  # drawn when the chart is shown
            self._bars_dirty = True
            return
        self._bars_dirty = False
        key = self.metric_combo.currentData()
        if not key or not self.rows:
            self.bars.clear_bars()
            return
        m = METRIC_BY_KEY[key]
        rows = [r for r in self.rows if key in r.values]
        scale, title = (1e-6, "Weights size in MB") if key == "size_bytes" else (1.0, m.label)
        self.bars.set_bars([r.label for r in rows], [r.values[key] * scale for r in rows],
                           [theme.SERIES.get(r.key, "#888888") for r in rows], title=f"{title} ({m.better} is better)",
                           relative_to_first=bool(rows) and rows[0].key == "baseline")

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._bars_dirty:
            self._draw_bars()

    # -- per-layer comparison ------------------------------------------------------------
    def set_comparison(self, layers: List[str], formats: List[str], values: List[List[float]]) -> None:
        if layers != self.layer_names:
            self.layer_names = list(layers)
            self.has_run = False
        self.comparison = (list(formats), np.asarray(values, dtype=np.float32))
        self._compose_heatmap(with_run=self.has_run)

    def _compose_heatmap(self, with_run: bool) -> None:
        """Columns: this run's SQNR (kept from before when it exists), then the compared formats."""
        n = len(self.layer_names)
        columns, blocks = [], []
        if with_run:
            run = (self.heatmap.values[:, [self.heatmap.columns.index(RUN_COLUMN)]]
                   if self.has_run and RUN_COLUMN in self.heatmap.columns and self.heatmap.rows == self.layer_names
                   else np.full((n, 1), np.nan, np.float32))
            columns.append(RUN_COLUMN)
            blocks.append(run)
            self.has_run = True
        if self.comparison is not None:
            columns += self.comparison[0]
            blocks.append(self.comparison[1])
        self.heatmap.set_table(self.layer_names, columns, np.hstack(blocks) if blocks else None)
        self.heatmap.set_divider(0 if with_run and self.comparison is not None else None)

    def show_compare_progress(self, done: int, total: int) -> None:
        self.compare_progress.setVisible(done < total)
        self.compare_progress.setRange(0, max(1, total))
        self.compare_progress.setValue(done)
        self.compare_button.setEnabled(done >= total)

    def _show_cell(self, layer: str, column: str) -> None:
        row = self.heatmap.rows.index(layer)
        col = self.heatmap.columns.index(column)
        self.layer_info.setText(self.heatmap.describe(row, col).replace("\n", "  —  "))

    def restyle(self) -> None:
        super().restyle()
        self.curves.restyle()
        self.heatmap.restyle()
        self.bars.restyle()
        self.layers_help.setStyleSheet(f"color: {theme.muted_text()};")
        self.bench_note.setStyleSheet(f"color: {theme.muted_text()};")
        self._draw_bars()
