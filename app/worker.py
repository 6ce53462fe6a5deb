"""Background work for the window: engine runs and short tasks, each in its own QThread.

Nothing here touches a widget. Results leave a worker thread only through Qt
signals; the receivers live on the GUI thread, so Qt queues the calls there.

- :class:`EventBridge` is the engine sink: called on the run's thread, it
  collects events and hands them to the GUI thread in batches (a burst of
  events costs one wake-up of the event loop, not one per event).
- :class:`RunThread` runs ``engine.pipeline.run``; cancel sets the engine's
  ``CancelToken``.
- :class:`Task` runs one plain function; :class:`TaskSlot` keeps at most one
  task per purpose: starting a new one cancels the old one and its result is
  dropped.
"""

from __future__ import annotations

import inspect
import threading
import traceback
from typing import Any, Callable, List, Optional

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from engine.errors import Cancelled, LowbitError
from engine.events import CancelToken


class EventBridge(QObject):
    """Engine sink (any thread) -> ``events(list)`` on the GUI thread."""

    events = Signal(list)
    _wake = Signal()

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self._lock = threading.Lock()
        self._pending: List[Any] = []
        self._scheduled = False
        self._wake.connect(self.flush, Qt.ConnectionType.QueuedConnection)

    def __call__(self, event: Any) -> None:
        with self._lock:
            self._pending.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        self._wake.emit()

    @Slot()
    def flush(self) -> None:
        """Deliver what is pending now (also called when the run's thread ends)."""
        with self._lock:
            batch, self._pending, self._scheduled = self._pending, [], False
        if batch:
            self.events.emit(batch)


def _describe_exception(exc: BaseException) -> tuple:
    """(message for the user, details for the "Copy details" button)."""
    if isinstance(exc, LowbitError):
        return str(exc), ""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"Unexpected error: {type(exc).__name__}: {exc}", details


class RunThread(QThread):
    """Runs one recipe with ``engine.pipeline.run``; emits exactly one of the outcome signals."""

    succeeded = Signal(object)  # the report
    failed = Signal(str, str)  # message, details
    cancelled = Signal()

    def __init__(self, recipe: Any, run_dir: str, bridge: EventBridge, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.recipe, self.run_dir, self.bridge = recipe, run_dir, bridge
        self.token = CancelToken()

    def cancel(self) -> None:
        self.token.cancel()

    def run(self) -> None:
        from engine.pipeline import run

        try:
            result = run(self.recipe, sink=self.bridge, cancel=self.token, run_dir=self.run_dir)
        except Cancelled:
            self.cancelled.emit()
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the window, never kill it
            self.failed.emit(*_describe_exception(exc))
        else:
            self.succeeded.emit(result.report)


class TaskState:
    """What a task function may use: a cancel token and a progress callback (any thread)."""

    def __init__(self, task: "Task"):
        self._task = task
        self.cancel = CancelToken()

    @property
    def cancelled(self) -> bool:
        return self.cancel.cancelled

    def progress(self, done: int, total: int, text: str = "") -> None:
        self.cancel.check()
        self._task.progressed.emit(int(done), int(total), text)


class Task(QThread):
    """Runs ``fn(*args)`` (plus ``state=TaskState`` when ``fn`` accepts it) on its own thread."""

    succeeded = Signal(object)
    failed = Signal(str, str)
    progressed = Signal(int, int, str)

    def __init__(self, fn: Callable[..., Any], *args: Any, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.fn, self.args = fn, args
        self.state = TaskState(self)
        self.wants_state = "state" in inspect.signature(fn).parameters

    def cancel(self) -> None:
        self.state.cancel.cancel()

    def run(self) -> None:
        try:
            kwargs = {"state": self.state} if self.wants_state else {}
            result = self.fn(*self.args, **kwargs)
        except Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001
            if not self.state.cancelled:
                self.failed.emit(*_describe_exception(exc))
            return
        if not self.state.cancelled:
            self.succeeded.emit(result)


class TaskSlot(QObject):
    """At most one live task per purpose (loading the model, counting tokens, ...).

    ``start`` cancels the previous task; a cancelled task may still be running
    (a function cannot be stopped between its own checks), so it is kept until
    its thread ends, and its signals are disconnected so a late result is lost.
    """

    succeeded = Signal(object)
    failed = Signal(str, str)
    progressed = Signal(int, int, str)
    busy_changed = Signal(bool)

    def __init__(self, name: str, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.setObjectName(name)
        self._current: Optional[Task] = None
        self._threads: List[QThread] = []

    @property
    def busy(self) -> bool:
        return self._current is not None

    def start(self, fn: Callable[..., Any], *args: Any) -> Task:
        self.cancel()
        task = Task(fn, *args)
        task.succeeded.connect(self._on_succeeded)
        task.failed.connect(self._on_failed)
        task.progressed.connect(self.progressed)
        task.finished.connect(lambda t=task: self._reap(t))
        self._current = task
        self._threads.append(task)
        task.start()
        self.busy_changed.emit(True)
        return task

    def cancel(self) -> None:
        task, self._current = self._current, None
        if task is not None:
            task.cancel()
            for signal in (task.succeeded, task.failed, task.progressed):
                signal.disconnect()
            self.busy_changed.emit(False)

    @Slot(object)
    def _on_succeeded(self, result: Any) -> None:
        if self.sender() is self._current:
            self._current = None
            self.busy_changed.emit(False)
            self.succeeded.emit(result)

    @Slot(str, str)
    def _on_failed(self, message: str, details: str) -> None:
        if self.sender() is self._current:
            self._current = None
            self.busy_changed.emit(False)
            self.failed.emit(message, details)

    def _reap(self, task: QThread) -> None:
        if task in self._threads:
            self._threads.remove(task)
        task.deleteLater()

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Cancel and join every thread this slot started; True when all ended in time."""
        self.cancel()
        ok = True
        for thread in list(self._threads):
            ok = thread.wait(timeout_ms) and ok
        return ok

    def threads(self) -> List[QThread]:
        return list(self._threads)


class RunController(QObject):
    """Owns the run thread: start, cancel, join; forwards its signals on the GUI thread."""

    events = Signal(list)
    succeeded = Signal(object)
    failed = Signal(str, str)
    cancelled = Signal()
    running_changed = Signal(bool)

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.bridge = EventBridge(self)
        self.bridge.events.connect(self.events)
        self._thread: Optional[RunThread] = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, recipe: Any, run_dir: str) -> None:
        if self._thread is not None:
            raise RuntimeError("a run is already going; cancel it first")
        thread = RunThread(recipe, run_dir, self.bridge)
        thread.succeeded.connect(self.succeeded)
        thread.failed.connect(self.failed)
        thread.cancelled.connect(self.cancelled)
        thread.finished.connect(self._on_thread_finished)
        self._thread = thread
        thread.start()
        self.running_changed.emit(True)

    def cancel(self) -> None:
        if self._thread is not None:
            self._thread.cancel()

    @Slot()
    def _on_thread_finished(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self.bridge.flush()  # events emitted just before the end
            thread.deleteLater()
            self.running_changed.emit(False)

    def shutdown(self, timeout_ms: int = 60_000) -> bool:
        """Cancel the run and join its thread."""
        thread = self._thread
        if thread is None:
            return True
        thread.cancel()
        return thread.wait(timeout_ms)
