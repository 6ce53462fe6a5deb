"""A layers x columns heatmap: fixed colormap, fixed levels, a colour bar, hover values, click to select.

Rows are layers (top to bottom in model order), columns are formats or
metrics. Missing values are NaN and show as the background (not computed).
Levels never change with the data, so a colour means the same value in every
run and no redraw pays for auto-levelling.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtWidgets import QToolTip, QVBoxLayout, QWidget

from .. import theme

MAX_ROW_LABELS = 48


def short_names(names: Sequence[str]) -> List[str]:
    """Drop the dotted prefix every name shares (``model.layers.``) so labels stay short."""
    if len(names) < 2:
        return list(names)
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]


class _Image(pg.ImageItem):
    """ImageItem that reports the cell under the mouse and clicked cells."""

    hovered = Signal(int, int, object)  # row, col, screen position (QPointF); row -1 = left
    clicked = Signal(int, int)

    def __init__(self):
        super().__init__(axisOrder="row-major")
        self.setAcceptHoverEvents(True)

    def _cell(self, pos) -> Tuple[int, int]:
        return int(math.floor(pos.y())), int(math.floor(pos.x()))

    def hoverEvent(self, ev):
        if ev.isExit():
            self.hovered.emit(-1, -1, None)
            return
        row, col = self._cell(ev.pos())
        self.hovered.emit(row, col, ev.screenPos())

    def mouseClickEvent(self, ev):
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            row, col = self._cell(ev.pos())
            self.clicked.emit(row, col)


class LayerHeatmap(QWidget):
    """``set_table(rows, columns, values)``; ``set_value(row, column, value)`` fills one cell."""

    layer_clicked = Signal(str)
    cell_clicked = Signal(str, str)

    def __init__(self, title: str = "", unit: str = "dB", levels: Tuple[float, float] = (0.0, 45.0),
                 colormap: str = theme.HEATMAP_COLORMAP, value_name: str = "weight SQNR",
                 parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.unit, self.levels, self.value_name = unit, levels, value_name
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.view = pg.GraphicsLayoutWidget()
        layout.addWidget(self.view)
        self.plot = self.view.addPlot(row=0, col=0, title=title)
        self.plot.invertY(True)
        self.plot.setMouseEnabled(x=False, y=True)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.getViewBox().setDefaultPadding(0.0)
        self.image = _Image()
        self.plot.addItem(self.image)
        cmap = pg.colormap.get(colormap)
        self.image.setLookupTable(cmap.getLookupTable(nPts=256))
        self.colorbar = pg.ColorBarItem(values=levels, colorMap=cmap, interactive=False, width=14,
                                        label=f"{value_name} ({unit})")
        self.colorbar.setImageItem(self.image, insert_in=self.plot)
        self.rows: List[str] = []
        self.columns: List[str] = []
        self.values = np.full((0, 0), np.nan, dtype=np.float32)
        self.selected_row: Optional[int] = None
        self.missing_text: dict = {}  # column -> what NaN means there (default: not computed)
        self.selection = pg.QtWidgets.QGraphicsRectItem()
        self.selection.setZValue(10)
        self.selection.setVisible(False)
        self.plot.addItem(self.selection)
        self.divider = pg.InfiniteLine(angle=90, movable=False)
        self.divider.setZValue(9)
        self.divider.setVisible(False)
        self.plot.addItem(self.divider)
        self.image.hovered.connect(self._on_hover)
        self.image.clicked.connect(self._on_click)
        self._pending = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(50)  # cells filled in a burst redraw once
        self._timer.timeout.connect(self.redraw)
        self.restyle()

    # -- data ----------------------------------------------------------------------------
    def set_table(self, rows: Sequence[str], columns: Sequence[str], values=None) -> None:
        self.rows, self.columns = list(rows), list(columns)
        shape = (len(self.rows), len(self.columns))
        self.values = (np.full(shape, np.nan, dtype=np.float32) if values is None
                       else np.asarray(values, dtype=np.float32).reshape(shape))
        self._set_ticks()
        self.selected_row = None
        self.selection.setVisible(False)
        self.redraw()
        self.plot.getViewBox().setRange(xRange=(0, max(1, shape[1])), yRange=(0, max(1, shape[0])), padding=0)

    def set_divider(self, after_column: Optional[int]) -> None:
        """A vertical gap after column ``after_column`` (e.g. between this run and the compared formats)."""
        self.divider.setVisible(after_column is not None)
        if after_column is not None:
            self.divider.setValue(after_column + 1)

    def set_column(self, column: str, values_by_row: dict) -> None:
        """Fill one column from ``{row name: value}``, adding the column if new."""
        if column not in self.columns:
            self.set_table(self.rows, self.columns + [column],
                           np.hstack([self.values, np.full((len(self.rows), 1), np.nan, np.float32)]))
        c = self.columns.index(column)
        for name, value in values_by_row.items():
            if name in self.rows:
                self.values[self.rows.index(name), c] = value
        self.schedule_redraw()

    def set_value(self, row: str, column: str, value: float) -> None:
        self.set_column(column, {row: value})

    def value(self, row: int, col: int) -> float:
        return float(self.values[row, col])

    def schedule_redraw(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:
        """Upload the values to the image (levels fixed, no auto-levelling)."""
        if self.values.size == 0:
            self.image.clear()
            return
        finite = np.where(np.isfinite(self.values) | np.isnan(self.values), self.values,
                          np.float32(self.levels[1]))  # +inf (exact) shows as the best colour
        self.image.setImage(finite, levels=self.levels, autoLevels=False)
        self.image.setRect(0, 0, len(self.columns), len(self.rows))

    # -- axes ----------------------------------------------------------------------------
    def _set_ticks(self) -> None:
        labels = short_names(self.rows)
        every = max(1, math.ceil(len(labels) / MAX_ROW_LABELS))
        self.plot.getAxis("left").setTicks([[(i + 0.5, labels[i]) for i in range(0, len(labels), every)], []])
        self.plot.getAxis("bottom").setTicks([[(j + 0.5, c) for j, c in enumerate(self.columns)], []])

    # -- mouse ---------------------------------------------------------------------------
    def describe(self, row: int, col: int) -> str:
        if not (0 <= row < len(self.rows) and 0 <= col < len(self.columns)):
            return ""
        v = self.values[row, col]
        missing = self.missing_text.get(self.columns[col], "not computed")
        text = missing if np.isnan(v) else ("exact (no error)" if np.isinf(v) else f"{v:.2f} {self.unit}")
        return f"{self.rows[row]}\n{self.columns[col]}: {self.value_name} {text}"

    def _on_hover(self, row: int, col: int, screen_pos) -> None:
        text = self.describe(row, col)
        if not text or screen_pos is None:
            QToolTip.hideText()
            return
        QToolTip.showText(QPoint(int(screen_pos.x()), int(screen_pos.y())), text, self.view)

    def _on_click(self, row: int, col: int) -> None:
        if not (0 <= row < len(self.rows) and 0 <= col < len(self.columns)):
            return
        self.select_row(row)
        self.layer_clicked.emit(self.rows[row])
        self.cell_clicked.emit(self.rows[row], self.columns[col])

    def select_row(self, row: Optional[int]) -> None:
        self.selected_row = row
        if row is None:
            self.selection.setVisible(False)
            return
        self.selection.setRect(0, row, len(self.columns), 1)
        self.selection.setVisible(True)

    def restyle(self) -> None:
        bg, fg, grid = theme.plot_colors()
        self.view.setBackground(bg)
        self.plot.getViewBox().setBackgroundColor(grid)  # NaN cells show this: "not computed"
        for axis in ("left", "bottom"):
            ax = self.plot.getAxis(axis)
            ax.setPen(fg)
            ax.setTextPen(fg)
        self.colorbar.axis.setPen(fg)
        self.colorbar.axis.setTextPen(fg)
        self.colorbar.getAxis("left").setLabel(f"{self.value_name} ({self.unit})", color=fg)
        self.selection.setPen(pg.mkPen(fg, width=2))
        self.divider.setPen(pg.mkPen(bg, width=4))
        self.selection.setBrush(pg.mkBrush(None))
