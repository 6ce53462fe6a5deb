"""The collector guard: cyclic garbage made anywhere is freed on the GUI thread."""

from __future__ import annotations

import gc
import threading

from app.gcguard import GuiThreadCollector


class _Tracked:
    """Part of a reference cycle; records the thread that finally frees it."""

    freed_on: list = []

    def __init__(self):
        self.me = self  # a cycle: only the cyclic collector can free this

    def __del__(self):
        _Tracked.freed_on.append(threading.get_ident())


def _churn():
    keep = []
    for i in range(200_000):  # net container allocations well past gen-0's threshold, many times over
        keep.append([i])
        if len(keep) > 5_000:
            keep.clear()


def test_cycles_are_freed_on_the_gui_thread_while_a_worker_allocates(qtbot, qapp):
    gc.collect()
    # this module's autouse fixture already guards; a second, inner guard checks start/stop on its own
    outer_enabled = gc.isenabled()
    guard = GuiThreadCollector(qapp, interval_ms=20)
    guard.start()
    assert not gc.isenabled()
    _Tracked.freed_on.clear()
    _Tracked()
    worker = threading.Thread(target=_churn)
    worker.start()
    worker.join()
    assert _Tracked.freed_on == [], "the worker thread ran the collector"
    qtbot.waitUntil(lambda: bool(_Tracked.freed_on), timeout=5_000)
    assert _Tracked.freed_on == [threading.get_ident()]
    assert guard.collections >= 1
    guard.stop()
    assert gc.isenabled() == outer_enabled


def test_without_the_guard_the_allocating_worker_collects(qapp):
    """Why the guard exists: with automatic collection on, whichever thread allocates runs the collector."""
    gc.collect()
    was = gc.isenabled()
    gc.enable()
    try:
        _Tracked.freed_on.clear()
        _Tracked()
        seen = {}
        worker = threading.Thread(target=lambda: (_churn(), seen.setdefault("id", threading.get_ident())))
        worker.start()
        worker.join()
    finally:
        if not was:
            gc.disable()
    assert _Tracked.freed_on == [seen["id"]]
