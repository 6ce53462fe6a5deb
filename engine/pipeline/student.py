"""The run's student on disk: saved after the run, rebuilt for export and for later sessions."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List

import torch

from ..errors import LowbitError
from ..io.model import load_model
from ..parallel.wrap import full_state_dict
from ..quant.select import LayerPlan, apply_plan, restore_amax
from ..recipe import Recipe
from ..statefile import load_state, save_state_sharded, state_exists
from .context import RunContext

STUDENT_FILE = "student.safetensors"


def save_student(ctx: RunContext) -> Path:
    """Save the quantized student (weights and quantizer scales) so the run can be exported later.

    Written shard by shard (``export.max_shard_mb`` each; engine.statefile.save_state_sharded): one
    process writes straight from the model, holding one shard beside it; several gather the whole
    state on rank 0, which alone writes."""
    path = ctx.run_dir / STUDENT_FILE
    if ctx.dist.active:
        items = full_state_dict(ctx.loaded.model, ctx.dist).items()
    else:
        items = ctx.loaded.model.state_dict().items()
    if ctx.dist.is_main:
        save_state_sharded(items, path, ctx.recipe.export.max_shard_mb, metadata={"lowbit": "student"})
    ctx.dist.barrier()
    return path


def build_student(recipe, plan: List[Dict[str, Any]], state: Dict[str, torch.Tensor], device) -> Any:
    """The recipe's model, quantized by ``plan`` (report["plan"]) and set to a saved student ``state``."""
    loaded = load_model(recipe.model.path, kind=recipe.model.kind, dtype=recipe.model.dtype, device=str(device),
                        trust_remote_code=recipe.model.trust_remote_code)
    apply_plan(loaded.model, [LayerPlan(**p) for p in plan])
    restore_amax(loaded.model, state, device)
    loaded.model.load_state_dict(state, strict=False)
    loaded.model.eval()
    return loaded


def load_student(run_dir: os.PathLike, device: str = "cpu"):
    """Rebuild a finished run's quantized model: returns (loaded model, recipe, report)."""
    run_dir = Path(run_dir)
    report_path = run_dir / "report.json"
    if not report_path.exists() or not state_exists(run_dir / STUDENT_FILE):
        raise LowbitError(f"{run_dir} is not a finished run folder (needs report.json and {STUDENT_FILE})")
    report = json.loads(report_path.read_text())
    recipe = Recipe.load(run_dir / "recipe.yaml")
    state = load_state(run_dir / STUDENT_FILE, device=device)  # one file, or shards with an index
    return build_student(recipe, report["plan"], state, device), recipe, report


def rebuild_student(ctx, state: Dict[str, torch.Tensor]):
    """A plain (unsharded) copy of the run's student from a full state dict: LoadedModel with the same
    tokenizer and path, for the single-process exporters."""
    loaded = build_student(ctx.recipe, ctx.report["plan"], state, ctx.device)
    return replace(ctx.loaded, model=loaded.model)
