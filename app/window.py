"""The main window: a numbered list of steps on the left, one page per step on the right.

The window is the only place that connects things: panels say what the user
wants (signals), the window updates the recipe state, starts background tasks
(:mod:`app.worker`) and routes their results and the run's events back into
the panels. Slots here only move data around; every slow thing runs on a
worker thread.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import (QAction, QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent, QGuiApplication,
                           QKeySequence)
from PySide6.QtWidgets import (QApplication, QFileDialog, QLabel, QMainWindow, QMessageBox, QProgressBar, QSplitter,
                               QStackedWidget, QWidget)

from engine import events as ev

from . import jobs, plan, theme
from .catalog import model_bytes, scheme_rows
from .dialogs import ErrorDialog
from .panels.common import human_bytes
from .panels.data_panel import DataPanel
from .library import LibraryController
from .panels.compare_panel import ComparePanel
from .panels.export_panel import ExportPanel
from .panels.library_panel import LibraryPanel
from .panels.sweep_panel import SweepPanel
from .panels.format_panel import FormatPanel
from .panels.mode_panel import ModePanel
from .panels.model_panel import ModelPanel
from .panels.results_panel import ResultsPanel
from .panels.run_panel import RunPanel, stage_text
from .panels.steps import StepList
from .settings import (GEOMETRY, LAST_DATA_DIR, LAST_EXPORT_DIR, LAST_MODEL_DIR, LAST_RECIPE_DIR, RUNS_DIR, THEME,
                       WINDOW_STATE, Settings)
from .state import RecipeState
from .worker import RunController, TaskSlot

STEPS = [("model", "Model"), ("data", "Data"), ("format", "Format"), ("mode", "Mode"), ("run", "Run"),
         ("results", "Results"), ("export", "Export"), ("library", "Runs"), ("compare", "Compare"), ("sweep", "Sweep")]
DATA_KEYS = {"train": "data.path", "eval": "data.eval_path"}
RECIPE_FILTER = "Recipes (*.yaml *.yml *.json)"
DATA_FILTER = "Text data (*.txt *.text *.md *.jsonl *.jsonlines *.json);;All files (*)"


def classify_drop(path: Path) -> Optional[str]:
    """What a dropped path is: "model" (a folder with config.json), "recipe", "data", or None."""
    if path.is_dir():
        return "model" if (path / "config.json").is_file() else "data"
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "recipe"
    if suffix in (".txt", ".text", ".md", ".jsonl", ".jsonlines", ".json"):
        return "data"
    return None


class MainWindow(QMainWindow):
    def __init__(self, settings: Optional[Settings] = None, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.settings = settings or Settings()
        self.state = RecipeState(self)
        self.model_info: Optional[jobs.ModelInfo] = None
        self.recipe_path: Optional[str] = None
        self.last_report: Optional[Dict[str, Any]] = None
        self.last_error: Optional[ErrorDialog] = None
        self.confirm_close = True  # ask before closing during a run (tests turn it off)
        self.run_dir: Optional[str] = None
        self._data_errors: Dict[str, Optional[str]] = {"train": None, "eval": None}  # the last read's error

        self.setWindowTitle("Lowbit Studio")
        self.setWindowIcon(theme.app_icon())
        self.setAcceptDrops(True)

        self.model_task = TaskSlot("model", self)
        self.data_tasks = {role: TaskSlot(f"data-{role}", self) for role in DATA_KEYS}
        self.device_task = TaskSlot("devices", self)
        self.compare_task = TaskSlot("compare", self)
        self.export_task = TaskSlot("export", self)
        self.plan_task = TaskSlot("memory-plan", self)
        self.runner = RunController(self)

        self._build_pages()
        self._build_menus()
        self._build_status_bar()
        self._connect()
        self.library = LibraryController(self)  # the Runs, Compare and Sweep steps
        self._restore()
        self.device_task.start(jobs.list_devices)
        self.library.rescan()
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._on_system_scheme_changed)
        self.restyle()

    # ------------------------------------------------------------------ construction
    def _build_pages(self) -> None:
        self.steps = StepList()
        self.stack = QStackedWidget()
        self.model_panel = ModelPanel(self.state)
        self.data_panel = DataPanel(self.state)
        self.format_panel = FormatPanel(scheme_rows())
        self.mode_panel = ModePanel(self.state)
        self.run_panel = RunPanel(self.state)
        self.results_panel = ResultsPanel()
        self.export_panel = ExportPanel(self.state)
        self.library_panel = LibraryPanel()
        self.compare_panel = ComparePanel()
        self.sweep_panel = SweepPanel([row.name for row in scheme_rows()])
        self.pages = {"model": self.model_panel, "data": self.data_panel, "format": self.format_panel,
                      "mode": self.mode_panel, "run": self.run_panel, "results": self.results_panel,
                      "export": self.export_panel, "library": self.library_panel, "compare": self.compare_panel,
                      "sweep": self.sweep_panel}
        for i, (key, title) in enumerate(STEPS):
            self.steps.add_step(key, f"{i + 1}  {title}")
            self.stack.addWidget(self.pages[key])
            self.pages[key].next_requested.connect(lambda i=i: self.go_to(STEPS[min(i + 1, len(STEPS) - 1)][0]))
        self.steps.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.steps.setCurrentRow(0)
        split = QSplitter()
        split.addWidget(self.steps)
        split.addWidget(self.stack)
        split.setStretchFactor(1, 1)
        split.setCollapsible(0, False)
        self.setCentralWidget(split)
        self.run_panel.run_folder.set_text(self.settings.get(RUNS_DIR))
        self.model_panel.set_recent(self.settings.recent_models())

    def _build_menus(self) -> None:
        self._icons: Dict[QAction, str] = {}  # re-tinted when the theme changes
        file = self.menuBar().addMenu("&File")
        self.act_new = self._action(file, "New recipe", "new", QKeySequence.StandardKey.New, self.new_recipe)
        self.act_open_recipe = self._action(file, "Open recipe…", "open", QKeySequence.StandardKey.Open,
                                            self.choose_recipe)
        self.act_save = self._action(file, "Save recipe", "save", QKeySequence.StandardKey.Save, self.save_recipe)
        self.act_save_as = self._action(file, "Save recipe as…", None, QKeySequence.StandardKey.SaveAs,
                                        lambda: self.save_recipe(ask=True))
        file.addSeparator()
        self._action(file, "Open model folder…", "model", "Ctrl+M", self.choose_model)
        self.recent_menu = file.addMenu("Recent models")
        file.addSeparator()
        self._action(file, "Quit", None, QKeySequence.StandardKey.Quit, self.close)

        run = self.menuBar().addMenu("&Run")
        self.act_start = self._action(run, "Start", "start", "Ctrl+R", self.start_run)
        self.act_cancel = self._action(run, "Cancel", "stop", "Ctrl+.", self.cancel_run)

        view = self.menuBar().addMenu("&View")
        themes = view.addMenu("Theme")
        group = QActionGroup(self)
        current = self.settings.get(THEME)
        for mode in theme.MODES:
            action = themes.addAction(mode.capitalize() + (" (follow the system)" if mode == "system" else ""))
            action.setCheckable(True)
            action.setChecked(mode == current)
            action.triggered.connect(lambda _=False, m=mode: self.set_theme(m))
            group.addAction(action)
        view.addSeparator()
        for i, (key, title) in enumerate(STEPS):
            self._action(view, f"{i + 1}  {title}", None, f"Ctrl+{i + 1}", lambda k=key: self.go_to(k))

        help_menu = self.menuBar().addMenu("&Help")
        self._action(help_menu, "About Lowbit Studio", None, None, self.about)
        self._fill_recent_menu()

    def _action(self, menu, text: str, icon: Optional[str], shortcut, slot) -> QAction:
        action = menu.addAction(text)
        if icon:
            action.setIcon(theme.icon(icon))
            self._icons[action] = icon
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda _=False: slot())
        return action

    def _build_status_bar(self) -> None:
        self.status_text = QLabel("Ready. Start with step 1: open a model.")
        self.status_progress = QProgressBar()
        self.status_progress.setMaximumWidth(180)
        self.status_progress.setMaximumHeight(16)
        self.status_progress.setTextVisible(False)
        self.status_progress.setVisible(False)
        self.statusBar().addWidget(self.status_text, 1)
        self.statusBar().addPermanentWidget(self.status_progress)

    def _connect(self) -> None:
        s = self.state
        s.changed.connect(self._on_state_changed)
        s.reset.connect(self._on_state_reset)

        self.model_panel.open_requested.connect(self.open_model)
        self.model_panel.browse_requested.connect(self.choose_model)
        self.model_task.succeeded.connect(self._on_model_loaded)
        self.model_task.failed.connect(self._on_model_failed)

        self.data_panel.open_requested.connect(self.set_data)
        self.data_panel.browse_requested.connect(self.choose_data)
        for role, slot in self.data_tasks.items():
            slot.succeeded.connect(lambda info, r=role: self._on_data_read(r, info))
            slot.failed.connect(lambda msg, details, r=role: self._on_data_failed(r, msg, details))

        self.format_panel.scheme_chosen.connect(lambda name: s.set("quant.scheme", name))
        self.format_panel.algorithm_chosen.connect(lambda name: s.set("calibration.algorithm", name))
        self.format_panel.sequential_chosen.connect(lambda value: s.set("calibration.sequential", value))
        self.format_panel.awq_unfoldable_chosen.connect(lambda value: s.set("calibration.awq_unfoldable", value))
        self.format_panel.layer_choice.connect(self._on_layer_choice)

        self.device_task.succeeded.connect(self.run_panel.set_devices)
        self.plan_task.succeeded.connect(self.run_panel.show_memory_plan)
        self.plan_task.busy_changed.connect(self.run_panel.set_plan_updating)
        self.plan_task.failed.connect(lambda m, d: self.run_panel.show_memory_plan({"error": m}))
        self.run_panel.start_requested.connect(self.start_run)
        self.run_panel.cancel_requested.connect(self.cancel_run)
        self.run_panel.browse_runs_requested.connect(self.choose_runs_dir)
        self.run_panel.run_folder.chosen.connect(lambda p: p and self.settings.set(RUNS_DIR, p))

        self.runner.events.connect(self._on_run_events)
        self.runner.succeeded.connect(self._on_run_succeeded)
        self.runner.failed.connect(self._on_run_failed)
        self.runner.cancelled.connect(self._on_run_cancelled)
        self.runner.running_changed.connect(self._on_running_changed)

        self.results_panel.compare_requested.connect(self.compare_formats)
        self.results_panel.layer_selected.connect(self.format_panel.select_layer)
        self.compare_task.progressed.connect(lambda d, t, _: self.results_panel.show_compare_progress(d, t))
        self.compare_task.succeeded.connect(self._on_compared)
        self.compare_task.failed.connect(lambda m, d: (self.results_panel.show_compare_progress(1, 1),
                                                       self.show_error("Could not compare formats", m, d)))
        self.export_panel.browse_requested.connect(self.choose_export_dir)
        self.export_panel.export_now_requested.connect(self.export_last_run)
        self.export_task.succeeded.connect(self._on_exported)
        self.export_task.failed.connect(self._on_export_failed)
        self.export_task.busy_changed.connect(lambda _: self._refresh())

    # ------------------------------------------------------------------ navigation
    def go_to(self, step: str) -> None:
        self.steps.setCurrentRow([k for k, _ in STEPS].index(step))

    def current_step(self) -> str:
        return STEPS[self.steps.currentRow()][0]

    # ------------------------------------------------------------------ model
    def choose_model(self) -> None:
        start = self.settings.get(LAST_MODEL_DIR) or str(Path.home())
        path = QFileDialog.getExistingDirectory(self, "Open a Hugging Face model folder", start)
        if path:
            self.settings.set(LAST_MODEL_DIR, str(Path(path).parent))
            self.open_model(path)

    def open_model(self, path: str) -> None:
        """Load ``path`` in the background; the Model page shows the result."""
        path = str(Path(path).expanduser())
        self.model_panel.show_loading(path)
        self._busy(f"Loading model {Path(path).name}…")
        self.model_task.start(jobs.inspect_model, path, self.state.get("model.dtype"),
                              bool(self.state.get("model.trust_remote_code")))

    @Slot(object)
    def _on_model_loaded(self, info: jobs.ModelInfo) -> None:
        self.model_info = info
        self.model_panel.show_model(info)
        self.state.set("model.path", info.path)
        self.model_panel.set_recent(self.settings.add_recent_model(info.path))
        self._fill_recent_menu()
        self._idle(f"Loaded {info.summary['name']}: {info.summary['n_params']:,} parameters.")
        for role in DATA_KEYS:  # count tokens again, with this tokenizer
            path = self.state.get(DATA_KEYS[role])
            if path:
                self._read_data(role, path)
        self._refresh_plan()
        self._refresh()

    @Slot(str, str)
    def _on_model_failed(self, message: str, details: str) -> None:
        self.model_info = None
        self.state.set("model.path", "")
        self.model_panel.show_error(message)
        self._idle("The model could not be loaded.")
        self._refresh_plan()
        self._refresh()
        self.show_error("Could not open the model", message, details)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for p in self.settings.recent_models():
            action = self.recent_menu.addAction(p)
            action.triggered.connect(lambda _=False, path=p: self.open_model(path))
        self.recent_menu.setEnabled(not self.recent_menu.isEmpty())

    # ------------------------------------------------------------------ data
    def choose_data(self, role: str) -> None:
        start = self.settings.get(LAST_DATA_DIR) or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Choose text data", start, DATA_FILTER)
        if path:
            self.settings.set(LAST_DATA_DIR, str(Path(path).parent))
            self.set_data(role, path)

    def set_data(self, role: str, path: str) -> None:
        path = str(Path(path).expanduser()) if path else ""
        self.state.set(DATA_KEYS[role], path or None)
        if not path:
            self.data_tasks[role].cancel()
            self._data_errors[role] = None
            self.data_panel.clear(role)
            self._refresh()
            return
        self._read_data(role, path)

    def _read_data(self, role: str, path: str) -> None:
        self.data_panel.show_loading(role, path)
        self._data_errors[role] = None
        tokenizer = self.model_info.tokenizer if self.model_info else None
        self.data_tasks[role].start(jobs.inspect_data, path, tokenizer, self.state.get("data.text_field"))
        self._refresh()

    def _on_data_read(self, role: str, info: jobs.DataInfo) -> None:
        self._data_errors[role] = None
        self.data_panel.show_info(role, info)
        self._refresh()

    def _on_data_failed(self, role: str, message: str, details: str) -> None:
        self._data_errors[role] = message
        self.data_panel.show_error(role, message)
        self._refresh()
        self.show_error("Could not read the text data", message, details)

    # ------------------------------------------------------------------ format
    def _on_layer_choice(self, names: List[str], choice: Optional[str]) -> None:
        quant = plan.with_layer_choice(self.state.get("quant"), names, choice)
        self.state.set("quant", quant)

    def _refresh_plan(self) -> None:
        """Preview which format each layer gets (glob matching over the layer names: instant)."""
        self.format_panel.set_scheme(self.state.get("quant.scheme"))
        self.format_panel.set_algorithm(self.state.get("calibration.algorithm"))
        self.format_panel.set_sequential(self.state.get("calibration.sequential"))
        self.format_panel.set_awq_unfoldable(self.state.get("calibration.awq_unfoldable"))
        if self.model_info is None:
            self.format_panel.set_plan([], "Open a model (step 1) to see its layers here.")
            return
        quant = self.state.get("quant")
        try:
            plans, warnings = plan.preview(self.model_info.skeleton, quant)
        except Exception as exc:  # an unknown format typed in a recipe file
            self.format_panel.set_plan([], f"The format settings are not valid: {exc}")
            return
        rows = [{**p.to_dict(), "choice": plan.layer_choice(quant, p.name)} for p in plans]
        s = self.model_info.summary
        layer_rows = [{"params": p.in_features * p.out_features, "in_features": p.in_features, "format": p.weight}
                      for p in plans]
        before = model_bytes(s["n_params"], s["dtype"])
        after = model_bytes(s["n_params"], s["dtype"], layer_rows)
        n = sum(p.quantized for p in plans)
        summary = (f"{n} of {len(plans)} linear layers quantized. Weights: {human_bytes(before)} → "
                   f"{human_bytes(after)} ({before / max(after, 1):.1f}× smaller).")
        self.format_panel.set_plan(rows, summary, warnings)

    # ------------------------------------------------------------------ state
    def _on_state_changed(self, key: str) -> None:
        if key.startswith("quant"):
            self._refresh_plan()
        if key in ("model.dtype", "model.trust_remote_code") and self.model_panel.path.text():
            self.open_model(self.model_panel.path.text())  # the model loads differently now
        if key == "data.text_field":
            for role, k in DATA_KEYS.items():
                if self.state.get(k):
                    self._read_data(role, self.state.get(k))
        self._refresh()

    def _on_state_reset(self) -> None:
        """A recipe was opened: load what it names."""
        self._refresh_plan()
        model = self.state.get("model.path")
        if model and (self.model_info is None or self.model_info.path != str(Path(model).expanduser().resolve())):
            self.open_model(model)
        for role, key in DATA_KEYS.items():
            path = self.state.get(key)
            if path:
                self._read_data(role, path)
            else:
                self.data_panel.clear(role)
                self._data_errors[role] = None
        self._refresh()

    def readiness(self) -> tuple:
        """(ready, reason) for Start."""
        if self.model_task.busy:
            return False, "Loading the model…"
        if self.model_info is None or not self.state.get("model.path"):
            return False, "Open a model first (step 1)."
        if not self.state.get("data.path"):
            return False, "Choose the text data (step 2)."
        for role, error in self._data_errors.items():
            if self.data_tasks[role].busy:
                return False, "Reading the text data…"
            if error:
                return False, f"The {'evaluation ' if role == 'eval' else ''}text data has a problem (step 2)."
        return True, ""

    def _refresh(self) -> None:
        """Update everything that summarises the recipe: step subtitles, the run checklist, Start."""
        s = self.state
        running = self.runner.running
        ready, reason = self.readiness()
        self.run_panel.set_ready(ready, reason, running)
        self.act_start.setEnabled(ready and not running)
        self.act_cancel.setEnabled(running)
        for action in (self.act_new, self.act_open_recipe):
            action.setEnabled(not running)
        info = self.model_info.summary if self.model_info else None
        data = s.get("data.path")
        mode = s.get("mode")
        export = s.get("export.format")
        finished = bool(self.last_report and self.last_report.get("status") == "completed")
        if self.export_task.busy:
            self.export_panel.set_export_now(False, "Exporting…")
        elif not finished or running:
            self.export_panel.set_export_now(False, "After a run has finished, you can also export it from here.")
        elif not export:
            self.export_panel.set_export_now(False, "Choose a format above to export the last run.")
        else:
            self.export_panel.set_export_now(True, f"Or export the last run ({Path(self.run_dir).name}) now:")
        subtitles = {
            "model": info["name"] if info else "not chosen",
            "data": Path(data).name if data else "not chosen",
            "format": s.get("quant.scheme"),
            "mode": mode.upper(),
            "run": "running…" if running else ("ready" if ready else "not ready"),
            "results": self._results_subtitle(),
            "export": export or "none",
            "library": "all runs",
            "compare": "runs side by side",
            "sweep": "which format to ship",
        }
        for i, (key, _) in enumerate(STEPS):
            self.steps.set_subtitle(i, subtitles.get(key, ""))
        train = ""
        if mode in ("qat", "qad"):
            lr = s.get('train.lr')
            train = f", {s.get('train.steps'):,} steps at lr {lr if isinstance(lr, str) else format(lr, '.3g')}"
        evals = s.get("data.eval_path")
        self.run_panel.set_summary({
            "model": (f"{info['name']} ({info['architecture']}, {info['n_params']:,} parameters)" if info
                      else "open a model in step 1", info is not None),
            "data": ((Path(data).name + (f", evaluated on {Path(evals).name}" if evals else
                                         f", {int(100 * s.get('data.eval_fraction'))}% held out for evaluation"))
                     if data else "choose text in step 2", bool(data) and not self._data_errors["train"]),
            "format": (s.get("quant.scheme") + self._override_note(), True),
            "mode": (mode.upper() + train, True),
            "export": (export or "no export", True),
        })
        self._refresh_memory_plan()

    def _refresh_memory_plan(self) -> None:
        """Plan the recipe's memory in the background (from the meta-device model: no weights read)."""
        inspected = getattr(self.model_info, "inspected", None) if self.model_info else None
        if inspected is None or self.runner.running:
            return
        try:
            recipe = self.state.recipe()
        except Exception:  # an incomplete recipe (no data yet): no plan until it is whole
            return
        self.plan_task.start(jobs.memory_plan, recipe, inspected)

    def _results_subtitle(self) -> str:
        r = self.last_report
        if not r:
            return ""
        best = r.get("final") or r.get("ptq") or {}
        if "perplexity" in best:
            return f"perplexity {best['perplexity']:.4g}"
        return r.get("status", "")

    def _override_note(self) -> str:
        q = self.state.get("quant")
        parts = []
        if q.get("exclude"):
            parts.append(f"{len(q['exclude'])} excluded")
        if q.get("overrides"):
            parts.append(f"{len(q['overrides'])} per-layer formats")
        return f" ({', '.join(parts)})" if parts else ""

    # ------------------------------------------------------------------ recipe files
    def new_recipe(self) -> None:
        """Every setting back to its default; the open model stays."""
        self.recipe_path = None
        self.state.new(keep=("model.path",))
        self._update_title()

    def choose_recipe(self) -> None:
        start = self.settings.get(LAST_RECIPE_DIR) or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open a recipe", start, RECIPE_FILTER)
        if path:
            self.settings.set(LAST_RECIPE_DIR, str(Path(path).parent))
            self.open_recipe(path)

    def open_recipe(self, path: str) -> bool:
        try:
            self.state.load(path)
        except Exception as exc:  # RecipeError: the message names the key
            self.show_error("Could not open the recipe", str(exc))
            return False
        self.recipe_path = path
        self._update_title()
        self._idle(f"Opened recipe {Path(path).name}.")
        return True

    def save_recipe(self, ask: bool = False, path: Optional[str] = None) -> bool:
        path = path or (None if ask else self.recipe_path)
        if path is None:
            start = self.settings.get(LAST_RECIPE_DIR) or str(Path.home())
            path, _ = QFileDialog.getSaveFileName(self, "Save the recipe", str(Path(start) / "recipe.yaml"),
                                                  RECIPE_FILTER)
            if not path:
                return False
            self.settings.set(LAST_RECIPE_DIR, str(Path(path).parent))
        try:
            self.state.save(path)
        except Exception as exc:
            self.show_error("Could not save the recipe", str(exc))
            return False
        self.recipe_path = path
        self._update_title()
        self._idle(f"Saved {path}. Run it from a terminal with: lowbit run {Path(path).name} --out RUN_DIR")
        return True

    def _update_title(self) -> None:
        self.run_panel.update_cluster_command(self.recipe_path)
        name = Path(self.recipe_path).name if self.recipe_path else "untitled recipe"
        self.setWindowTitle(f"{name} — Lowbit Studio")

    # ------------------------------------------------------------------ runs
    def choose_runs_dir(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for run folders", self.run_panel.run_folder.text())
        if path:
            self.run_panel.run_folder.set_text(path)
            self.settings.set(RUNS_DIR, path)

    def choose_export_dir(self) -> None:
        start = self.settings.get(LAST_EXPORT_DIR) or str(Path.home())
        path = QFileDialog.getExistingDirectory(self, "Export folder", start)
        if path:
            self.settings.set(LAST_EXPORT_DIR, str(Path(path).parent))
            self.state.set("export.path", path)

    def new_run_dir(self) -> Path:
        root = Path(self.run_panel.run_folder.text() or self.settings.get(RUNS_DIR)).expanduser()
        name = self.model_info.summary["name"] if self.model_info else "model"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = root / f"{stamp}-{name}-{self.state.get('quant.scheme')}-{self.state.get('mode')}"
        run_dir, n = base, 1
        while run_dir.exists():
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")
        return run_dir

    def start_run(self) -> None:
        if self.runner.running:
            return
        ready, reason = self.readiness()
        if not ready:
            self.show_error("Not ready to run", reason)
            return
        try:
            recipe = self.state.recipe()
        except Exception as exc:
            self.show_error("The settings are not valid", str(exc))
            return
        run_dir = self.new_run_dir()
        self.run_dir = str(run_dir)
        self.last_report = None
        names = [layer["name"] for layer in self.model_info.summary["layers"]]
        self.results_panel.run_started(names, recipe.quant.scheme, recipe.mode)
        self.results_panel.log.add(f"run folder {run_dir}")
        self.run_panel.run_started(str(run_dir))
        self.runner.start(recipe, str(run_dir))
        self._busy("Running…")
        self.status_progress.setRange(0, 0)

    def cancel_run(self) -> None:
        if self.runner.running:
            self.runner.cancel()
            self._busy("Cancelling: the run stops after the current batch…")
            self.run_panel.cancel_button.setEnabled(False)

    @Slot(list)
    def _on_run_events(self, batch: list) -> None:
        last_progress = None
        for event in batch:
            if isinstance(event, ev.Progress):
                last_progress = event  # only the newest is worth drawing
            elif isinstance(event, ev.Metric):
                self.results_panel.add_metric(event.stage, event.name, event.value, event.step)
            elif isinstance(event, ev.LayerStats):
                self.results_panel.layer_stats(event.name, event.stats)
            elif isinstance(event, ev.Log):
                self.results_panel.log.add(event.message, event.level)
            elif isinstance(event, ev.StageStarted):
                last_progress = None
                self.run_panel.stage_started(event.stage, event.total, event.detail)
                self.results_panel.log.add(f"{stage_text(event.stage)}" + (f": {event.detail}" if event.detail else ""))
                self._busy(f"Running: {stage_text(event.stage)}…")
            elif isinstance(event, ev.StageFinished):
                if last_progress is not None and last_progress.stage == event.stage:
                    self._show_progress(last_progress)
                    last_progress = None
                self.run_panel.stage_finished(event.stage, event.seconds)
            elif isinstance(event, ev.RunFailed):
                self.results_panel.log.add(event.error, "error" if event.kind == "error" else "info")
        if last_progress is not None:
            self._show_progress(last_progress)

    def _show_progress(self, p: ev.Progress) -> None:
        self.run_panel.show_progress(p.stage, p.done, p.total, p.eta_s, p.detail)
        if p.total:
            self.status_progress.setRange(0, int(p.total))
            self.status_progress.setValue(min(int(p.done), int(p.total)))

    @Slot(bool)
    def _on_running_changed(self, running: bool) -> None:
        if not running:
            self.status_progress.setVisible(False)
        self.library.rescan()  # the run appears (running), then shows how it ended
        self._refresh()

    @Slot(object)
    def _on_run_succeeded(self, report: Dict[str, Any]) -> None:
        self.last_report = report
        self.results_panel.run_ended()
        self.results_panel.show_report(report)
        self.export_panel.show_report(report)
        self.run_panel.run_ended("finished")
        self.results_panel.log.add(f"finished: report in {self.run_dir}/report.json")
        self._idle("Run finished. See step 6, Results.")

    @Slot(str, str)
    def _on_run_failed(self, message: str, details: str) -> None:
        self.results_panel.run_ended()
        self.run_panel.run_ended("failed", message)
        self._idle("The run failed.")
        self.show_error("The run failed", message, details)

    @Slot()
    def _on_run_cancelled(self) -> None:
        self.results_panel.run_ended()
        self.run_panel.run_ended("cancelled")
        self.results_panel.log.add("cancelled")
        self._idle("Run cancelled.")

    def export_last_run(self) -> None:
        target = self.state.get("export.format")
        if not (self.run_dir and self.last_report and target):
            return
        self.export_panel.show_busy(f"Exporting {target} from {Path(self.run_dir).name}…")
        self._busy(f"Exporting {target}…")
        self.export_task.start(jobs.export_finished_run, self.run_dir, target, self.state.get("export.path"),
                               bool(self.state.get("export.verify")))

    def _on_exported(self, result: Dict[str, Any]) -> None:
        self.export_panel.show_report({"export": result})
        self._idle(f"Exported to {result.get('path', '')}.")

    def _on_export_failed(self, message: str, details: str) -> None:
        self.export_panel.show_busy("The export failed.")
        self._idle("The export failed.")
        self.show_error("Could not export", message, details)

    # ------------------------------------------------------------------ per-layer comparison
    def compare_formats(self) -> None:
        if self.model_info is None:
            self.show_error("No model", "Open a model first (step 1).")
            return
        self.results_panel.show_compare_progress(0, 1)
        self.compare_task.start(jobs.compare_formats, self.model_info.path, jobs.COMPARE_FORMATS,
                                self.state.get("model.dtype"), bool(self.state.get("model.trust_remote_code")))

    def _on_compared(self, result: jobs.LayerErrors) -> None:
        self.results_panel.show_compare_progress(1, 1)
        self.results_panel.set_comparison(result.layers, result.formats, result.sqnr_db)

    # ------------------------------------------------------------------ errors, status
    def show_error(self, title: str, message: str, details: str = "") -> ErrorDialog:
        if self.last_error is not None and self.last_error.isVisible():
            self.last_error.close()
        dialog = ErrorDialog(title, message, details, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.destroyed.connect(lambda *_: setattr(self, "last_error", None)
                                 if self.last_error is dialog else None)
        self.last_error = dialog
        dialog.open()
        return dialog

    def _busy(self, text: str) -> None:
        self.status_text.setText(text)
        self.status_progress.setVisible(True)
        if not self.runner.running:
            self.status_progress.setRange(0, 0)

    def _idle(self, text: str) -> None:
        self.status_text.setText(text)
        self.status_progress.setVisible(self.runner.running)

    # ------------------------------------------------------------------ theme, drops, about
    def set_theme(self, mode: str) -> None:
        self.settings.set(THEME, mode)
        theme.apply_theme(QApplication.instance(), mode)
        self.restyle()

    def _on_system_scheme_changed(self, *_: Any) -> None:
        if self.settings.get(THEME) == "system":
            self.set_theme("system")

    def restyle(self) -> None:
        for i, (key, _) in enumerate(STEPS):
            self.steps.item(i).setIcon(theme.icon(key))
        for page in self.pages.values():
            page.restyle()
        self.run_panel.start_button.setIcon(theme.icon("start"))
        self.run_panel.cancel_button.setIcon(theme.icon("stop"))
        for action, name in self._icons.items():
            action.setIcon(theme.icon(name))
        self._refresh()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and classify_drop(Path(urls[0].toLocalFile())):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            self.open_path(url.toLocalFile())
        event.acceptProposedAction()

    def open_path(self, path: str) -> None:
        """Open whatever ``path`` is: a model folder, a recipe, or text data."""
        kind = classify_drop(Path(path))
        if kind == "model":
            self.go_to("model")
            self.open_model(path)
        elif kind == "recipe":
            self.open_recipe(path)
        elif kind == "data":
            self.go_to("data")
            self.set_data("train", path)

    def about(self) -> None:
        QMessageBox.about(self, "About Lowbit Studio",
                          "<b>Lowbit Studio</b><br>Quantize language models with PTQ, QAT or QAD, watch the run "
                          "live and export checkpoints inference engines load.<br><br>The same recipe file runs "
                          "from a terminal: <tt>lowbit run recipe.yaml --out RUN_DIR</tt>.")

    # ------------------------------------------------------------------ closing
    def _restore(self) -> None:
        geometry = self.settings.get(GEOMETRY)
        if geometry.isEmpty():
            self.resize(1280, 820)
        else:
            self.restoreGeometry(geometry)
        state = self.settings.get(WINDOW_STATE)
        if not state.isEmpty():
            self.restoreState(state)

    def shutdown(self, timeout_ms: int = 60_000) -> bool:
        """Cancel every run and task and join their threads."""
        ok = self.runner.shutdown(timeout_ms)
        ok = self.library.shutdown(timeout_ms) and ok
        for slot in (self.model_task, self.device_task, self.compare_task, self.export_task,
                     *self.data_tasks.values()):
            ok = slot.shutdown(timeout_ms) and ok
        return ok

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.runner.running and self.confirm_close:
            answer = QMessageBox.question(self, "A run is going",
                                          "Cancel the run and quit? The run folder keeps what was done so far.")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        self.settings.set(GEOMETRY, self.saveGeometry())
        self.settings.set(WINDOW_STATE, self.saveState())
        self.settings.sync()
        self.hide()  # gone at once; the threads stop behind it (a run stops at its next batch)
        self.shutdown()
        event.accept()
