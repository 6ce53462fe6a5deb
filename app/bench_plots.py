"""``python -m app.bench_plots``: how long the window's plots take to redraw.

- heatmap: 200 layers x 6 formats, new values uploaded and painted;
- loss plot: one frame of the live curves holding 100,000 points per curve
  (data handed over, then painted), i.e. the cost of one redraw-timer tick.

Each number is the median of several frames, in milliseconds; frames are
painted offscreen into a pixmap of the widget's size, the same work as on screen.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List


def _median_ms(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: first paint allocates
    times: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def _settle() -> None:
    from PySide6.QtWidgets import QApplication

    for _ in range(2):
        QApplication.processEvents()


def bench_heatmap(rows: int = 200, cols: int = 6, repeats: int = 15) -> float:
    import numpy as np

    from .plots.heatmap import LayerHeatmap

    widget = LayerHeatmap()
    widget.resize(900, 700)
    widget.show()
    names = [f"model.layers.{i // 7}.{('q', 'k', 'v', 'o', 'gate', 'up', 'down')[i % 7]}_proj" for i in range(rows)]
    widget.set_table(names, [f"format{j}" for j in range(cols)])
    _settle()
    rng = np.random.default_rng(0)

    def frame():
        widget.values[:] = rng.uniform(0, 45, size=(rows, cols)).astype(np.float32)
        widget.redraw()
        widget.view.grab()

    try:
        return _median_ms(frame, repeats)
    finally:
        widget.close()
        widget.deleteLater()


def bench_loss_plot(points: int = 100_000, repeats: int = 15) -> float:
    import numpy as np

    from .plots.curves import LiveCurves

    widget = LiveCurves()
    widget.resize(1000, 700)
    widget.show()
    steps = np.arange(points, dtype=float)
    rng = np.random.default_rng(0)
    for name in ("loss", "kd_loss", "lr"):
        widget.series[name].extend(steps, rng.random(points))
        widget._dirty.add(name)
    widget.stack.setCurrentIndex(1)
    widget.redraw()
    _settle()

    def frame():
        widget.series["loss"].append(widget.series["loss"].n, 0.5)  # one more point, as in a live run
        widget._dirty.update(("loss", "kd_loss", "lr"))
        widget.redraw()
        _settle()  # range updates and downsampling run from the event loop, as in the window
        widget.graphics.grab()

    try:
        return _median_ms(frame, repeats)
    finally:
        widget.close()
        widget.deleteLater()


def run_all(repeats: int = 15) -> Dict[str, float]:
    return {
        "heatmap 200x6 redraw": bench_heatmap(repeats=repeats),
        "loss plot 100k points frame": bench_loss_plot(repeats=repeats),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.bench_plots", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from . import theme

    app = QApplication.instance() or QApplication(sys.argv[:1])
    theme.apply_theme(app, "light")
    for name, ms in run_all(args.repeats).items():
        print(f"{name:<32} {ms:8.2f} ms  (median of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
