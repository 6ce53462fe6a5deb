"""A format sweep: the same model and data under several schemes, then the trade-off between them.

``run_sweep`` runs PTQ for every scheme and QAD for the schemes asked for,
each as an ordinary run folder inside the sweep folder (so the library, the
Results step, ``lowbit export`` and ``lowbit report`` treat them like any run).
All runs share one recipe apart from the scheme and the mode: the same data,
calibration, evaluation blocks, seed and training settings. With a bit budget
the sweep also asks :func:`mixed_precision` for a per-layer mix of the swept
weight formats and runs that mix as one more PTQ run (``mixed-<budget>b``), so
it lands on the same axes.

``sweep.json`` in the sweep folder records the plan, each run's outcome and the
trade-off points with their Pareto flags; it is rewritten (atomically) after
every run, so a sweep that stops part-way still shows what it finished.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import Cancelled, LowbitError
from ..events import CancelToken, Log, Sink
from ..fsutil import write_json_atomic

from .library import SWEEP, read_run
from .tradeoff import MIXED_PREFIX, ship_rows, trade_points

SWEEP_VERSION = 1
DEFAULT_SCHEMES = ("W8A8-INT8", "W4A16-INT4", "W4A16-NVFP4", "W4A16-MXFP4", "W2A16-INT2")
MIXED_BATCHES = 4  # calibration batches the mixed-precision sensitivity measures


@dataclass
class SweepSpec:
    base: Dict[str, Any]  # a recipe as plain data: model, data, calibration, train, seed, device
    schemes: List[str]
    qad: List[str] = field(default_factory=list)  # schemes that also get a QAD run
    mixed_budget: Optional[float] = None  # average bits per weight for the per-layer mix; None = no mix
    mixed_formats: List[str] = field(default_factory=list)  # default: the swept schemes' weight formats

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class SweepRun:
    name: str
    scheme: str
    mode: str
    path: str
    status: str = "pending"  # pending | completed | failed | cancelled
    error: str = ""
    seconds: Optional[float] = None


def run_name(scheme: str, mode: str) -> str:
    return f"{scheme}-{mode}"


def check_spec(spec: SweepSpec) -> None:
    from ..quant import schemes as registry

    if not spec.schemes:
        raise LowbitError("the sweep has no schemes; give at least one, e.g. --formats W4A16-INT4,W4A16-NVFP4")
    known = set(registry.names())
    for s in list(spec.schemes) + list(spec.qad):
        if s not in known:
            raise LowbitError(f"unknown scheme '{s}' in the sweep; choose from {', '.join(sorted(known))}")
    for s in spec.qad:
        if s not in spec.schemes:
            raise LowbitError(f"QAD is asked for {s}, which is not one of the swept schemes; add it to the schemes")
    if spec.mixed_budget is not None and spec.mixed_budget <= 0:
        raise LowbitError(f"the mixed-precision budget must be a positive number of bits per weight, "
                          f"not {spec.mixed_budget}")


def plan_runs(spec: SweepSpec, out: Path) -> List[SweepRun]:
    runs = [SweepRun(run_name(s, "ptq"), s, "ptq", str(out / run_name(s, "ptq"))) for s in spec.schemes]
    runs += [SweepRun(run_name(s, "qad"), s, "qad", str(out / run_name(s, "qad"))) for s in spec.qad]
    if spec.mixed_budget is not None:
        name = f"{MIXED_PREFIX}-{spec.mixed_budget:g}b-ptq"
        runs.append(SweepRun(name, "custom", "ptq", str(out / name)))
    return runs


def recipe_for(spec: SweepSpec, scheme: str, mode: str):
    from ..recipe import Recipe

    d = copy.deepcopy(spec.base)
    quant = dict(d.get("quant") or {})
    quant.update({"scheme": scheme, "weight": None, "activation": None, "overrides": []})
    d["quant"] = quant
    d["mode"] = mode
    if mode == "ptq":
        d.setdefault("export", {})
    return Recipe.from_dict(d, require_version=False)


@dataclass
class SweepResult:
    out: str
    runs: List[SweepRun]
    points: List[Dict[str, Any]]
    ship: List[Dict[str, Any]]
    mixed: Optional[Dict[str, Any]] = None
    seconds: float = 0.0

    def to_dict(self, spec: SweepSpec) -> Dict[str, Any]:
        return {"version": SWEEP_VERSION, "spec": spec.to_dict(), "runs": [asdict(r) for r in self.runs],
                "points": self.points, "ship": self.ship, "mixed": self.mixed, "seconds": round(self.seconds, 3)}


def _trade_off(runs: Sequence[SweepRun]):
    summaries = [read_run(r.path, name=r.name) for r in runs if Path(r.path).is_dir()]
    points = trade_points(summaries)
    return [p.to_dict() for p in points], [row.to_dict() for row in ship_rows(points)]


def _mixed_recipe(spec: SweepSpec, sink: Sink, cancel: CancelToken):
    """The per-layer mix for ``spec.mixed_budget``, measured on the sweep's own calibration data."""
    from .. import formats as registry
    from ..analysis.layers import candidate_layers
    from ..analysis.mixed import mixed_precision, mixed_recipe_dict
    from ..io.demo import resolve_data_paths
    from ..io.data import batches
    from ..io.samples import splits_for
    from ..io.model import load_model
    from ..quant import schemes as scheme_registry
    from ..recipe import Recipe
    from ..devices import resolve_device

    base = recipe_for(spec, spec.schemes[0], "ptq")
    fmts = list(spec.mixed_formats) or sorted({scheme_registry.get(s).weight for s in spec.schemes
                                               if scheme_registry.get(s).weight})
    fmts = [registry.get(f).name for f in fmts]
    device = resolve_device(base.device)
    loaded = load_model(base.model.path, kind=base.model.kind, dtype=base.model.dtype, device=str(device),
                        trust_remote_code=base.model.trust_remote_code)
    data_path, eval_path = resolve_data_paths(base)
    if data_path is None:
        raise LowbitError("the sweep's recipe has no data.path: choose a text file, a folder of .txt files or a "
                          ".jsonl file")
    splits = splits_for(loaded.tokenizer, loaded.kind, data_path, base.data.seq_len, base.data.samples,
                        eval_path=eval_path, text_field=base.data.text_field,
                        eval_fraction=base.data.eval_fraction, seed=base.seed)
    calib = batches(splits.calib, base.data.batch_size, min(base.data.calib_batches, MIXED_BATCHES))
    evals = batches(splits.eval, base.data.batch_size, min(base.data.eval_batches, MIXED_BATCHES))
    layers = candidate_layers(loaded.model, base.quant.include, base.quant.exclude, base.quant.default_exclusions)
    res = mixed_precision(loaded.model, calib, evals, fmts, float(spec.mixed_budget), layers=layers,
                          device=device, sink=sink, cancel=cancel)
    params = {n: m.weight.numel() for n, m in layers}
    d = mixed_recipe_dict(res.plan.assignment, params, base.to_dict())
    d["mode"] = "ptq"
    summary = {"budget_bits": res.plan.budget_bits, "achieved_bits": res.plan.achieved_bits, "formats": fmts,
               "measured_kl": res.measured_kl, "uniform_format": res.uniform_format, "uniform_kl": res.uniform_kl}
    return Recipe.from_dict(d, require_version=False), summary


def run_sweep(spec: SweepSpec, out: os.PathLike, sink: Optional[Sink] = None, cancel: Optional[CancelToken] = None,
              on_run: Optional[Callable[[int, int, SweepRun], None]] = None) -> SweepResult:
    """Run every run of ``spec`` into ``out`` (one folder each); returns the runs and the trade-off.

    ``sink`` receives every run's events; ``on_run(i, n, run)`` is called before run ``i`` of ``n``
    and once more with ``i == n`` at the end. A failed run is recorded and the sweep goes on;
    cancelling stops it (Cancelled is raised after sweep.json records what finished).
    """
    from .runner import run

    check_spec(spec)
    cancel = cancel or CancelToken()
    out = Path(out)
    if (out / SWEEP).exists():
        raise LowbitError(f"{out} already holds a sweep (sweep.json); choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(spec, out)
    result = SweepResult(str(out), runs, [], [])
    t0 = time.monotonic()

    def save() -> None:
        result.points, result.ship = _trade_off([r for r in runs if r.status == "completed"])
        result.seconds = time.monotonic() - t0
        write_json_atomic(out / SWEEP, result.to_dict(spec))

    save()
    emit = sink or (lambda e: None)
    try:
        for i, r in enumerate(runs):
            cancel.check()
            if on_run is not None:
                on_run(i, len(runs), r)
            emit(Log(f"sweep: run {i + 1} of {len(runs)}: {r.name}"))
            started = time.monotonic()
            try:
                if r.scheme == "custom":
                    recipe, result.mixed = _mixed_recipe(spec, emit, cancel)
                else:
                    recipe = recipe_for(spec, r.scheme, r.mode)
                run(recipe, sink=sink, cancel=cancel, run_dir=r.path)
                r.status = "completed"
            except Cancelled:
                r.status = "cancelled"
                raise
            except LowbitError as exc:
                r.status, r.error = "failed", str(exc)
                emit(Log(f"sweep: {r.name} failed: {exc}", "warning"))
            finally:
                r.seconds = round(time.monotonic() - started, 3)
                save()
    finally:
        save()
    if on_run is not None:
        on_run(len(runs), len(runs), runs[-1])
    return result


def read_sweep(folder: os.PathLike) -> Dict[str, Any]:
    """sweep.json of a sweep folder, with the trade-off recomputed from its run folders as they are now."""
    p = Path(folder) / SWEEP
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LowbitError(f"{p} is not a readable sweep file ({exc})") from exc
    runs = [SweepRun(**{k: v for k, v in r.items() if k in SweepRun.__dataclass_fields__}) for r in data.get("runs", [])]
    for r in runs:  # the folders may have been renamed inside the sweep: keep what is there
        if not Path(r.path).is_dir() and (Path(folder) / r.name).is_dir():
            r.path = str(Path(folder) / r.name)
    data["points"], data["ship"] = _trade_off([r for r in runs if r.status == "completed"])
    return data
