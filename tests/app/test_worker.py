"""The thread bridge: events reach the GUI thread in batches; tasks cancel, fail and join cleanly."""

from __future__ import annotations

import threading
import time

import pytest
from PySide6.QtCore import QThread

from app.worker import EventBridge, TaskSlot
from engine.errors import DataError


def test_event_bridge_delivers_on_the_gui_thread_in_order(qtbot):
    bridge = EventBridge()
    received, threads = [], set()

    def on_events(batch):
        threads.add(QThread.currentThread())
        received.extend(batch)

    bridge.events.connect(on_events)
    worker = threading.Thread(target=lambda: [bridge(i) for i in range(5000)])
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: len(received) == 5000, timeout=5000)
    assert received == list(range(5000))
    assert threads == {QThread.currentThread()}  # the test runs on the GUI thread


def test_a_burst_of_events_costs_few_wakeups(qtbot):
    bridge = EventBridge()
    batches = []
    bridge.events.connect(batches.append)
    for i in range(1000):  # emitted from this thread with no event processing in between
        bridge(i)
    qtbot.waitUntil(lambda: sum(map(len, batches)) == 1000, timeout=2000)
    assert len(batches) == 1


def _slow(value, state=None):
    for i in range(100):
        time.sleep(0.01)
        state.progress(i, 100)  # raises Cancelled once the slot moved on
    return value


def test_a_new_task_cancels_the_old_one_and_its_result_is_dropped(qtbot):
    slot = TaskSlot("test")
    results = []
    slot.succeeded.connect(results.append)
    first = slot.start(_slow, "first")
    second = slot.start(lambda: "second")
    assert first.state.cancelled and not second.state.cancelled
    qtbot.waitUntil(lambda: results == ["second"], timeout=5000)
    assert slot.shutdown(5000)
    qtbot.waitUntil(lambda: slot.threads() == [], timeout=2000)  # both ended and were released
    qtbot.wait(50)
    assert results == ["second"]


def test_a_failing_task_reports_the_engine_message(qtbot):
    slot = TaskSlot("test")

    def bad():
        raise DataError("data.txt is empty. Choose a file with text in it.")

    with qtbot.waitSignal(slot.failed, timeout=5000) as blocker:
        slot.start(bad)
    assert blocker.args == ["data.txt is empty. Choose a file with text in it.", ""]
    assert not slot.busy
    assert slot.shutdown(5000)


def test_an_unexpected_error_carries_a_traceback(qtbot):
    slot = TaskSlot("test")
    with qtbot.waitSignal(slot.failed, timeout=5000) as blocker:
        slot.start(lambda: 1 / 0)
    message, details = blocker.args
    assert message.startswith("Unexpected error: ZeroDivisionError")
    assert "Traceback" in details
    assert slot.shutdown(5000)


def test_shutdown_joins_a_running_task(qtbot):
    slot = TaskSlot("test")
    task = slot.start(_slow, "x")
    assert task.isRunning() or not task.isFinished()
    assert slot.shutdown(5000)
    assert task.isFinished()


@pytest.mark.parametrize("value", [None, 0, [1, 2]])
def test_results_of_any_type_pass_through(qtbot, value):
    slot = TaskSlot("test")
    with qtbot.waitSignal(slot.succeeded, timeout=5000) as blocker:
        slot.start(lambda: value)
    assert blocker.args == [value]
    assert slot.shutdown(5000)
