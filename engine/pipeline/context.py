"""What the stages of one run share: the recipe, the run folder, events, the cancel token, the device."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..events import CancelToken, Log, Metric, ProgressTracker, Sink, StageFinished, StageStarted
from ..io.data import batches
from ..parallel import Dist
from ..memory import StagePeak


@dataclass
class RunResult:
    run_dir: Path
    report: Dict[str, Any]


@dataclass
class RunContext:
    """What the stages of one run share."""

    recipe: Any
    run_dir: Path
    sink: Sink
    cancel: CancelToken
    device: torch.device
    report: Dict[str, Any] = field(default_factory=dict)
    loaded: Any = None
    splits: Any = None
    resume_from: Optional[Path] = None  # a training checkpoint to continue from
    dist: Dist = field(default_factory=Dist.single)  # one process: the world of size 1
    current_stage: Optional[str] = None  # the stage running now (named in out-of-memory messages)
    # full-precision weights of the layers a PTQ algorithm rewrote (GPTQ): the original model for
    # the baseline, the per-layer report and the QAD teacher is the loaded one, not the rewritten one
    original_weights: Dict[str, torch.Tensor] = field(default_factory=dict)
    # calibration.sequential resolved by the memory plan: the model loads into CPU memory, calibrates one
    # block on ``device`` at a time, then goes to this device for the rest of the run; None = whole-model
    sequential: Optional[torch.device] = None

    def stage(self, name: str, total: Optional[int] = None, detail: str = "") -> "_Stage":
        return _Stage(self, name, total, detail)

    def log(self, message: str, level: str = "info") -> None:
        self.sink(Log(message, level))

    def metric(self, stage: str, name: str, value: float, step: Optional[int] = None) -> None:
        self.sink(Metric(stage, name, float(value), step))

    def batches(self, blocks, n_batches: int, batch_size: Optional[int] = None) -> List[torch.Tensor]:
        return batches(blocks, batch_size or self.recipe.data.batch_size, n_batches)


class _Stage:
    def __init__(self, ctx: RunContext, name: str, total: Optional[int], detail: str):
        self.ctx, self.name, self.total, self.detail = ctx, name, total, detail

    def __enter__(self) -> ProgressTracker:
        self.ctx.cancel.check()
        self.t0 = time.monotonic()
        self.ctx.current_stage = self.name
        self._memory = StagePeak(self.ctx.device)  # this stage's own peak (report["memory"]["measured"])
        self.ctx.sink(StageStarted(self.name, self.total, self.detail))
        return ProgressTracker(self.ctx.sink, self.name, self.total, self.ctx.cancel)

    def __exit__(self, exc_type, exc, tb):
        seconds = time.monotonic() - self.t0
        self.ctx.report.setdefault("timings", {})[self.name] = round(seconds, 3)
        peak = self._memory.read()
        if peak is not None:
            self.ctx.report.setdefault("memory", {}).setdefault("measured", {})[self.name] = peak
        if exc_type is None:
            self.ctx.sink(StageFinished(self.name, seconds))
        return False
