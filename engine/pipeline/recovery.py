"""How much of the PTQ loss QAT and QAD win back, next to plain fine-tuning with the same budget.

One recipe is run as PTQ, QAT and QAD (same data, seed and steps); a fourth run
fine-tunes the original model without quantization for the same steps, so that
recovery is not mistaken for the effect of extra training.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from ..analysis.metrics import evaluate
from ..devices import resolve_device
from ..events import CancelToken
from ..io.data import batches, make_splits
from ..io.demo import resolve_data_paths
from ..io.model import load_model
from ..train import settings_from_recipe
from ..train.loop import Trainer
from .runner import run


def finetune_only(recipe) -> Dict[str, float]:
    """Perplexity of the original model after ``train.steps`` steps of unquantized fine-tuning."""
    device = resolve_device(recipe.device)
    loaded = load_model(recipe.model.path, kind=recipe.model.kind, dtype=recipe.model.dtype, device=str(device))
    r = recipe
    data_path, eval_path = resolve_data_paths(r)
    splits = make_splits(loaded.tokenizer, data_path, r.data.seq_len, eval_path=eval_path,
                         text_field=r.data.text_field, eval_fraction=r.data.eval_fraction, seed=r.seed)
    torch.manual_seed(r.seed)
    settings = settings_from_recipe(r.with_updates({"mode": "qat"}))
    trainer = Trainer(loaded.model, None, loaded.kind, splits.train, settings, device, lambda e: None, CancelToken())
    trainer.fit()
    res = evaluate(loaded.model, batches(splits.eval, r.data.batch_size, r.data.eval_batches), loaded.kind, device,
                   compare=False)
    return res["baseline"]


def recovery(recipe, workdir: Optional[Path] = None, log: Callable[[str], None] = print) -> Dict[str, object]:
    """Run PTQ, QAT (where the model has a task loss: causal LMs) and QAD with the same recipe.

    Causal LMs: the share of the PTQ perplexity gap each mode wins back, and plain fine-tuning.
    Encoders: the share of the PTQ sentence-embedding cosine gap (to 1, the original) QAD wins back.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="lowbit-recovery-"))
    out: Dict[str, object] = {"scheme": recipe.quant.scheme, "steps": recipe.train.steps}
    first = run(recipe.with_updates({"mode": "ptq", "export.format": None}), run_dir=workdir / "ptq").report
    out["baseline"], out["ptq"] = first["baseline"], first["ptq"]
    kind = first["model"]["kind"]
    out["kind"] = kind
    log("ptq: done")
    for mode in ("qat", "qad"):
        if mode == "qat" and kind == "encoder":
            log("qat: skipped (an encoder has no task loss to train on)")
            continue
        rep = run(recipe.with_updates({"mode": mode, "export.format": None}), run_dir=workdir / mode).report
        out[mode] = rep["final"]
        out[f"{mode}_settings"] = dict(rep.get("train_settings") or {})
        if rep.get("lr_probe"):
            out[f"{mode}_settings"]["lr_probe"] = rep["lr_probe"]
        log(f"{mode}: done")
    if kind == "encoder":
        out["metric"] = "embedding_cosine"
        ptq = out["ptq"]["embedding_cosine"]
        gap = 1.0 - ptq
        out["qad_recovered"] = (out["qad"]["embedding_cosine"] - ptq) / gap if gap > 0 else float("nan")
        if "cls_embedding_cosine" in out["ptq"] and "cls_embedding_cosine" in out["qad"]:
            cls_ptq = out["ptq"]["cls_embedding_cosine"]
            out["qad_recovered_cls"] = ((out["qad"]["cls_embedding_cosine"] - cls_ptq) / (1.0 - cls_ptq)
                                        if cls_ptq < 1.0 else float("nan"))
    elif "perplexity" in out["baseline"]:
        out["metric"] = "perplexity"
        out["finetune_only"] = finetune_only(recipe)
        base, ptq = out["baseline"]["perplexity"], out["ptq"]["perplexity"]
        gap = ptq - base
        for mode in ("qat", "qad"):
            out[f"{mode}_recovered"] = (ptq - out[mode]["perplexity"]) / gap if gap > 0 else float("nan")
    return out


def format_table(res: Dict[str, object]) -> str:
    rows = [("baseline (original)", res["baseline"]), ("PTQ", res["ptq"]), ("QAT", res.get("qat", {})),
            ("QAD", res.get("qad", {})), ("fine-tune only, no quant", res.get("finetune_only", {}))]
    if res.get("kind") == "encoder":
        rows = rows[:4]
    keys = [k for k in ("perplexity", "kl", "top1_agreement", "embedding_cosine", "cls_embedding_cosine", "cosine")
            if any(k in r for _, r in rows)]
    lines = [f"{res['scheme']}, {res['steps']} training steps",
             f"{'':<26}" + "".join(f"{k:>22}" for k in keys)]
    for label, r in rows:
        lines.append(f"{label:<26}" + "".join(f"{r[k]:>22.5f}" if k in r else f"{'-':>22}" for k in keys))
    what = "sentence-embedding cosine" if res.get("kind") == "encoder" else "perplexity"
    for mode in ("qat", "qad"):
        if f"{mode}_recovered" in res:
            lines.append(f"{mode.upper()} recovers {100 * res[f'{mode}_recovered']:.1f}% of the PTQ {what} gap")
    if "qad_recovered_cls" in res:
        lines.append(f"QAD recovers {100 * res['qad_recovered_cls']:.1f}% of the PTQ CLS-pooled cosine gap")
    if res.get("kind") == "encoder":
        lines.append("QAT: not possible on an encoder without a task head")
    for mode in ("qat", "qad"):
        st = res.get(f"{mode}_settings")
        if st:
            # a probed rate is the lr the run trained with: say where it came from, not the number twice
            probe = f" (train.lr auto: probed {len(st['lr_probe']['held_out_loss'])} rates)" if st.get("lr_probe") else ""
            lines.append(f"{mode.upper()} settings: lr {st.get('lr', 0):g}{probe}, batch {st.get('batch_size')}, "
                         f"warm-up {st.get('warmup_steps')}, dropout {st.get('dropout')}")
    return "\n".join(lines)
