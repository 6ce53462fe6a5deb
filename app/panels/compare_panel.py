"""The Compare step: two or more runs side by side (curves overlaid, results with differences, layers)."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget, QTableWidgetItem,
                               QTabWidget, QVBoxLayout, QWidget)

from .. import theme
from ..plots.heatmap import LayerHeatmap
from .common import Page

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
DIFF_LEVELS = (-10.0, 10.0)  # dB of weight-SQNR change: fixed, so a colour means the same in every comparison


class ComparePanel(Page):
    report_requested = Signal(list)

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__("Compare", "Runs side by side. The first run is the reference: differences are each run "
                         "minus it. Select the runs in the Runs step and press \"Compare selected\".")
        top = QHBoxLayout()
        self.runs_label = QLabel("No runs compared yet.")
        self.runs_label.setWordWrap(True)
        self.report_button = QPushButton("Write report…")
        self.report_button.setEnabled(False)
        self.report_button.clicked.connect(lambda: self.report_requested.emit(list(self.paths)))
        top.addWidget(self.runs_label, 1)
        top.addWidget(self.report_button)
        self.content.addLayout(top)
        self.tabs = QTabWidget()
        self.content.addWidget(self.tabs, 1)

        self.curves = pg.GraphicsLayoutWidget()
        self.eval_plot = self.curves.addPlot(row=0, col=0, title="Evaluation perplexity (lower is better)")
        self.loss_plot = self.curves.addPlot(row=1, col=0, title="Training loss")
        for p in (self.eval_plot, self.loss_plot):
            p.showGrid(x=True, y=True, alpha=0.25)
            p.setLabel("bottom", "training step")
            p.addLegend(offset=(-10, 10))
        self.tabs.addTab(self.curves, "Evaluation curves")

        bench = QWidget()
        bl = QVBoxLayout(bench)
        bl.setContentsMargins(4, 4, 4, 4)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table_note = QLabel("Green: better than the reference; red: worse.")
        bl.addWidget(self.table_note)
        bl.addWidget(self.table, 1)
        self.tabs.addTab(bench, "Results")

        self.heatmap = LayerHeatmap(value_name="SQNR change", unit="dB", levels=DIFF_LEVELS, colormap="CET-D1A")
        cmap = pg.colormap.get("CET-D1A")
        cmap.reverse()  # red = the layer got worse, blue = better
        self.heatmap.image.setLookupTable(cmap.getLookupTable(nPts=256))
        self.heatmap.colorbar.setColorMap(cmap)
        self.heatmap.missing_text = {}
        self.tabs.addTab(self.heatmap, "Layers")
        self.paths: list = []
        self.data: Any = None

    def show_comparison(self, data: Any) -> None:
        """``data``: app.library_jobs.Comparison (records, curves, table, layer diff)."""
        self.data = data
        self.paths = [r.summary.path for r in data.records]
        self.report_button.setEnabled(True)
        self.runs_label.setText("Reference: <b>%s</b>; compared: %s" % (
            data.table.runs[0], ", ".join(data.table.runs[1:])))
        self._draw_curves()
        self._fill_table()
        d = data.layers
        self.heatmap.set_table(d.layers, d.columns, np.asarray(d.values, dtype=np.float32)
                               if d.layers and d.columns else None)

    def _draw_curves(self) -> None:
        for plot, curves in ((self.eval_plot, self.data.eval_curves), (self.loss_plot, self.data.train_curves)):
            plot.clear()
            if plot.legend is not None:
                plot.legend.clear()
            for i, c in enumerate(curves):
                if not c.steps:
                    continue
                colour = PALETTE[i % len(PALETTE)]
                plot.plot(c.steps, c.values, pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=5,
                          symbolBrush=colour, symbolPen=None, name=c.label)

    def _fill_table(self) -> None:
        t = self.data.table
        self.table.clear()
        self.table.setRowCount(len(t.runs))
        self.table.setColumnCount(len(t.columns))
        self.table.setHorizontalHeaderLabels([label for _, label, _ in t.columns])
        self.table.setVerticalHeaderLabels(t.runs)
        colours = theme.status_colors()
        for i in range(len(t.runs)):
            for j, (key, _, _) in enumerate(t.columns):
                v = t.values[i].get(key)
                d = t.diffs[i].get(key)
                text = "—" if v is None else f"{v:.4g}"
                if d is not None and i > 0:
                    text += f"  ({d:+.3g})"
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                better = t.better(i, key) if i > 0 else None
                if better is not None:
                    item.setForeground(QBrush(QColor(colours["ok" if better else "error"])))
                self.table.setItem(i, j, item)

    def restyle(self) -> None:
        super().restyle()
        bg, fg, _ = theme.plot_colors()
        self.curves.setBackground(bg)
        for p in (self.eval_plot, self.loss_plot):
            for axis in ("left", "bottom"):
                p.getAxis(axis).setPen(fg)
                p.getAxis(axis).setTextPen(fg)
        self.heatmap.restyle()
        self.table_note.setStyleSheet(f"color: {theme.muted_text()};")


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
