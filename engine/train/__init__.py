"""Training: one loop for QAT and QAD (they differ only in their loss), the frozen teacher, settings.

The run's training stage, which wires this to the run context, is
:mod:`engine.pipeline.stages.train`.
"""

from __future__ import annotations

import copy

import torch

from ..quant.select import remove_quantization
from .loop import Trainer, TrainSettings, latest_checkpoint, lr_factor

__all__ = ["Trainer", "TrainSettings", "latest_checkpoint", "lr_factor", "frozen_original", "settings_from_recipe"]


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
        gradient_checkpointing=t.gradient_checkpointing, master_weights=t.master_weights, early_stop_perplexity=t.early_stop_perplexity,
        seed=recipe.seed,
    )
