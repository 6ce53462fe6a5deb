"""Helpers for the window tests (imported by the test modules)."""

from __future__ import annotations

from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

# Small and quick: the tiny models see 64-token samples.
FAST_RECIPE = {
    "data.seq_len": 64,
    "data.batch_size": 2,
    "data.calib_batches": 4,
    "data.eval_batches": 2,
}


def apply_fast(window, **extra):
    for key, value in {**FAST_RECIPE, **extra}.items():
        window.state.set(key, value)


def load_model(qtbot, window, path, timeout=90_000):
    window.open_model(str(path))
    qtbot.waitUntil(lambda: window.model_info is not None and not window.model_task.busy, timeout=timeout)


def choose_data(qtbot, window, train, eval_path=None, timeout=60_000):
    window.set_data("train", str(train))
    if eval_path is not None:
        window.set_data("eval", str(eval_path))
    qtbot.waitUntil(lambda: window.readiness()[0], timeout=timeout)


def wait_run_end(qtbot, window, timeout=120_000):
    qtbot.waitUntil(lambda: not window.runner.running, timeout=timeout)


def screenshot(qtbot, widget, name: str) -> Path:
    """Save ``widget`` as test-artifacts/screenshots/<name>.png.

    Rendered twice: pyqtgraph sizes its axes to their labels while painting, so
    the first frame after new data can lay out once more.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    widget.grab()
    qtbot.wait(30)
    assert widget.grab().save(str(path)), f"could not save {path}"
    return path


def image_is_not_blank(path: Path) -> bool:
    from PySide6.QtGui import QImage

    img = QImage(str(path))
    if img.isNull() or img.width() < 100:
        return False
    colours = {img.pixel(x, y) for x in range(0, img.width(), 17) for y in range(0, img.height(), 17)}
    return len(colours) > 8


class GapProbe:
    """A 10 ms timer on the GUI thread that records the time between its ticks (the GUI's stalls)."""

    def __init__(self):
        import time

        from PySide6.QtCore import QTimer

        self._clock = time.perf_counter
        self.gaps = []
        self._last = self._clock()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self):
        now = self._clock()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self):
        self._last = self._clock()
        self.timer.start()

    def stop(self):
        self.timer.stop()
