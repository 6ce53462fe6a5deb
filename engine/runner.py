"""``run(recipe, sink, cancel)``: one quantization run, from checkpoint to report.

The run folder holds ``recipe.yaml`` (what ran), ``events.jsonl`` (everything
that happened, as it happened) and ``report.json`` (the results). Every stage
emits events; the cancel token is checked between batches and steps. A failed
or cancelled run still leaves a consistent folder: its report says so.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import calib
from .analysis.metrics import evaluate, sqnr_db
from .errors import Cancelled, LowbitError, out_of_memory_error
from .events import (CancelToken, JsonlSink, LayerStats, Log, Metric, MultiSink, ProgressTracker, RunFailed,
                     RunFinished, RunStarted, Sink, StageFinished, StageStarted)
from .fsutil import write_text_atomic
from .quant import schemes
from .quant.select import apply_plan, plan_layers, quant_layers


def resolve_device(name: str) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LowbitError(f"device {name!r} was asked for, but this machine has no usable CUDA device; "
                          "choose device 'cpu' or 'auto'")
    return dev


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename over ``path``."""
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_value))


def _json_value(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(type(v).__name__)


def _clean(v):
    """JSON has no inf / NaN: report them as strings a reader can still parse with float()."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return str(v)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


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
    dist: Any = None  # engine.distributed.Dist under torchrun; None in a single process
    current_stage: Optional[str] = None  # the stage running now (named in out-of-memory messages)

    def stage(self, name: str, total: Optional[int] = None, detail: str = "") -> "_Stage":
        return _Stage(self, name, total, detail)

    def log(self, message: str, level: str = "info") -> None:
        self.sink(Log(message, level))

    def metric(self, stage: str, name: str, value: float, step: Optional[int] = None) -> None:
        self.sink(Metric(stage, name, float(value), step))

    def batches(self, blocks, n_batches: int, batch_size: Optional[int] = None) -> List[torch.Tensor]:
        from .io.data import batches

        return batches(blocks, batch_size or self.recipe.data.batch_size, n_batches)


class _Stage:
    def __init__(self, ctx: RunContext, name: str, total: Optional[int], detail: str):
        self.ctx, self.name, self.total, self.detail = ctx, name, total, detail

    def __enter__(self) -> ProgressTracker:
        self.ctx.cancel.check()
        self.t0 = time.monotonic()
        self.ctx.current_stage = self.name
        self.ctx.sink(StageStarted(self.name, self.total, self.detail))
        return ProgressTracker(self.ctx.sink, self.name, self.total, self.ctx.cancel)

    def __exit__(self, exc_type, exc, tb):
        seconds = time.monotonic() - self.t0
        self.ctx.report.setdefault("timings", {})[self.name] = round(seconds, 3)
        if exc_type is None:
            self.ctx.sink(StageFinished(self.name, seconds))
        return False


def _load(ctx: RunContext) -> None:
    from .io.data import make_splits
    from .io.model import describe_model, load_model

    r = ctx.recipe
    with ctx.stage("load", detail=str(r.model.path)):
        ctx.loaded = load_model(r.model.path, kind=r.model.kind, dtype=r.model.dtype, device=str(ctx.device),
                                trust_remote_code=r.model.trust_remote_code)
        info = describe_model(ctx.loaded)
        ctx.report["model"] = {k: info[k] for k in ("name", "architecture", "kind", "n_params", "dtype")}
        ctx.log(f"model {info['name']}: {info['architecture']}, {info['n_params']:,} parameters, "
                f"{len(info['layers'])} linear layers")
        from .demo import resolve_data_paths

        data_path, eval_path = resolve_data_paths(r)
        if data_path is None:
            raise LowbitError("the recipe has no data.path: choose a text file, a folder of .txt files or a .jsonl file")
        ctx.splits = make_splits(ctx.loaded.tokenizer, data_path, r.data.seq_len, eval_path=eval_path,
                                 text_field=r.data.text_field, eval_fraction=r.data.eval_fraction, seed=r.seed)
        ctx.report["data"] = {"path": str(data_path), "eval_path": eval_path, "seq_len": r.data.seq_len,
                              "calib_blocks": int(ctx.splits.calib.shape[0]),
                              "eval_blocks": int(ctx.splits.eval.shape[0])}
        ctx.log(f"data: {ctx.splits.calib.shape[0]} blocks for calibration/training, "
                f"{ctx.splits.eval.shape[0]} for evaluation, {r.data.seq_len} tokens each")


def _quantize(ctx: RunContext) -> None:
    r = ctx.recipe
    try:
        scheme = schemes.get(r.quant.scheme, r.quant.weight, r.quant.activation)
    except (KeyError, ValueError) as exc:
        raise LowbitError(str(exc).strip("\"'")) from None
    plans, warnings = plan_layers(ctx.loaded.model, scheme, r.quant.include, r.quant.exclude,
                                  r.quant.default_exclusions, [o if isinstance(o, dict) else o.__dict__
                                                               for o in r.quant.overrides])
    for w in warnings:
        ctx.log(w, "warning")
    done = apply_plan(ctx.loaded.model, plans)
    if not done:
        raise LowbitError("no layer was selected for quantization: check quant.include / quant.exclude "
                          "(default exclusions skip heads, embeddings, norms and routers)")
    ctx.report["scheme"] = scheme.name
    ctx.report["weight_format"] = scheme.weight
    ctx.report["activation_format"] = scheme.activation
    ctx.report["plan"] = [p.to_dict() for p in plans]
    ctx.log(f"scheme {scheme.name}: {len(done)} of {len(plans)} linear layers quantized "
            f"(weights {scheme.weight or 'kept'}, activations {scheme.activation or 'kept'})")


def _calibrate(ctx: RunContext) -> None:
    r = ctx.recipe
    model = ctx.loaded.model
    n_layers = len(quant_layers(model))
    with ctx.stage("calibrate weights", n_layers, detail=r.calibration.method) as prog:
        calib.calibrate_weights(model, r.calibration.method, r.calibration.mse_grid, r.calibration.mse_min_ratio,
                                progress=lambda name: prog.step(detail=name))
    batches = ctx.batches(ctx.splits.calib, r.data.calib_batches)
    reduce = None
    if ctx.dist is not None:  # [distributed] each rank calibrates on its own batches, statistics merged
        from .distributed import sync_calibration

        batches = ctx.dist.shard_batches(batches)
        reduce = lambda qs: sync_calibration(qs, ctx.dist)  # noqa: E731
    with ctx.stage("calibrate", len(batches), detail=f"{len(batches)} batches") as prog:
        def loop(m):
            for ids in batches:
                m(input_ids=ids.to(ctx.device))
                prog.step()

        calib.calibrate_activations(model, loop, r.calibration.method, r.calibration.percentile, reduce=reduce)
    if ctx.dist is not None:  # [distributed] identical scales on every rank before wrapping
        from .distributed import sync_amax

        sync_amax(model, ctx.dist)


def evaluate_stage(ctx: RunContext, label: str, baseline: bool = False) -> Dict[str, float]:
    """Evaluate the quantized model against the original; emits and returns ``label``'s metrics."""
    r = ctx.recipe
    batches = ctx.batches(ctx.splits.eval, r.data.eval_batches)
    with ctx.stage(f"evaluate {label}", len(batches)) as prog:
        res = evaluate(ctx.loaded.model, batches, ctx.loaded.kind, ctx.device, on_batch=lambda i: prog.step(),
                       dist=ctx.dist)
    if baseline:
        ctx.report["baseline"] = res["baseline"]
        for k, v in res["baseline"].items():
            if k != "tokens":
                ctx.metric("baseline", k, v)
    for k, v in res["quantized"].items():
        if k != "tokens":
            ctx.metric(label, k, v)
    return res["quantized"]


@torch.no_grad()
def layer_report(ctx: RunContext) -> List[Dict[str, Any]]:
    rows = []
    for name, layer in quant_layers(ctx.loaded.model):
        wq = layer.weight_quantizer
        row = {"name": name, "format": wq.format_name, "activation_format": layer.input_quantizer.format_name,
               "in_features": layer.in_features, "out_features": layer.out_features,
               "params": layer.weight.numel()}
        if wq.fmt is not None and wq.enabled:
            row["weight_sqnr_db"] = sqnr_db(layer.weight, layer.quantized_weight())
        iq = layer.input_quantizer
        if iq.amax is not None:
            row["input_amax"] = float(iq.amax.max())
        rows.append(row)
        ctx.sink(LayerStats(name, wq.format_name, {k: v for k, v in row.items() if k != "name"}))
    return rows


STUDENT_FILE = "student.safetensors"


def save_student(ctx: RunContext) -> Path:
    """Save the quantized student (weights and quantizer scales) so the run can be exported later."""
    from .train.loop import cpu_state_dict, save_state

    path = ctx.run_dir / STUDENT_FILE
    if ctx.dist is not None:  # [distributed] gather the full state on rank 0, which alone writes
        from .distributed import full_state_dict

        state = full_state_dict(ctx.loaded.model, ctx.dist)
        if not ctx.dist.is_main:
            ctx.dist.barrier()
            return path
    else:
        state = cpu_state_dict(ctx.loaded.model)
    tmp = path.with_name(path.name + ".tmp")
    save_state(state, tmp, metadata={"lowbit": "student"})
    os.replace(tmp, path)
    if ctx.dist is not None:
        ctx.dist.barrier()
    return path


def build_student(recipe, plan: List[Dict[str, Any]], state: Dict[str, torch.Tensor], device) -> Any:
    """The recipe's model, quantized by ``plan`` (report["plan"]) and set to a saved student ``state``."""
    from .io.model import load_model
    from .quant.select import LayerPlan, restore_amax

    loaded = load_model(recipe.model.path, kind=recipe.model.kind, dtype=recipe.model.dtype, device=str(device),
                        trust_remote_code=recipe.model.trust_remote_code)
    apply_plan(loaded.model, [LayerPlan(**p) for p in plan])
    restore_amax(loaded.model, state, device)
    loaded.model.load_state_dict(state, strict=False)
    loaded.model.eval()
    return loaded


def load_student(run_dir: os.PathLike, device: str = "cpu"):
    """Rebuild a finished run's quantized model: returns (loaded model, recipe, report)."""
    from safetensors.torch import load_file

    from .recipe import Recipe

    run_dir = Path(run_dir)
    report_path = run_dir / "report.json"
    if not report_path.exists() or not (run_dir / STUDENT_FILE).exists():
        raise LowbitError(f"{run_dir} is not a finished run folder (needs report.json and {STUDENT_FILE})")
    report = json.loads(report_path.read_text())
    recipe = Recipe.load(run_dir / "recipe.yaml")
    state = load_file(str(run_dir / STUDENT_FILE), device=device)
    return build_student(recipe, report["plan"], state, device), recipe, report


def run(recipe, sink: Optional[Sink] = None, cancel: Optional[CancelToken] = None,
        run_dir: Optional[os.PathLike] = None, resume: bool = False, dist=None) -> RunResult:
    """Run ``recipe`` end to end; returns the run folder and the report.

    With ``resume``, ``run_dir`` is an interrupted run: load, quantization and
    calibration are repeated (they are deterministic) and training continues
    from the last checkpoint in ``run_dir/checkpoints``.

    With ``dist`` (an active :class:`engine.distributed.Dist`, under torchrun) every rank
    calls this with the same arguments: the data is split over the ranks, the student is
    sharded for training, and only rank 0 writes events, checkpoint metadata and the report.

    Raises LowbitError subclasses for problems the user can fix (after emitting
    RunFailed), and Cancelled when the token was set.
    """
    if dist is not None and not getattr(dist, "active", False):
        dist = None  # the single-process stand-in: the plain code paths
    main = dist is None or dist.is_main
    cancel = cancel or CancelToken()
    run_dir = Path(run_dir) if run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    resume_from = None
    if resume:
        from .train.loop import latest_checkpoint

        resume_from = latest_checkpoint(run_dir / "checkpoints")
        if resume_from is None:
            raise LowbitError(f"{run_dir} has no training checkpoint to resume from; start the run again instead")
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe.save(run_dir / "recipe.yaml")
    if dist is None:
        jsonl = JsonlSink(run_dir / "events.jsonl")
        out = MultiSink([jsonl, sink])
        device = resolve_device(recipe.device)
    else:  # [distributed] one events file, written by rank 0
        from .distributed import check_recipe, main_only

        check_recipe(recipe, dist)
        dist.barrier()  # the run folder exists before any rank writes into it
        jsonl = JsonlSink(run_dir / "events.jsonl") if main else None
        out = main_only(MultiSink([jsonl, sink]), dist)
        device = dist.device
    torch.manual_seed(recipe.seed)
    ctx = RunContext(recipe, run_dir, out, cancel, device, resume_from=resume_from, dist=dist)
    ctx.report.update({"status": "running", "mode": recipe.mode, "device": str(ctx.device), "run_dir": str(run_dir)})
    if dist is not None:
        ctx.report["distributed"] = dist.describe()
    out(RunStarted(str(run_dir), recipe.to_dict()))
    t0 = time.monotonic()
    try:
        _load(ctx)
        _quantize(ctx)
        if recipe.export.format:
            from .export import preflight

            # refuse an unsupported format / target pairing before the long stages
            preflight(ctx.loaded.model, recipe.export.format, recipe.export.path or run_dir / "export",
                      before_calibration=True)
        _calibrate(ctx)
        ptq = evaluate_stage(ctx, "ptq", baseline=True)
        ctx.report["ptq"] = ptq
        ctx.report["quantized"] = ptq
        ctx.report["layers"] = layer_report(ctx)
        if recipe.analysis.formats and main:
            from .analysis.layers import analysis_stage

            analysis_stage(ctx, recipe.analysis.formats, sensitivity=recipe.analysis.sensitivity)
        if recipe.mode in ("qat", "qad"):
            from .train import train_stage

            train_stage(ctx)
        save_student(ctx)
        if recipe.export.format and dist is not None:  # [distributed] rank 0 exports a gathered copy
            from .distributed import export_on_main

            export_on_main(ctx)
        elif recipe.export.format:
            from .export import export_stage

            export_stage(ctx)
        if recipe.analysis.benchmark and dist is None:
            from .analysis.benchmark import benchmark_stage

            benchmark_stage(ctx)
        ctx.report["status"] = "completed"
        ctx.report["timings"]["total"] = round(time.monotonic() - t0, 3)
        report = _clean(ctx.report)
        if main:
            write_json_atomic(run_dir / "report.json", report)
        out(RunFinished(report, str(run_dir)))
        return RunResult(run_dir, report)
    except Cancelled as exc:
        ctx.report["status"] = "cancelled"
        if main:
            write_json_atomic(run_dir / "report.json", _clean(ctx.report))
        out(RunFailed(str(exc), "cancelled"))
        raise
    except LowbitError as exc:
        ctx.report.update(status="failed", error=str(exc))
        if main:
            write_json_atomic(run_dir / "report.json", _clean(ctx.report))
        out(RunFailed(str(exc), "error"))
        raise
    except torch.OutOfMemoryError:
        # CUDA OOM: a user-fixable problem with a user-facing message (smaller batches, CPU teacher)
        err = out_of_memory_error(f"in stage '{ctx.current_stage}'" if ctx.current_stage else "during the run",
                                  recipe)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        ctx.report.update(status="failed", error=str(err))
        if main:
            write_json_atomic(run_dir / "report.json", _clean(ctx.report))
        out(RunFailed(str(err), "error"))
        raise err from None
    except Exception as exc:
        ctx.report.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        if main:
            write_json_atomic(run_dir / "report.json", _clean(ctx.report))
        out(RunFailed(f"{type(exc).__name__}: {exc}", "error", traceback.format_exc()))
        raise
    finally:
        if jsonl is not None:
            jsonl.close()
