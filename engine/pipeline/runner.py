"""``run(recipe, sink, cancel)``: one quantization run, from checkpoint to report.

The run folder holds ``recipe.yaml`` (what ran), ``events.jsonl`` (everything
that happened, as it happened) and ``report.json`` (the results). Every stage
emits events; the cancel token is checked between batches and steps. A failed
or cancelled run still leaves a consistent folder: its report says so.

The stages run in the order of :func:`stages_for`; each is a function of the
:class:`~engine.pipeline.context.RunContext`, in its own module under
:mod:`engine.pipeline.stages`. One process is the one-rank case of a distributed
run (``Dist.single()``): the stages read the same either way.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from ..devices import resolve_device
from ..errors import Cancelled, LowbitError, out_of_memory_error
from ..events import CancelToken, JsonlSink, MultiSink, RunFailed, RunFinished, RunStarted, Sink
from ..export import preflight
from ..fsutil import clean_json, write_json_atomic
from ..parallel import Dist, check_recipe, main_only
from ..train import latest_checkpoint
from .context import RunContext, RunResult
from .plan import plan_stage
from .stages.analyze import analysis_stage
from .stages.benchmark import benchmark_stage
from .stages.calibrate import calibrate_stage
from .stages.evaluate import evaluate_stage, layer_report
from .stages.export import export_stage
from .stages.load import load_stage
from .stages.quantize import quantize_stage
from .stages.train import train_stage
from .student import save_student

Stage = Callable[[RunContext], None]


def _preflight_export(ctx: RunContext) -> None:
    """Refuse an unsupported format / target pairing before the long stages."""
    r = ctx.recipe
    preflight(ctx.loaded.model, r.export.format, r.export.path or ctx.run_dir / "export", before_calibration=True)


def _evaluate_ptq(ctx: RunContext) -> None:
    ptq = evaluate_stage(ctx, "ptq", baseline=True)
    ctx.report["ptq"] = ptq
    ctx.report["quantized"] = ptq
    ctx.report["layers"] = layer_report(ctx)


def _analyze(ctx: RunContext) -> None:
    if ctx.dist.is_main:  # the analysis measures one process's model on its own
        analysis_stage(ctx, ctx.recipe.analysis.formats, sensitivity=ctx.recipe.analysis.sensitivity)


def _benchmark(ctx: RunContext) -> None:
    if not ctx.dist.active:  # timings of a sharded model would measure the collectives
        benchmark_stage(ctx)


def stages_for(recipe) -> List[Tuple[str, Stage]]:
    """The ordered stages ``recipe`` runs (names for logs; each stage emits its own events)."""
    stages: List[Tuple[str, Stage]] = [("load", load_stage), ("quantize", quantize_stage)]
    if recipe.export.format:
        stages.append(("preflight export", _preflight_export))
    stages += [("calibrate", calibrate_stage), ("evaluate ptq", _evaluate_ptq)]
    if recipe.analysis.formats:
        stages.append(("analyze", _analyze))
    if recipe.mode in ("qat", "qad"):
        stages.append(("train", train_stage))
    stages.append(("save student", save_student))
    if recipe.export.format:
        stages.append(("export", export_stage))
    if recipe.analysis.benchmark:
        stages.append(("benchmark", _benchmark))
    return stages


def run(recipe, sink: Optional[Sink] = None, cancel: Optional[CancelToken] = None,
        run_dir: Optional[os.PathLike] = None, resume: bool = False, dist: Optional[Dist] = None) -> RunResult:
    """Run ``recipe`` end to end; returns the run folder and the report.

    With ``resume``, ``run_dir`` is an interrupted run: load, quantization and
    calibration are repeated (they are deterministic) and training continues
    from the last checkpoint in ``run_dir/checkpoints``.

    ``dist`` (an :class:`engine.parallel.Dist` joined under torchrun; default: one process):
    every rank calls this with the same arguments; the data is split over the ranks, the
    student is sharded for training, and only rank 0 writes events, checkpoint metadata
    and the report.

    Raises LowbitError subclasses for problems the user can fix (after emitting
    RunFailed), and Cancelled when the token was set.
    """
    dist = dist if dist is not None and dist.active else Dist.single()
    main = dist.is_main
    cancel = cancel or CancelToken()
    run_dir = Path(run_dir) if run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(run_dir / "checkpoints")
        if resume_from is None:
            raise LowbitError(f"{run_dir} has no training checkpoint to resume from; start the run again instead")
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe.save(run_dir / "recipe.yaml")
    check_recipe(recipe, dist)
    dist.barrier()  # the run folder exists before any rank writes into it
    jsonl = JsonlSink(run_dir / "events.jsonl") if main else None  # one events file, written by rank 0
    out = main_only(MultiSink([jsonl, sink]), dist)
    device = dist.device if dist.active else resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)
    ctx = RunContext(recipe, run_dir, out, cancel, device, resume_from=resume_from, dist=dist)
    ctx.report.update({"status": "running", "mode": recipe.mode, "device": str(ctx.device), "run_dir": str(run_dir)})
    if dist.active:
        ctx.report["distributed"] = dist.describe()
    out(RunStarted(str(run_dir), recipe.to_dict()))
    t0 = time.monotonic()

    def finish(status: str, **extra) -> dict:
        ctx.report.update(status=status, **extra)
        report = clean_json(ctx.report)
        if main:
            write_json_atomic(run_dir / "report.json", report)
        return report

    try:
        plan_stage(ctx)  # the memory plan, from the config only; a run that cannot fit stops here
        for _name, stage in stages_for(recipe):
            stage(ctx)
        ctx.report.setdefault("timings", {})["total"] = round(time.monotonic() - t0, 3)
        report = finish("completed")
        out(RunFinished(report, str(run_dir)))
        return RunResult(run_dir, report)
    except Cancelled as exc:
        finish("cancelled")
        out(RunFailed(str(exc), "cancelled"))
        raise
    except LowbitError as exc:
        finish("failed", error=str(exc))
        out(RunFailed(str(exc), "error"))
        raise
    except torch.OutOfMemoryError:
        # CUDA OOM: a user-fixable problem with a user-facing message (smaller batches, CPU teacher)
        err = out_of_memory_error(f"in stage '{ctx.current_stage}'" if ctx.current_stage else "during the run",
                                  recipe)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        finish("failed", error=str(err))
        out(RunFailed(str(err), "error"))
        raise err from None
    except Exception as exc:
        finish("failed", error=f"{type(exc).__name__}: {exc}")
        out(RunFailed(f"{type(exc).__name__}: {exc}", "error", traceback.format_exc()))
        raise
    finally:
        if jsonl is not None:
            jsonl.close()
