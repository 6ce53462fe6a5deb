"""Stage: QAT or QAD of the calibrated student, then its final evaluation."""

from __future__ import annotations

from ...analysis.metrics import evaluate
from ...devices import resolve_device
from ...parallel.wrap import wrap_student, wrap_teacher
from ...quant.select import quantizers
from ...train import Trainer, settings_from_recipe
from ...train.losses import student_randomness
from ...train.lr_probe import probe_lr
from ..context import RunContext
from .calibrate import original_model


def train_stage(ctx: RunContext) -> None:
    """Fine-tune the calibrated student; adds ``final``, ``loss_history`` and ``train`` to the report."""
    r = ctx.recipe
    model = ctx.loaded.model
    dist = ctx.dist
    teacher_device = resolve_device(r.train.teacher_device) if r.train.teacher_device else ctx.device
    if dist.active and teacher_device.type == "cuda":
        teacher_device = ctx.device  # one GPU per rank: the rank's own
    teacher = original_model(ctx, teacher_device)  # the loaded model, also after GPTQ rewrote weights
    settings = settings_from_recipe(r, ctx.loaded.kind)
    if r.train.learnable_scales:
        qs = [q for q in quantizers(model) if q.enabled]
        learned = sum(q.enable_learnable_scale() for q in qs)
        ctx.log(f"learnable scales: {learned} of {len(qs)} quantizers learn their scale "
                "(integer and FP8 formats with a calibrated scale; block-scaled formats keep theirs)")
    eval_batches = ctx.batches(ctx.splits.eval, r.data.eval_batches)
    # wrapped after quantization + calibration (scales already in sync); one process: as they are
    if dist.active and settings.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    student = wrap_student(model, dist)  # FSDP2: `model` itself, now sharded; DDP: a wrapper
    teacher = wrap_teacher(teacher, dist)
    if dist.active:
        ctx.log(f"distributed: {dist.world_size} processes, student {dist.strategy}, teacher {dist.teacher}; "
                f"{settings.batch_size // dist.world_size} of each {settings.batch_size} rows per process")

    def eval_fn(step: int):
        res = evaluate(model, eval_batches, ctx.loaded.kind, ctx.device, reference=teacher, dist=dist)
        return {k: v for k, v in res["quantized"].items() if k != "tokens"}

    if r.train.lr == "auto" and ctx.resume_from is None:
        with ctx.stage("probe learning rate", len(r.train.lr_candidates),
                       detail=f"{len(r.train.lr_candidates)} rates x {r.train.lr_probe_steps} steps"):
            best, scores = probe_lr(student, teacher, ctx.loaded.kind, ctx.splits.train, settings,
                                    r.train.lr_candidates, r.train.lr_probe_steps, ctx.device, ctx.sink, ctx.cancel,
                                    dist=dist, log=ctx.log)
        ctx.report["lr_probe"] = {"chosen": best, "held_out_loss": {f"{k:g}": v for k, v in scores.items()}}
        ctx.metric("train", "lr_probe_chosen", best)
        ctx.log(f"learning rate: {best:g} (the lowest held-out loss of {len(scores)} probed)")
        settings = settings_from_recipe(r, ctx.loaded.kind, lr=best)
    elif r.train.lr == "auto":  # a resumed run keeps the rate its first part chose
        chosen = (ctx.report.get("lr_probe") or {}).get("chosen")
        settings = settings_from_recipe(r, ctx.loaded.kind, lr=chosen or r.train.lr_candidates[0])
    ctx.report["train_settings"] = {"lr": settings.lr, "batch_size": settings.batch_size,
                                    "warmup_steps": settings.warmup_steps,
                                    # what the student trained with: 'auto' resolved to on / off
                                    "dropout": "on" if student_randomness(settings.dropout, settings.mode) else "off"}
    trainer = Trainer(student, teacher, ctx.loaded.kind, ctx.splits.train, settings, ctx.device, ctx.sink,
                      ctx.cancel, checkpoint_dir=ctx.run_dir / "checkpoints", evaluate=eval_fn, dist=dist,
                      ptq=ctx.report.get("ptq"))
    resume_from = ctx.resume_from
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
        ctx.log(f"resumed from {resume_from.name} (step {trainer.step} of {settings.steps})")
    with ctx.stage("train", settings.steps, detail=f"{r.mode.upper()}, {settings.steps} steps"):
        summary = trainer.fit()
    trainer.release()  # the optimizer state and master weights are not needed by the final evaluation
    with ctx.stage(f"evaluate final", len(eval_batches)) as prog:
        res = evaluate(model, eval_batches, ctx.loaded.kind, ctx.device, reference=teacher,
                       on_batch=lambda i: prog.step(), dist=dist)
    final = res["quantized"]
    for k, v in final.items():
        if k != "tokens":
            ctx.metric("final", k, v)
    ctx.report["final"] = final
    ctx.report["quantized"] = final
    ctx.report["train"] = summary
    ctx.report["loss_history"] = trainer.history
    ctx.report["eval_history"] = trainer.evals
    del teacher
