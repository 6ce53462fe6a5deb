"""Typed events a run emits, and the sinks that receive them.

The GUI, the CLI progress bar and ``events.jsonl`` all read this one stream.
Events are plain dataclasses; ``to_dict`` gives the JSON form (with ``type``).
A sink is any callable taking an event; ``MultiSink`` fans out.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from .errors import Cancelled


@dataclass
class Event:
    time: float = field(default_factory=time.time, init=False)

    @property
    def type(self) -> str:
        return type(self).__name__

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["type"] = self.type
        return d


@dataclass
class RunStarted(Event):
    run_dir: str
    recipe: Dict[str, Any]


@dataclass
class StageStarted(Event):
    stage: str  # load | calibrate | evaluate | train | analyze | export | verify ...
    total: Optional[int] = None
    detail: str = ""


@dataclass
class Progress(Event):
    stage: str
    done: int
    total: Optional[int] = None
    eta_s: Optional[float] = None
    detail: str = ""


@dataclass
class Metric(Event):
    stage: str  # e.g. baseline, ptq, train, eval, final
    name: str  # e.g. perplexity, kl, loss, lr
    value: float
    step: Optional[int] = None


@dataclass
class LayerStats(Event):
    name: str
    format: Optional[str]
    stats: Dict[str, Any]


@dataclass
class Log(Event):
    message: str
    level: str = "info"  # info | warning


@dataclass
class StageFinished(Event):
    stage: str
    seconds: float = 0.0


@dataclass
class RunFinished(Event):
    report: Dict[str, Any]
    run_dir: str = ""


@dataclass
class RunFailed(Event):
    error: str
    kind: str = "error"  # error | cancelled
    details: str = ""


Sink = Callable[[Event], None]


class MultiSink:
    def __init__(self, sinks: Iterable[Optional[Sink]] = ()):
        self.sinks: List[Sink] = [s for s in sinks if s is not None]

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def __call__(self, event: Event) -> None:
        for sink in self.sinks:
            sink(event)


class JsonlSink:
    """Appends one JSON object per event to a file, flushed per line."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), default=_json_default)
        with self._lock:
            if not self._fh.closed:
                self._fh.write(line + "\n")
                self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_events(path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class ConsoleSink:
    """A one-line progress bar on a terminal, plain lines otherwise (logs, CI)."""

    def __init__(self, stream=None, width: int = 28):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_line = 0.0
        self._open_bar = False

    def _write(self, text: str) -> None:
        if self._open_bar:
            self.stream.write("\n")
            self._open_bar = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            now = time.monotonic()
            final = event.total is not None and event.done >= event.total
            if not self.tty and not final and now - self._last_line < 2.0:
                return
            self._last_line = now
            line = f"{event.stage:<10} {_bar(event.done, event.total, self.width)}"
            if event.detail:
                line += f"  {event.detail}"
            if event.eta_s is not None and not final:
                line += f"  eta {_fmt_seconds(event.eta_s)}"
            if self.tty:
                self.stream.write("\r" + line[:120].ljust(120))
                self.stream.flush()
                self._open_bar = not final
                if final:
                    self.stream.write("\n")
            else:
                self._write(line)
        elif isinstance(event, StageStarted):
            self._write(f"== {event.stage}" + (f": {event.detail}" if event.detail else ""))
        elif isinstance(event, Metric) and event.stage not in ("train",):
            self._write(f"   {event.stage:<9} {event.name:<16} {event.value:.6g}")
        elif isinstance(event, Log):
            self._write(("warning: " if event.level == "warning" else "") + event.message)
        elif isinstance(event, RunFailed):
            self._write(f"{'cancelled' if event.kind == 'cancelled' else 'error'}: {event.error}")


def _bar(done: int, total: Optional[int], width: int) -> str:
    if not total:
        return f"{done}"
    frac = min(1.0, done / total)
    fill = int(frac * width)
    return f"[{'#' * fill}{'.' * (width - fill)}] {done}/{total}"


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 60}:{s % 60:02d}"


class CancelToken:
    """Set from any thread; the engine checks it between batches and steps."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("the run was cancelled")


class ProgressTracker:
    """Emits Progress events with an ETA from the mean time per item."""

    def __init__(self, sink: Sink, stage: str, total: Optional[int], cancel: Optional[CancelToken] = None):
        self.sink, self.stage, self.total, self.cancel = sink, stage, total, cancel
        self.start = time.monotonic()
        self.done = 0

    def step(self, n: int = 1, detail: str = "") -> None:
        if self.cancel is not None:
            self.cancel.check()
        self.done += n
        elapsed = time.monotonic() - self.start
        eta = None
        if self.total and self.done:
            eta = elapsed / self.done * max(0, self.total - self.done)
        self.sink(Progress(self.stage, self.done, self.total, eta, detail))
