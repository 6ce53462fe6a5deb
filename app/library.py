"""Wiring of the Runs, Compare and Sweep steps: panel intents -> background tasks -> panels.

The window owns one :class:`LibraryController`; it keeps the main window's own
wiring short. Every slot here only moves data: scanning, reading, deleting,
comparing and sweeping run on :class:`app.worker.TaskSlot` threads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List, Optional

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox

from engine.pipeline.sweep import SweepSpec, plan_runs

from . import jobs, library_jobs
from .settings import LIBRARY_DIRS, RUNS_DIR
from .worker import TaskSlot

LIVE_MS = 2000  # rescan cadence while a run in the library is still going


class LibraryController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.w = window
        self.scan_task = TaskSlot("library-scan", self)
        self.open_task = TaskSlot("library-open", self)
        self.edit_task = TaskSlot("library-edit", self)
        self.compare_task = TaskSlot("library-compare", self)
        self.report_task = TaskSlot("library-report", self)
        self.sweep_task = TaskSlot("sweep", self)
        self.trade_task = TaskSlot("sweep-trade-off", self)
        self.live = QTimer(self)
        self.live.setInterval(LIVE_MS)
        self.live.timeout.connect(self.rescan)
        self.trade: Optional[library_jobs.TradeOff] = None
        lib, cmp_, sw = window.library_panel, window.compare_panel, window.sweep_panel
        lib.rescan_requested.connect(self.rescan)
        lib.add_folder_requested.connect(self.choose_folder)
        lib.open_requested.connect(self.open_run)
        lib.compare_requested.connect(self.compare)
        lib.rename_requested.connect(self.ask_rename)
        lib.delete_requested.connect(self.ask_delete)
        lib.report_requested.connect(self.ask_report)
        cmp_.report_requested.connect(self.ask_report)
        sw.start_requested.connect(self.start_sweep)
        sw.cancel_requested.connect(self.sweep_task.cancel)
        sw.cancel_requested.connect(lambda: sw.sweep_ended("Sweep cancelled; the finished runs stay in its folder."))
        sw.export_requested.connect(self.export_run)
        sw.report_requested.connect(lambda folder: self.ask_report([folder]))
        sw.target_changed.connect(self._show_trade_off)
        self.scan_task.progressed.connect(lambda d, t, _: lib.show_scan_progress(d, t))
        self.scan_task.succeeded.connect(self._on_scanned)
        self.scan_task.failed.connect(lambda m, d: self._failed("Could not read the runs", m, d))
        self.open_task.succeeded.connect(self._on_opened)
        self.open_task.failed.connect(lambda m, d: self._failed("Could not open the run", m, d))
        self.edit_task.succeeded.connect(lambda _: self.rescan())
        self.edit_task.failed.connect(lambda m, d: (self._failed("Could not change the run", m, d), self.rescan()))
        self.compare_task.succeeded.connect(self._on_compared)
        self.compare_task.failed.connect(lambda m, d: self._failed("Could not compare the runs", m, d))
        self.report_task.succeeded.connect(lambda p: self.w._idle(f"Wrote the report {p}."))
        self.report_task.failed.connect(lambda m, d: self._failed("Could not write the report", m, d))
        self.sweep_task.progressed.connect(sw.show_progress)
        self.sweep_task.succeeded.connect(self._on_swept)
        self.sweep_task.failed.connect(lambda m, d: (sw.sweep_ended("The sweep failed."),
                                                     self._failed("The sweep failed", m, d)))
        self.trade_task.succeeded.connect(self._on_trade_off)
        self.trade_task.failed.connect(lambda m, d: self._failed("Could not read the sweep", m, d))

    # -- folders and scanning ------------------------------------------------------------------
    def folders(self) -> List[str]:
        runs = self.w.run_panel.run_folder.text() or self.w.settings.get(RUNS_DIR)
        extra = [f for f in self.w.settings.get(LIBRARY_DIRS) if f]
        out = []
        for f in [runs] + extra:
            f = str(Path(f).expanduser())
            if f not in out:
                out.append(f)
        return out

    def add_folder(self, path: str) -> None:
        extra = [f for f in self.w.settings.get(LIBRARY_DIRS) if f]
        if path not in extra:
            self.w.settings.set(LIBRARY_DIRS, extra + [path])
        self.rescan()

    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self.w, "Add a folder of runs", str(Path.home()))
        if path:
            self.add_folder(path)

    def rescan(self) -> None:
        """Read the folders again in the background (a scan still going is dropped for the new one)."""
        folders = self.folders()
        self.w.library_panel.set_folders(folders)
        self.scan_task.start(library_jobs.scan, folders)

    def _on_scanned(self, rows: list) -> None:
        self.w.library_panel.show_scan_progress(1, 1)
        self.w.library_panel.show_runs(rows)
        if any(r.status == "running" for r in rows):
            self.live.start()
        else:
            self.live.stop()

    # -- one run --------------------------------------------------------------------------------
    def open_run(self, path: str) -> None:
        self.w._busy(f"Opening {Path(path).name}…")
        self.open_task.start(library_jobs.open_run, path)

    def _on_opened(self, rec) -> None:
        w, s = self.w, rec.summary
        panel = w.results_panel
        panel.run_started(rec.layer_names, s.scheme or "the scheme", s.mode or "ptq")
        for stage, name, value, step in rec.metrics:
            panel.add_metric(stage, name, value, step)
        for name, stats in rec.layer_stats:
            panel.layer_stats(name, stats)
        if rec.report.get("ptq") or rec.report.get("layers"):
            panel.show_report(rec.report)
        panel.log.add(f"opened run folder {s.path} ({s.status})")
        for message, level in rec.logs:
            panel.log.add(message, level)
        panel.run_ended()
        if s.status == "completed":
            w.last_report, w.run_dir = rec.report, s.path
            w.export_panel.show_report(rec.report)
        w._idle(f"Showing {s.name} ({s.status}).")
        w.go_to("results")

    def ask_rename(self, path: str) -> None:
        name, ok = QInputDialog.getText(self.w, "Rename the run", f"New name for {Path(path).name}:",
                                        text=Path(path).name)
        if ok and name.strip() and name.strip() != Path(path).name:
            self.edit_task.start(library_jobs.rename, path, name.strip())

    def ask_delete(self, paths: List[str]) -> None:
        names = "\n".join(Path(p).name for p in paths[:10]) + ("\n…" if len(paths) > 10 else "")
        answer = QMessageBox.question(self.w, "Delete runs",
                                      f"Delete {len(paths)} run folder(s) and everything in them?\n\n{names}\n\n"
                                      "This cannot be undone.")
        if answer == QMessageBox.StandardButton.Yes:
            self.edit_task.start(library_jobs.delete, list(paths))

    def ask_report(self, paths: List[str], out: Optional[str] = None) -> None:
        if not paths:
            return
        if out is None:
            start = str(Path(paths[0]).parent / "report.html")
            out, _ = QFileDialog.getSaveFileName(self.w, "Write the report", start, "HTML (*.html)")
            if not out:
                return
        self.w._busy("Writing the report…")
        self.report_task.start(library_jobs.report, list(paths), out)

    # -- compare --------------------------------------------------------------------------------
    def compare(self, paths: List[str]) -> None:
        if len(paths) < 2:
            self.w.show_error("Select two or more runs", "Compare needs at least two runs: select them in the list.")
            return
        self.w._busy(f"Comparing {len(paths)} runs…")
        self.compare_task.start(library_jobs.compare_runs, list(paths))

    def _on_compared(self, data) -> None:
        self.w.compare_panel.show_comparison(data)
        self.w._idle(f"Comparing {len(data.records)} runs.")
        self.w.go_to("compare")

    # -- sweep ----------------------------------------------------------------------------------
    def start_sweep(self, ptq: List[str], qad: List[str], mixed: Optional[float]) -> None:
        w = self.w
        ready, reason = w.readiness()
        if not ready:
            w.show_error("Not ready to sweep", reason)
            return
        if not ptq:
            w.show_error("No scheme ticked", "Tick at least one scheme to sweep.")
            return
        try:
            base = w.state.recipe().to_dict()
        except Exception as exc:  # RecipeError: names the key
            w.show_error("The settings are not valid", str(exc))
            return
        base["export"] = {"format": None}
        spec = SweepSpec(base, list(ptq), list(qad), mixed)
        root = Path(w.run_panel.run_folder.text() or w.settings.get(RUNS_DIR)).expanduser()
        name = w.model_info.summary["name"] if w.model_info else "model"
        out = root / f"{time.strftime('%Y%m%d-%H%M%S')}-sweep-{name}"
        w.sweep_panel.sweep_started(str(out), len(plan_runs(spec, out)))
        self.sweep_task.start(library_jobs.sweep, spec, str(out))

    def _on_swept(self, trade) -> None:
        self.w.sweep_panel.sweep_ended(f"Sweep finished: {len(trade.runs)} runs in {trade.folder}.")
        self._on_trade_off(trade)
        self.rescan()

    def show_sweep(self, folder: str) -> None:
        """Show the trade-off of an existing sweep folder."""
        self.trade_task.start(library_jobs.trade_off, folder)

    def _on_trade_off(self, trade) -> None:
        self.trade = trade
        self._show_trade_off()

    def _show_trade_off(self) -> None:
        t = self.trade
        if t is None:
            return
        size, target = self.w.sweep_panel.targets()
        chosen = library_jobs.recommend(t.points, size, target)
        self.w.sweep_panel.show_trade_off(t.folder, t.points, t.ship, t.texts, chosen)

    def export_run(self, path: str) -> None:
        target = self.w.state.get("export.format") or "compressed-tensors"
        out = str(Path(path) / f"export-{target}")
        self.w.export_panel.show_busy(f"Exporting {target} from {Path(path).name}…")
        self.w._busy(f"Exporting {Path(path).name} as {target}…")
        self.w.export_task.start(jobs.export_finished_run, path, target, out, True)

    # -- errors, shutdown -----------------------------------------------------------------------
    def _failed(self, title: str, message: str, details: str) -> None:
        self.w._idle(title + ".")
        self.w.show_error(title, message, details)

    def slots(self) -> List[TaskSlot]:
        return [self.scan_task, self.open_task, self.edit_task, self.compare_task, self.report_task,
                self.sweep_task, self.trade_task]

    def threads(self) -> List[Any]:
        return [t for s in self.slots() for t in s.threads()]

    def shutdown(self, timeout_ms: int) -> bool:
        self.live.stop()
        ok = True
        for s in self.slots():
            ok = s.shutdown(timeout_ms) and ok
        return ok
