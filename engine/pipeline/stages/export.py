"""Stage: export the student in a serving layout, then reload and verify it; and ``lowbit export``
of a finished run folder.

Exports are written by one process from one unsharded model: the run's own student
in a single process, a copy rebuilt from ``student.safetensors`` on rank 0 of a
sharded run (the other ranks wait).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ...errors import ExportError, LowbitError
from ...export import (DEFAULT_SHARD_MB, VERIFY_BATCHES, check_output_folder, export_model, preflight,
                       quantized_layers, summary_line, verify_export, writer_for)
from ...fsutil import write_json_atomic
from ...io.data import batches as make_batches
from ...io.demo import resolve_data_paths
from ...io.samples import splits_for
from ...parallel.wrap import is_sharded, unwrap
from ...statefile import load_state
from ..context import RunContext
from ..student import STUDENT_FILE, load_student, rebuild_student


def _recipe_dict(recipe) -> Optional[Dict[str, Any]]:
    to_dict = getattr(recipe, "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict()
        except Exception:
            return None
    return recipe if isinstance(recipe, dict) else None


def _n_verify_batches(data) -> int:
    return max(1, min(VERIFY_BATCHES, int(getattr(data, "eval_batches", None) or VERIFY_BATCHES)))


@contextmanager
def _unsharded_student(ctx: RunContext):
    """The run's student as one plain model: itself when whole, else rebuilt from the saved student file."""
    model = ctx.loaded.model
    if unwrap(model) is model and not is_sharded(model):
        yield ctx.loaded
        return
    state = load_state(Path(ctx.run_dir) / STUDENT_FILE)
    yield rebuild_student(ctx, state)


def export_stage(ctx: RunContext) -> Optional[Dict[str, Any]]:
    """Export the run's student as ``recipe.export.format`` on rank 0, verify it, record ``report["export"]``."""
    result = None
    if ctx.dist.is_main:
        with _unsharded_student(ctx) as loaded:
            result = _export(ctx, loaded)
    ctx.dist.barrier()
    return result


def _export(ctx: RunContext, loaded) -> Dict[str, Any]:
    spec = ctx.recipe.export
    target = spec.format
    out = Path(spec.path) if getattr(spec, "path", None) else Path(ctx.run_dir) / "export"
    model = loaded.model
    n_layers = len(quantized_layers(model))
    with ctx.stage("export", n_layers, detail=f"{target} -> {out}") as prog:
        result = export_model(model, target, out, recipe=_recipe_dict(ctx.recipe),
                              source_dir=getattr(loaded, "path", None),
                              tokenizer=getattr(loaded, "tokenizer", None),
                              max_shard_mb=getattr(spec, "max_shard_mb", None) or DEFAULT_SHARD_MB,
                              on_layer=lambda name: prog.step(detail=name))
    ctx.report["export"] = result
    if getattr(spec, "verify", True):
        batches = ctx.batches(ctx.splits.eval, _n_verify_batches(ctx.recipe.data))
        with ctx.stage("verify export", len(batches)) as prog:
            result["verify"] = verify_export(out, model, batches, on_batch=lambda i: prog.step())
        ctx.metric("export", "max_abs_logit_diff", result["verify"]["max_abs_logit_diff"])
    ctx.log(summary_line(result), "info" if result.get("verify", {}).get("passed", True) else "error")
    if not result.get("verify", {}).get("passed", True):
        raise ExportError(f"the {target} export in {out} does not reproduce the quantized model: max |logit diff| "
                          f"{result['verify']['max_abs_logit_diff']:.3g} > {result['verify']['tolerance']:.3g}")
    return result


def _run_eval_batches(loaded, recipe) -> tuple:
    """The run's first evaluation batches, rebuilt from its recipe; random tokens when its data is gone."""
    data = recipe.data
    n = _n_verify_batches(data)
    if loaded.tokenizer is not None:
        try:
            data_path, eval_path = resolve_data_paths(recipe)  # the demo's data by name, too
            if data_path is not None:
                splits = splits_for(loaded.tokenizer, loaded.kind, data_path, data.seq_len, data.samples,
                                    eval_path=eval_path, text_field=data.text_field,
                                    eval_fraction=data.eval_fraction, seed=recipe.seed)
                return make_batches(splits.eval, data.batch_size, n), "eval data"
        except LowbitError:
            pass
    # the comparison is numerical (same logits from both models), so any tokens will do
    vocab = int(getattr(loaded.model.config, "vocab_size", 0) or 256)
    g = torch.Generator().manual_seed(int(recipe.seed))
    return [torch.randint(0, vocab, (data.batch_size, data.seq_len), generator=g) for _ in range(n)], \
        "random tokens (the run's data is not available)"


def export_run(run_dir: os.PathLike, format: str, out: os.PathLike, verify: bool = True,
               max_shard_mb: Optional[float] = None, device: str = "cpu") -> Dict[str, Any]:
    """Export a finished run folder: rebuild its student, export, verify, update its report.json."""
    run_dir = Path(run_dir)
    writer_for(format)
    check_output_folder(out)  # before the (slow) rebuild of the student
    loaded, recipe, report = load_student(run_dir, device=device)
    spec = getattr(recipe, "export", None)
    shard_mb = max_shard_mb or getattr(spec, "max_shard_mb", None) or DEFAULT_SHARD_MB
    preflight(loaded.model, format, out)
    result = export_model(loaded.model, format, out, recipe=_recipe_dict(recipe), source_dir=loaded.path,
                          tokenizer=loaded.tokenizer, max_shard_mb=shard_mb)
    if verify:
        batches, inputs = _run_eval_batches(loaded, recipe)
        result["verify"] = {**verify_export(out, loaded.model, batches), "inputs": inputs}
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    report["export"] = result
    write_json_atomic(run_dir / "report.json", report)
    if verify and not result["verify"]["passed"]:
        raise ExportError(f"the {result['format']} export in {out} does not reproduce the quantized model: "
                          f"max |logit diff| {result['verify']['max_abs_logit_diff']:.3g} > "
                          f"{result['verify']['tolerance']:.3g}")
    return result
