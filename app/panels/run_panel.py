"""Step 5: where to run, Start / Cancel, and the progress of the run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QSizePolicy, QApplication, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QListWidget, QListWidgetItem, QProgressBar, QPushButton, QSpinBox, QVBoxLayout,
                               QWidget)

from engine.memory import fmt_bytes

from .. import theme
from ..jobs import DeviceChoice
from ..state import RecipeState
from .common import Page, PathField, StatusLine, bind, human_seconds

# What the engine's stage names mean to someone watching.
STAGE_TEXT = {
    "load": "Loading the model and the text",
    "calibrate weights": "Choosing weight scales",
    "calibrate": "Calibrating activations",
    "evaluate ptq": "Measuring quality: original vs quantized",
    "train": "Training",
    "evaluate final": "Measuring quality after training",
    "export": "Writing the checkpoint",
    "verify export": "Reading the checkpoint back to verify it",
}


def stage_text(stage: str) -> str:
    return STAGE_TEXT.get(stage, stage[:1].upper() + stage[1:])


class RunPanel(Page):
    start_requested = Signal()
    cancel_requested = Signal()
    browse_runs_requested = Signal()

    def __init__(self, state: RecipeState, parent: Optional[QWidget] = None):
        super().__init__(
            "5  Run",
            "Check the summary, pick where to compute, and press Start. You can follow the curves in Results "
            "while it runs, and cancel at any time.",
            next_label="Next: results",
        )
        self.state = state
        summary_box = QGroupBox("This run")
        self.checklist = QFormLayout(summary_box)
        self.checks: Dict[str, QLabel] = {}
        for key, label in (("model", "Model"), ("data", "Data"), ("format", "Format"), ("mode", "Mode"),
                           ("export", "Export")):
            value = QLabel("—")
            value.setWordWrap(True)
            self.checklist.addRow(label + ":", value)
            self.checks[key] = value
        self.content.addWidget(summary_box)

        where = QGroupBox("Where")
        form = QFormLayout(where)
        self.device = QComboBox()
        self.device.addItem("Auto", "auto")
        self.device.addItem("CPU", "cpu")
        bind(self.device, state, "device", "Auto uses a CUDA GPU when there is one, else the CPU.")
        form.addRow("Device:", self.device)
        self.run_folder = PathField("Folder that receives one folder per run")
        self.run_folder.browse_requested.connect(self.browse_runs_requested)
        self.run_folder.setToolTip("Each run writes recipe.yaml, events.jsonl and report.json into its own "
                                   "folder here.")
        form.addRow("Runs folder:", self.run_folder)
        self.content.addWidget(where)
        self.content.addWidget(self._memory_box())
        self.content.addWidget(self._cluster_box(state))

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.setIcon(theme.icon("start"))
        self.start_button.setDefault(True)
        self.start_button.setMinimumWidth(120)
        self.start_button.clicked.connect(self.start_requested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setIcon(theme.icon("stop"))
        self.cancel_button.setMinimumWidth(120)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        self.readiness = StatusLine()
        buttons.addWidget(self.readiness, 1)
        self.content.addLayout(buttons)

        progress_box = QGroupBox("Progress")
        layout = QVBoxLayout(progress_box)
        top = QHBoxLayout()
        self.stage_label = QLabel("Not started.")
        self.eta_label = QLabel("")
        self.eta_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        top.addWidget(self.stage_label, 1)
        top.addWidget(self.eta_label)
        layout.addLayout(top)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        layout.addWidget(self.progress)
        self.stages = QListWidget()
        self.stages.setSelectionMode(QListWidget.SelectionMode.NoSelection)
        self.stages.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.stages.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout.addWidget(self.stages, 1)
        self.content.addWidget(progress_box, 1)
        self._stage_items: Dict[str, QListWidgetItem] = {}
        self._finished: set = set()
        self._placeholder()
        self._started = 0.0

    def _memory_box(self) -> QGroupBox:
        """The memory plan: each stage's peak on its device, and what each knob would save."""
        box = QGroupBox("Memory")
        layout = QVBoxLayout(box)
        self.memory_summary = QLabel("The plan appears once a model is open.")
        self.memory_summary.setWordWrap(True)
        self.memory_summary.setToolTip("Estimated from the model's config and the recipe before anything is "
                                       "loaded; the same as `lowbit plan RECIPE`.")
        layout.addWidget(self.memory_summary)
        self.memory_stages = QLabel("")
        self.memory_stages.setTextFormat(Qt.TextFormat.RichText)
        self.memory_stages.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.memory_stages.setWordWrap(True)
        layout.addWidget(self.memory_stages)
        box.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)  # never squeezed shut
        return box

    def set_plan_updating(self, busy: bool) -> None:
        """While a changed recipe is planned, the plan on show is the previous recipe's: grey it out and say so."""
        updating = "Updating for the changed recipe... "
        text = self.memory_summary.text()
        if busy and text.startswith("Peak"):
            self.memory_summary.setText(updating + text)
        elif not busy and text.startswith(updating):
            self.memory_summary.setText(text[len(updating):])
        self.memory_stages.setEnabled(not busy)

    def show_memory_plan(self, plan: dict) -> None:
        """Show a plan from engine.pipeline.plan (as app.jobs.memory_plan returns it)."""
        self.memory_stages.setEnabled(True)
        if plan.get("error"):
            self.memory_summary.setText(f"No memory plan: {plan['error']}")
            self.memory_stages.setText("")
            return
        device = plan["model"]["device"]
        cap = plan["capacity"].get(device)
        verdict = "fits" if plan["fits"] else "does NOT fit"
        self.memory_summary.setText(f"Peak {fmt_bytes(plan['peak_per_device'].get(device))} on {device} "
                                    f"(of {fmt_bytes(cap)}): {verdict}."
                                    + (f"  {plan['refusal']}" if plan.get("refusal") else ""))
        def largest(items):  # the two biggest items besides the process itself
            big = sorted((i for i in items if not i["name"].startswith("runtime")), key=lambda i: -i["bytes"])[:2]
            return ", ".join(f"{i['name'].split(' (')[0]} {fmt_bytes(i['bytes'])}" for i in big)

        rows = "".join(f"<tr><td>{st['name']}</td><td align='right'>&nbsp;{fmt_bytes(st['peak_bytes'])}</td>"
                       f"<td>&nbsp;&nbsp;{largest(st['items'])}</td></tr>" for st in plan["stages"])
        knobs = "".join(f"<li>{k['name']}: saves {fmt_bytes(k['saves_bytes'])} "
                        f"({', '.join(f'{a}: {b}' for a, b in k['change'].items())})</li>" for k in plan["knobs"])
        lines = len(plan["stages"]) + 1 + (len(plan["knobs"]) + 3 if plan["knobs"] else 0)
        # a table row is a line plus its cell spacing
        self.memory_stages.setMinimumHeight((self.memory_stages.fontMetrics().lineSpacing() + 4) * lines)
        self.memory_stages.setText(f"<table>{rows}</table>" + (f"<p>What would save memory:</p><ul>{knobs}</ul>"
                                                               if knobs else ""))

    def _cluster_box(self, state: RecipeState) -> QGroupBox:
        """The torchrun command that runs this same recipe on several GPUs, to copy to a cluster."""
        box = QGroupBox("On several GPUs")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.gpus = QSpinBox()
        self.gpus.setRange(1, 1024)
        self.gpus.setValue(8)
        self.gpus.setToolTip("GPUs per machine: torchrun starts one process per GPU.")
        self.nodes = QSpinBox()
        self.nodes.setRange(1, 1024)
        self.nodes.setToolTip("Machines; each runs the same command (the run folder must be shared).")
        self.strategy = QComboBox()
        self.strategy.addItem("FSDP2 (shard the model)", "fsdp2")
        self.strategy.addItem("DDP (a copy per GPU)", "ddp")
        bind(self.strategy, state, "distributed.strategy",
             "FSDP2 shards weights, gradients and optimizer state across GPUs; DDP keeps a full copy on each.")
        row.addWidget(QLabel("GPUs per machine"))
        row.addWidget(self.gpus)
        row.addWidget(QLabel("machines"))
        row.addWidget(self.nodes)
        row.addWidget(self.strategy, 1)
        form.addRow(row)
        line = QHBoxLayout()
        self.cluster_command = QLineEdit()
        self.cluster_command.setReadOnly(True)
        self.cluster_command.setToolTip("Save the recipe first (File > Save recipe); the command runs that file.")
        copy = QPushButton("Copy")
        copy.clicked.connect(lambda: QApplication.clipboard().setText(self.cluster_command.text()))
        line.addWidget(self.cluster_command, 1)
        line.addWidget(copy)
        form.addRow(line)
        self._recipe_path: Optional[str] = None
        for widget in (self.gpus, self.nodes):
            widget.valueChanged.connect(lambda _: self.update_cluster_command())
        self.strategy.currentIndexChanged.connect(lambda _: self.update_cluster_command())
        self.update_cluster_command()
        return box

    def update_cluster_command(self, recipe_path: Optional[str] = "") -> None:
        """Show the torchrun command for the saved recipe (``""`` keeps the last path)."""
        from engine.pipeline.torchrun import torchrun_command

        if recipe_path != "":
            self._recipe_path = recipe_path
        recipe = self._recipe_path or "recipe.yaml"
        out = str(Path(self.run_folder.text() or "runs") / "cluster-run")
        self.cluster_command.setText(torchrun_command(recipe, out, self.gpus.value(), self.nodes.value(),
                                                      strategy=self.strategy.currentData()))
        self.cluster_command.setCursorPosition(0)

    def _placeholder(self) -> None:
        item = QListWidgetItem("Each stage of the run is listed here as it starts, with the time it took.")
        item.setFlags(Qt.ItemFlag.NoItemFlags)
        self.stages.addItem(item)

    # -- before a run --------------------------------------------------------------------
    def set_devices(self, devices: List[DeviceChoice]) -> None:
        current = self.state.get("device")
        self.device.blockSignals(True)
        self.device.clear()
        for d in devices:
            self.device.addItem(d.label, d.value)
        index = self.device.findData(current)
        if index < 0:  # a recipe asked for a device this machine lacks: keep it visible, marked
            self.device.addItem(f"{current} (not found on this machine)", current)
            index = self.device.count() - 1
        self.device.setCurrentIndex(index)
        self.device.blockSignals(False)

    def set_summary(self, rows: Dict[str, Tuple[str, bool]]) -> None:
        """``{"model": (text, ok), ...}``: ok rows get a check mark, missing ones a cross."""
        colors = theme.status_colors()
        for key, (text, ok) in rows.items():
            label = self.checks[key]
            mark = "✓" if ok else "✗"
            color = colors["ok"] if ok else colors["error"]
            label.setText(f"<span style='color:{color}'>{mark}</span>&nbsp; {text}")

    def set_ready(self, ready: bool, reason: str, running: bool) -> None:
        self.start_button.setEnabled(ready and not running)
        self.cancel_button.setEnabled(running)
        self.device.setEnabled(not running)
        self.run_folder.setEnabled(not running)
        if running:
            self.readiness.show_text("Running…", "muted")
        elif ready:
            self.readiness.show_text("Ready.", "ok")
        else:
            self.readiness.show_text(reason, "warn")

    # -- during a run --------------------------------------------------------------------
    def run_started(self, run_dir: str) -> None:
        self.stages.clear()
        self._stage_items.clear()
        self._finished.clear()
        self._started = time.monotonic()
        self.stage_label.setText(f"Starting… (run folder {run_dir})")
        self.eta_label.setText("")
        self.progress.setRange(0, 0)  # busy until the first stage says how long it is

    def stage_started(self, stage: str, total: Optional[int], detail: str) -> None:
        text = stage_text(stage) + (f" — {detail}" if detail else "")
        text = self.stages.fontMetrics().elidedText(text, Qt.TextElideMode.ElideMiddle,
                                                    max(300, self.stages.viewport().width() - 140))
        item = QListWidgetItem(theme.icon("active"), text)
        item.setToolTip(detail)
        item.setData(Qt.ItemDataRole.UserRole, stage)
        self.stages.addItem(item)
        self.stages.scrollToItem(item)
        self._stage_items[stage] = item
        self.stage_label.setText(stage_text(stage) + "…")
        self.eta_label.setText("")
        if total:
            self.progress.setRange(0, int(total))
            self.progress.setValue(0)
        else:
            self.progress.setRange(0, 0)

    def stage_finished(self, stage: str, seconds: float) -> None:
        item = self._stage_items.get(stage)
        self._finished.add(stage)
        if item is not None:
            item.setIcon(theme.icon("check"))
            item.setText(f"{item.text()}   ({human_seconds(seconds) if seconds >= 1 else f'{seconds:.1f} s'})")

    def show_progress(self, stage: str, done: int, total: Optional[int], eta_s: Optional[float], detail: str) -> None:
        text = stage_text(stage)
        if total:
            self.progress.setRange(0, int(total))
            self.progress.setValue(min(int(done), int(total)))
            self.progress.setFormat(f"{done:,} / {total:,}")
            text += f" — {done:,} of {total:,}"
        if detail:
            text += f"  ({detail})"
        self.stage_label.setText(text)
        elapsed = time.monotonic() - self._started
        eta = f"about {human_seconds(eta_s)} left · " if eta_s is not None else ""
        self.eta_label.setText(f"{eta}{human_seconds(elapsed)} elapsed")

    def run_ended(self, outcome: str, message: str = "") -> None:
        """outcome: finished | cancelled | failed."""
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if outcome == "finished" else 0)
        self.progress.setFormat("done" if outcome == "finished" else outcome)
        elapsed = human_seconds(time.monotonic() - self._started) if self._started else ""
        text = {"finished": f"Finished in {elapsed}. See Results.",
                "cancelled": "Cancelled. The run folder keeps what was done so far.",
                "failed": f"Failed: {message}"}[outcome]
        self.stage_label.setText(text)
        self.eta_label.setText("")
        for stage, item in self._stage_items.items():
            if stage not in self._finished:
                item.setIcon(theme.icon("warning"))
