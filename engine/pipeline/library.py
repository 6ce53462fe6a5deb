"""The run library: find run folders, read what each one says, rename and delete them safely.

A run folder is what :func:`run` writes: ``recipe.yaml``, ``events.jsonl`` and,
once the run has ended (completed, failed or cancelled), ``report.json``. The
reader is tolerant: a run still going has no report yet (its status and live
progress come from the tail of ``events.jsonl``), a run killed from outside
ends without a final event (shown as ``interrupted`` once its events are
stale), a half-written last line is skipped, and an unreadable file makes that
one run ``unreadable`` instead of failing the scan. CLI, GUI and torchrun runs
are all the same folders, so all of them appear.

A sweep folder (``sweep.json``, see :mod:`.sweep`) holds run folders; the scan
looks one level into folders that are not runs themselves.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import LowbitError

REPORT = "report.json"
EVENTS = "events.jsonl"
RECIPE = "recipe.yaml"
SWEEP = "sweep.json"
STALE_S = 600.0  # a run without a report whose events are older than this was interrupted
TAIL_BYTES = 64 * 1024  # how much of events.jsonl the live progress reads
ENDED = ("completed", "failed", "cancelled")
DTYPE_BITS = {"float32": 32, "bfloat16": 16, "float16": 16}


class LibraryError(LowbitError):
    """A rename or delete the library refuses (not a run folder, name taken, bad name)."""


@dataclass
class RunSummary:
    """One row of the library: what a run is and how it went."""

    path: str
    name: str  # folder name; "sweep/run" for runs inside a sweep folder
    status: str  # completed | failed | cancelled | running | interrupted | unreadable
    model: str = ""
    scheme: str = ""
    mode: str = ""
    kind: str = ""  # causal-lm | encoder | ...
    metric_name: str = ""  # perplexity | embedding_cosine | cosine
    metric: Optional[float] = None  # the headline metric of the final result
    baseline_metric: Optional[float] = None
    bits_per_weight: Optional[float] = None  # average over the quantized layers, scales included
    size_bytes: Optional[float] = None  # weights as stored: quantized layers at their bits, the rest at dtype
    exported_bytes: Optional[float] = None  # bytes on disk of the export, when there is one
    started: Optional[float] = None  # epoch seconds
    stage: str = ""  # live: the stage going now
    done: Optional[int] = None  # live: progress within the stage
    total: Optional[int] = None
    error: str = ""
    sweep: str = ""  # the sweep folder name, for runs inside one

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def progress_text(self) -> str:
        if self.status != "running" or not self.stage:
            return ""
        if self.total:
            return f"{self.stage} {self.done or 0}/{self.total}"
        return self.stage

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# -- reading ----------------------------------------------------------------------------------------


def is_run_folder(path: os.PathLike) -> bool:
    p = Path(path)
    return (p / RECIPE).is_file() or (p / EVENTS).is_file() or (p / REPORT).is_file()


def read_report(path: os.PathLike) -> Optional[Dict[str, Any]]:
    """report.json as a dict, None when absent; LibraryError when it is not JSON."""
    f = Path(path) / REPORT
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LibraryError(f"{f} is not readable JSON ({exc}); the run cannot be shown") from exc
    if not isinstance(data, dict):
        raise LibraryError(f"{f} is not a JSON object; the run cannot be shown")
    return data


def _parse_lines(lines: Iterable[str], want: Optional[Tuple[str, ...]] = None) -> List[Dict[str, Any]]:
    out = []
    for line in lines:
        if not line.strip() or (want and not any(f'"{t}"' in line for t in want)):
            continue
        try:
            e = json.loads(line)
        except ValueError:  # a line still being written, or a torn one
            continue
        if isinstance(e, dict):
            out.append(e)
    return out


def read_events(path: os.PathLike, types: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Every event of a run folder (or of ``types`` only), skipping lines that do not parse."""
    f = Path(path) / EVENTS
    if not f.is_file():
        return []
    want = tuple(types) if types else None
    with open(f, encoding="utf-8", errors="replace") as fh:
        events = _parse_lines(fh, want)
    return [e for e in events if not want or e.get("type") in want]


def tail_events(path: os.PathLike, n_bytes: int = TAIL_BYTES) -> List[Dict[str, Any]]:
    """The events in the last ``n_bytes`` of events.jsonl (the first, cut line is dropped)."""
    f = Path(path) / EVENTS
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            if size > n_bytes:
                fh.seek(size - n_bytes)
                fh.readline()
            data = fh.read()
    except OSError:
        return []
    return _parse_lines(data.decode("utf-8", errors="replace").splitlines())


def _first_event(path: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(path / EVENTS, encoding="utf-8", errors="replace") as fh:
            line = fh.readline()
    except OSError:
        return None
    found = _parse_lines([line])
    return found[0] if found else None


def _finite(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def headline(result: Optional[Dict[str, Any]]) -> Tuple[str, Optional[float]]:
    """(metric name, value) that sums up one result: perplexity for language models, else cosine."""
    result = result or {}
    for name in ("perplexity", "embedding_cosine", "cosine"):
        v = _finite(result.get(name))
        if v is not None:
            return name, v
    return "", None


def final_result(report: Dict[str, Any]) -> Dict[str, Any]:
    """The result the run ends with: after training when it trained, else PTQ."""
    return report.get("final") or report.get("quantized") or report.get("ptq") or {}


def _format_bits(fmt: Optional[str], in_features: int) -> Optional[float]:
    if not fmt:
        return None
    from .. import formats

    try:
        return formats.get(fmt).effective_bits(in_features)
    except Exception:  # noqa: BLE001 - a format this version does not know: no size
        return None


def weight_bits(layers: Sequence[Dict[str, Any]]) -> Optional[float]:
    """Average bits per weight over the quantized layers (weighted by their size), scales included."""
    total = bits = 0.0
    for layer in layers:
        b = _format_bits(layer.get("format"), int(layer.get("in_features") or 4096))
        n = float(layer.get("params") or 0)
        if b is not None and n:
            total += n
            bits += n * b
    return bits / total if total else None


def weights_bytes(model: Dict[str, Any], layers: Sequence[Dict[str, Any]]) -> Optional[float]:
    """Bytes of all weights: quantized layers at their format's bits, every other parameter at the dtype."""
    n_params = model.get("n_params")
    if not n_params:
        return None
    hp = DTYPE_BITS.get(str(model.get("dtype", "float32")), 32)
    total = float(n_params) * hp
    for layer in layers:
        b = _format_bits(layer.get("format"), int(layer.get("in_features") or 4096))
        if b is not None:
            total -= float(layer.get("params") or 0) * (hp - b)
    return total / 8.0


def read_run(path: os.PathLike, now: Optional[float] = None, name: Optional[str] = None) -> RunSummary:
    """The library row of one run folder; never raises for a broken run (status ``unreadable``)."""
    p = Path(path)
    s = RunSummary(path=str(p), name=name or p.name, status="running")
    try:
        report = read_report(p)
    except LibraryError as exc:
        s.status, s.error = "unreadable", str(exc)
        report = None
    first = _first_event(p)
    recipe = (first or {}).get("recipe") if (first or {}).get("type") == "RunStarted" else None
    if first:
        s.started = _finite(first.get("time"))
    if s.started is None:
        try:
            s.started = (p / RECIPE).stat().st_mtime
        except OSError:
            s.started = None
    if recipe:
        s.model = Path(str((recipe.get("model") or {}).get("path") or "")).name
        s.scheme = str((recipe.get("quant") or {}).get("scheme") or "")
        s.mode = str(recipe.get("mode") or "")
    if report is not None:
        s.status = str(report.get("status") or "completed")
        if s.status == "running":  # a report written mid-run (never by this engine) or a crash
            s.status = "interrupted"
        model = report.get("model") or {}
        s.model = str(model.get("name") or s.model)
        s.kind = str(model.get("kind") or "")
        s.scheme = str(report.get("scheme") or s.scheme)
        s.mode = str(report.get("mode") or s.mode)
        s.error = str(report.get("error") or "")
        s.metric_name, s.metric = headline(final_result(report))
        if s.metric_name:
            s.baseline_metric = _finite((report.get("baseline") or {}).get(s.metric_name))
        layers = report.get("layers") or []
        s.bits_per_weight = weight_bits(layers)
        s.size_bytes = weights_bytes(model, layers) if layers else None
        s.exported_bytes = _finite((report.get("export") or {}).get("bytes_on_disk"))
    elif s.status != "unreadable":
        _live(s, p, now if now is not None else time.time())
    return s


def _live(s: RunSummary, p: Path, now: float) -> None:
    """Status and progress of a run without a report, from the tail of its events."""
    events = tail_events(p)
    last_time = None
    for e in events:
        t = e.get("type")
        last_time = _finite(e.get("time")) or last_time
        if t == "StageStarted":
            s.stage, s.done, s.total = str(e.get("stage", "")), 0, e.get("total")
        elif t == "Progress":
            s.stage, s.done, s.total = str(e.get("stage", "")), e.get("done"), e.get("total")
        elif t == "Metric" and s.metric_name in ("", e.get("name")) and e.get("name") in (
                "perplexity", "embedding_cosine", "cosine") and e.get("stage") not in ("baseline",):
            s.metric_name, s.metric = str(e["name"]), _finite(e.get("value"))
        elif t == "RunFailed":
            s.status = "cancelled" if e.get("kind") == "cancelled" else "failed"
            s.error = str(e.get("error", ""))
        elif t == "RunFinished":
            s.status = "completed"
    if s.status == "running":
        try:
            last_time = max(last_time or 0.0, (p / EVENTS).stat().st_mtime)
        except OSError:
            pass
        if last_time is None or now - last_time > STALE_S:
            s.status = "interrupted"


def find_runs(folders: Iterable[os.PathLike]) -> List[Tuple[Path, str, str]]:
    """(run folder, display name, sweep name) for every run directly in ``folders`` or in a sweep folder there."""
    found: List[Tuple[Path, str, str]] = []
    seen = set()
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.is_dir():
            continue
        if is_run_folder(root):
            entries = [root]
            root = root.parent
        else:
            try:
                entries = sorted(e for e in root.iterdir() if e.is_dir())
            except OSError:
                continue
        for entry in entries:
            if is_run_folder(entry):
                key = entry.resolve()
                if key not in seen:
                    seen.add(key)
                    found.append((entry, entry.name, ""))
                continue
            try:
                inner = sorted(e for e in entry.iterdir() if e.is_dir()) if (entry / SWEEP).is_file() else []
            except OSError:
                inner = []
            for sub in inner:
                if is_run_folder(sub) and sub.resolve() not in seen:
                    seen.add(sub.resolve())
                    found.append((sub, f"{entry.name}/{sub.name}", entry.name))
    return found


def scan_runs(folders: Iterable[os.PathLike], state=None, pause_s: float = 0.0) -> List[RunSummary]:
    """Every run in ``folders``, newest first. ``state`` (optional): ``progress(done, total, text)``.

    ``pause_s``: a sleep after each run folder, which hands the interpreter lock to other threads (a
    window's event loop scanning in the background stays fluid at the cost of ``pause_s`` per run).
    """
    found = find_runs(folders)
    now = time.time()
    rows = []
    for i, (path, name, sweep) in enumerate(found):
        if state is not None and i % 16 == 0:
            state.progress(i, len(found), "reading run folders")
        row = read_run(path, now=now, name=name)
        row.sweep = sweep
        rows.append(row)
        if pause_s:
            time.sleep(pause_s)
    rows.sort(key=lambda r: -(r.started or 0.0))
    return rows


# -- one run in full --------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """Everything the Results step shows for a past run: its report and what its events recorded."""

    summary: RunSummary
    report: Dict[str, Any]  # {} when the run ended before writing one
    metrics: List[Tuple[str, str, float, Optional[int]]] = field(default_factory=list)  # stage, name, value, step
    layer_stats: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    logs: List[Tuple[str, str]] = field(default_factory=list)  # message, level
    layer_names: List[str] = field(default_factory=list)


def load_run(path: os.PathLike) -> RunRecord:
    """Read a run folder in full (report and events) for showing it as it was."""
    p = Path(path)
    if not is_run_folder(p):
        raise LibraryError(f"{p} is not a run folder (no recipe.yaml, events.jsonl or report.json)")
    summary = read_run(p)
    try:
        report = read_report(p) or {}
    except LibraryError:
        report = {}
    rec = RunRecord(summary, report)
    for e in read_events(p, ("Metric", "LayerStats", "Log", "RunFailed")):
        t = e["type"]
        if t == "Metric" and _finite(e.get("value")) is not None:
            step = e.get("step")
            rec.metrics.append((str(e.get("stage", "")), str(e.get("name", "")), float(e["value"]),
                                int(step) if isinstance(step, (int, float)) else None))
        elif t == "LayerStats":
            rec.layer_stats.append((str(e.get("name", "")), dict(e.get("stats") or {})))
        elif t == "Log":
            rec.logs.append((str(e.get("message", "")), str(e.get("level", "info"))))
        elif t == "RunFailed":
            rec.logs.append((str(e.get("error", "")), "error" if e.get("kind") == "error" else "info"))
    plan = report.get("plan") or report.get("layers") or []
    rec.layer_names = [str(x.get("name")) for x in plan if x.get("name")] or [n for n, _ in rec.layer_stats]
    return rec


# -- changing the library ---------------------------------------------------------------------------


def _check_run(path: Path) -> None:
    if not path.is_dir() or not is_run_folder(path):
        raise LibraryError(f"{path} is not a run folder (no recipe.yaml, events.jsonl or report.json); "
                           "the library only renames and deletes run folders")


def rename_run(path: os.PathLike, new_name: str) -> Path:
    """Rename a run folder within its parent; returns the new path."""
    p = Path(path)
    _check_run(p)
    new_name = new_name.strip()
    if not new_name or new_name in (".", "..") or "/" in new_name or "\\" in new_name or "\0" in new_name:
        raise LibraryError(f"'{new_name}' is not a usable folder name; use letters, digits, '-', '_' or '.'")
    target = p.parent / new_name
    if target.exists():
        raise LibraryError(f"{target} already exists; choose another name")
    p.rename(target)
    return target


def delete_run(path: os.PathLike) -> None:
    """Delete one run folder and everything in it (the caller has asked the user)."""
    p = Path(path)
    _check_run(p)
    shutil.rmtree(p)
