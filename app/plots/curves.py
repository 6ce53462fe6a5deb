"""Live training curves: loss, evaluation perplexity, learning rate.

Points go into preallocated buffers as events arrive; a GUI-thread timer
redraws only the curves that changed, at a steady cadence (``fps``), however
fast the run emits. Long curves stay cheap through clip-to-view and peak
downsampling.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QLabel, QStackedLayout, QWidget

from .. import theme
from .buffers import Series

# plot key -> (title, y label, [(series key, legend text)])
PLOTS: Dict[str, Tuple[str, str, List[Tuple[str, str]]]] = {
    "loss": ("Training loss", "loss", [("loss", "total"), ("task_loss", "task (next token)"),
                                       ("kd_loss", "distillation"), ("hidden_loss", "hidden-state alignment"),
                                       ("embedding_loss", "sentence embedding"),
                                       ("scale_penalty", "scale penalty")]),
    "perplexity": ("Evaluation: perplexity (lower is better) or sentence-embedding cosine (higher)", "metric",
                   [("perplexity", "perplexity"), ("embedding_cosine", "embedding cosine")]),
    "lr": ("Learning rate", "lr", [("lr", "learning rate")]),
    "kd_alpha": ("Distillation weight (alpha), when annealed", "alpha", [("kd_alpha", "alpha")]),
}
SERIES_PLOT = {s: plot for plot, (_, _, series) in PLOTS.items() for s, _ in series}
# plots shown only once a run sends their series (the alpha curve exists only when alpha is annealed)
ON_DEMAND = {"kd_alpha"}
DASHED = {"task_loss", "kd_loss", "hidden_loss", "embedding_loss", "scale_penalty"}
# Wide and dashed pens make Qt stroke every segment: past this many points curves are drawn 1 px wide.
THICK_LIMIT = 4000


def _pen(name: str, thick: bool):
    style = Qt.PenStyle.DashLine if name in DASHED else Qt.PenStyle.SolidLine
    return pg.mkPen(theme.SERIES.get(name, "#888888"), width=2 if thick else 1, style=style)


class LiveCurves(QWidget):
    def __init__(self, fps: float = 15.0, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.stack = QStackedLayout(self)
        self.placeholder = QLabel("Loss curves appear here while QAT or QAD trains.\n"
                                  "A PTQ run has no training steps: see Layers and Benchmark.")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.graphics = pg.GraphicsLayoutWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self.graphics)

        self.plots: Dict[str, pg.PlotItem] = {}
        self.series: Dict[str, Series] = {}
        self.curves: Dict[str, pg.PlotDataItem] = {}
        self.references: Dict[str, pg.InfiniteLine] = {}
        self.legend_text: Dict[str, str] = {}
        self.in_legend: set = set()  # a curve joins the legend with its first point
        self._rows: Dict[str, int] = {}
        self.shown: set = {key for key in PLOTS if key not in ON_DEMAND}  # plots in the layout now
        first = None
        for row, (key, (title, ylabel, members)) in enumerate(PLOTS.items()):
            plot = pg.PlotItem(title=title)
            self._rows[key] = row
            if key not in ON_DEMAND:
                self.graphics.addItem(plot, row=row, col=0)
            plot.setClipToView(True)
            plot.setDownsampling(auto=True, mode="peak")
            plot.showGrid(x=True, y=True, alpha=0.25)
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setStyle(maxTickLevel=0)  # grid on major ticks only: minor lines cost 2x a frame
            plot.setLabel("bottom", "step")
            plot.addLegend(offset=(-10, 8))
            if first is None:
                first = plot
            else:
                plot.setXLink(first)
            self.plots[key] = plot
            for name, legend in members:
                # the parts of the loss dashed over the solid total, so equal curves stay visible
                curve = plot.plot(pen=_pen(name, thick=True), skipFiniteCheck=True)
                curve.opts["autoDownsampleFactor"] = 1.0  # peak mode: a min and a max per pixel column
                self.curves[name] = curve
                self.series[name] = Series()
                self.legend_text[name] = legend
        self.graphics.ci.layout.setRowStretchFactor(0, 3)
        self.graphics.ci.layout.setRowStretchFactor(1, 2)
        self.graphics.ci.layout.setRowStretchFactor(2, 1)

        self._dirty: set = set()
        self._dirty_refs: set = set()
        self.timer = QTimer(self)
        self.timer.setInterval(max(1, int(1000 / fps)))
        self.timer.timeout.connect(self.redraw)
        self.frames = 0
        self.restyle()

    # -- data ----------------------------------------------------------------------------
    def add(self, name: str, step: float, value: float) -> None:
        series = self.series.get(name)
        if series is None:
            return
        series.append(step, value)
        self._dirty.add(name)
        if self.stack.currentIndex() == 0:
            self.stack.setCurrentIndex(1)

    def set_reference(self, label: str, value: Optional[float], color: str) -> None:
        """A dashed horizontal line on the perplexity plot (original / PTQ values)."""
        old = self.references.pop(label, None)
        if old is not None:
            self.plots["perplexity"].removeItem(old)
        if value is None:
            return
        line = pg.InfiniteLine(pos=value, angle=0, movable=False,
                               pen=pg.mkPen(color, width=1.5, style=Qt.PenStyle.DashLine),
                               label=f"{label} {value:.4g}",
                               labelOpts={"position": 0.05, "color": color, "anchors": [(0, 1), (0, 1)]})
        self.plots["perplexity"].addItem(line)
        self.references[label] = line
        self._dirty_refs.add("perplexity")

    def _fit_perplexity(self) -> None:
        """Reference lines do not count for auto-range: fit the y range to them and the curve."""
        values = [line.value() for line in self.references.values()]
        for key in ("perplexity", "embedding_cosine"):
            x, y = self.series[key].view()
            if len(y):
                values += [float(y.min()), float(y.max())]
        if values:
            lo, hi = min(values), max(values)
            pad = max(1e-9, 0.25 * (hi - lo), 1e-3 * abs(hi))
            self.plots["perplexity"].setYRange(lo - pad, hi + pad, padding=0)

    def clear(self) -> None:
        for name, series in self.series.items():
            series.clear()
            self.curves[name].setData([], [])
        for label in list(self.references):
            self.set_reference(label, None, "")
        for name in self.in_legend:
            self.plots[SERIES_PLOT[name]].legend.removeItem(self.curves[name])
        self.in_legend.clear()
        for key in ON_DEMAND & self.shown:
            self.graphics.removeItem(self.plots[key])
            self.shown.discard(key)
        self._dirty.clear()
        self._dirty_refs.clear()
        self.stack.setCurrentIndex(0)

    # -- drawing -------------------------------------------------------------------------
    def set_live(self, live: bool) -> None:
        if live:
            self.timer.start()
        else:
            self.timer.stop()
            self.redraw()

    def redraw(self) -> None:
        if not self._dirty and not self._dirty_refs:
            return
        for name in self._dirty:
            x, y = self.series[name].view()
            curve = self.curves[name]
            thick = len(x) <= THICK_LIMIT
            if curve.opts["pen"].width() != (2 if thick else 1):
                curve.setPen(_pen(name, thick))
            curve.setData(x, y)
            key = SERIES_PLOT[name]
            if key not in self.shown and len(x):
                self.graphics.addItem(self.plots[key], row=self._rows[key], col=0)
                self.shown.add(key)
            if name not in self.in_legend:
                self.plots[SERIES_PLOT[name]].legend.addItem(self.curves[name], self.legend_text[name])
                self.in_legend.add(name)
        if "perplexity" in self._dirty or "perplexity" in self._dirty_refs:
            self._fit_perplexity()
        self._dirty.clear()
        self._dirty_refs.clear()
        self.frames += 1

    def restyle(self) -> None:
        bg, fg, _ = theme.plot_colors()
        self.graphics.setBackground(bg)
        self.placeholder.setStyleSheet(f"color: {theme.muted_text()};")
        for plot in self.plots.values():
            plot.setTitle(plot.titleLabel.text, color=fg)
            for axis in ("left", "bottom"):
                ax = plot.getAxis(axis)
                ax.setPen(fg)
                ax.setTextPen(fg)
            if plot.legend is not None:
                plot.legend.setLabelTextColor(fg)
                for _, label in plot.legend.items:
                    label.setText(label.text, color=fg)
