"""Python's cyclic garbage collector, run on the GUI thread only.

Left to itself, the collector runs in whichever thread happens to allocate
when a generation fills up: often the engine's worker thread. If the garbage
it finds holds a Qt object (a closed dialog, a menu, a widget caught in a
reference cycle), that object's C++ destructor then runs on the worker thread
while the GUI thread may be tearing down its parent. The two block on each
other (Qt's object mutex on one side, the GIL on the other) and the window
freezes for good. We saw exactly that: a worker building a model on the meta
device collected an old window's menu while the GUI thread deleted it.

The guard turns automatic collection off and runs it from a timer on the GUI
thread instead, at the same thresholds Python would use, so every Qt object
dies in the thread that owns it. Stopping the guard collects once more and
gives the automatic collector back.
"""

from __future__ import annotations

import gc
from typing import Optional

from PySide6.QtCore import QObject, QTimer

_CHECK_MS = 250


class GuiThreadCollector(QObject):
    """Owns the collection schedule while started; create and start it on the GUI thread."""

    def __init__(self, parent: Optional[QObject] = None, interval_ms: int = _CHECK_MS) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.check)
        self._was_enabled = True
        self.collections = 0

    @property
    def active(self) -> bool:
        return self._timer.isActive()

    def start(self) -> None:
        if self.active:
            return
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        gc.freeze()  # what exists now (imports, the window) is long-lived: later collections skip it
        self._timer.start()

    def stop(self) -> None:
        if not self.active:
            return
        self._timer.stop()
        gc.unfreeze()
        gc.collect()
        if self._was_enabled:
            gc.enable()

    def check(self) -> None:
        """Collect what was made since the last tick; the older generations as often as Python would.

        The youngest generation is collected on every tick that saw new
        container objects (its allocation count can fall back under the
        threshold before a tick, so the threshold is no guide for it); each
        older one when the collections of the one below it reach Python's
        threshold, as the automatic collector does.
        """
        counts = gc.get_count()
        thresholds = gc.get_threshold()
        generation = -1
        if counts[0] > 0:
            generation = 0
        for older in (1, 2):
            if thresholds[older] and counts[older] >= thresholds[older]:
                generation = older
        if generation >= 0:
            gc.collect(generation)
            self.collections += 1


_installed: Optional[GuiThreadCollector] = None


def install(app: QObject) -> GuiThreadCollector:
    """Start the guard for the application (once; later calls return the same guard)."""
    global _installed
    if _installed is None or not _installed.active:
        _installed = GuiThreadCollector(app)
        _installed.start()
    return _installed
