"""The training stage of a run: QAT or QAD after calibration."""

from __future__ import annotations

import copy

import torch

from ..quant.select import remove_quantization
from .loop import Trainer, TrainSettings, latest_checkpoint, lr_factor  # noqa: F401


def frozen_original(model: torch.nn.Module, device=None) -> torch.nn.Module:
    """A full-precision, frozen copy of ``model`` as it is now (quantizers removed)."""
    teacher = copy.deepcopy(model)
    remove_quantization(teacher)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if device is not None:
        teacher.to(device)
    return teacher


def settings_from_recipe(recipe) -> TrainSettings:
    t = recipe.train
    return TrainSettings(
        mode=recipe.mode, steps=t.steps, lr=t.lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
        schedule=t.schedule, batch_size=t.batch_size or recipe.data.batch_size, grad_accum=t.grad_accum,
        grad_clip=t.grad_clip, eval_every=t.eval_every, checkpoint_every=t.checkpoint_every,
        kd_temperature=t.kd_temperature, kd_alpha=t.kd_alpha, kd_hidden_weight=t.kd_hidden_weight,
        gradient_checkpointing=t.gradient_checkpointing, early_stop_perplexity=t.early_stop_perplexity,
        seed=recipe.seed,
    )


def train_stage(ctx) -> None:
    """Fine-tune the calibrated student; adds ``final``, ``loss_history`` and ``train`` to the report."""
    from ..analysis.metrics import evaluate
    from ..runner import resolve_device

    r = ctx.recipe
    model = ctx.loaded.model
    dist = getattr(ctx, "dist", None)
    teacher_device = resolve_device(r.train.teacher_device) if r.train.teacher_device else ctx.device
    if dist is not None and teacher_device.type == "cuda":
        teacher_device = ctx.device  # [distributed] one GPU per rank: the rank's own
    teacher = frozen_original(model, teacher_device)
    settings = settings_from_recipe(r)
    if r.train.learnable_scales:
        from ..quant.select import quantizers

        qs = [q for q in quantizers(model) if q.enabled]
        learned = sum(q.enable_learnable_scale() for q in qs)
        ctx.log(f"learnable scales: {learned} of {len(qs)} quantizers learn their scale "
                "(integer and FP8 formats with a calibrated scale; block-scaled formats keep theirs)")
    eval_batches = ctx.batches(ctx.splits.eval, r.data.eval_batches)
    student = model
    if dist is not None:  # [distributed] wrap after quantization + calibration (scales already in sync)
        from ..distributed import wrap_student, wrap_teacher

        if settings.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        student = wrap_student(model, dist)  # FSDP2: `model` itself, now sharded; DDP: a wrapper
        teacher = wrap_teacher(teacher, dist)
        ctx.log(f"distributed: {dist.world_size} processes, student {dist.strategy}, teacher {dist.teacher}; "
                f"{settings.batch_size // dist.world_size} of each {settings.batch_size} rows per process")

    def eval_fn(step: int):
        res = evaluate(model, eval_batches, ctx.loaded.kind, ctx.device, reference=teacher, dist=dist)
        return {k: v for k, v in res["quantized"].items() if k != "tokens"}

    trainer = Trainer(student, teacher, ctx.loaded.kind, ctx.splits.train, settings, ctx.device, ctx.sink,
                      ctx.cancel, checkpoint_dir=ctx.run_dir / "checkpoints", evaluate=eval_fn, dist=dist)
    resume_from = getattr(ctx, "resume_from", None)
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
        ctx.log(f"resumed from {resume_from.name} (step {trainer.step} of {settings.steps})")
    with ctx.stage("train", settings.steps, detail=f"{r.mode.upper()}, {settings.steps} steps"):
        summary = trainer.fit()
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
