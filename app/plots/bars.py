"""A small bar chart: one bar per result (original, PTQ, QAT / QAD), value written on top."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from .. import theme


class BarChart(pg.PlotWidget):
    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.showGrid(y=True, alpha=0.25)
        self.bars: Optional[pg.BarGraphItem] = None
        self.texts: List[pg.TextItem] = []
        self.labels: List[str] = []
        self.values: List[float] = []
        self.restyle()

    def set_bars(self, labels: Sequence[str], values: Sequence[Optional[float]], colors: Sequence[str],
                 title: str = "", fmt: str = "{:.4g}", relative_to_first: bool = False) -> None:
        """One bar per label; with ``relative_to_first`` each later bar also says its change from the first."""
        self.clear_bars()
        self.labels = list(labels)
        self.values = [float("nan") if v is None else float(v) for v in values]
        self.setTitle(title, color=theme.plot_colors()[1])
        x = np.arange(len(self.labels), dtype=float)
        heights = np.array([v if math.isfinite(v) else 0.0 for v in self.values])
        self.bars = pg.BarGraphItem(x=x, height=heights, width=0.6, brushes=[pg.mkBrush(c) for c in colors],
                                    pens=[pg.mkPen(None)] * len(x))
        self.addItem(self.bars)
        fg = theme.plot_colors()[1]
        base = self.values[0] if self.values else float("nan")
        for i, (xi, v) in enumerate(zip(x, self.values)):
            label = fmt.format(v) if math.isfinite(v) else "—"
            if relative_to_first and i > 0 and math.isfinite(v) and math.isfinite(base) and base != 0:
                label += f"  ({100 * (v - base) / abs(base):+.2f} %)"
            text = pg.TextItem(label, color=fg, anchor=(0.5, 1.1))
            text.setPos(xi, v if math.isfinite(v) else 0.0)
            self.addItem(text)
            self.texts.append(text)
        self.getAxis("bottom").setTicks([[(i, label) for i, label in enumerate(self.labels)], []])
        top = max([h for h in heights if h > 0], default=1.0)
        self.setXRange(-0.6, len(x) - 0.4, padding=0)
        self.setYRange(0, top * 1.18, padding=0)

    def clear_bars(self) -> None:
        if self.bars is not None:
            self.removeItem(self.bars)
            self.bars = None
        for t in self.texts:
            self.removeItem(t)
        self.texts = []

    def restyle(self) -> None:
        bg, fg, _ = theme.plot_colors()
        self.setBackground(bg)
        for axis in ("left", "bottom"):
            ax = self.getAxis(axis)
            ax.setPen(fg)
            ax.setTextPen(fg)
