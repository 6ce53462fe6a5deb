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


# Defaults per model kind, measured on the demo encoder / demo Llama and all-MiniLM-L6-v2 (issue 13):
# sentence encoders distill best from batches of many short sentences.
KIND_BATCH = {"encoder": 32}


def settings_from_recipe(recipe, kind: str = "causal-lm", lr: float = None) -> TrainSettings:
    """The trainer's settings: the recipe's train section, with the model kind's defaults where it says null.

    ``lr`` replaces ``train.lr`` (the probed rate when the recipe says 'auto')."""
    t = recipe.train
    batch = t.batch_size or KIND_BATCH.get(kind) or recipe.data.batch_size
    rate = lr if lr is not None else t.lr
    if rate == "auto":
        rate = t.lr_candidates[0]  # placeholder until the probe has run
    return TrainSettings(
        mode=recipe.mode, steps=t.steps, lr=float(rate), weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
        schedule=t.schedule, batch_size=batch, grad_accum=t.grad_accum,
        grad_clip=t.grad_clip, eval_every=t.eval_every, checkpoint_every=t.checkpoint_every,
        kd_temperature=t.kd_temperature, kd_alpha=t.kd_alpha, kd_hidden_weight=t.kd_hidden_weight,
        gradient_checkpointing=t.gradient_checkpointing, master_weights=t.master_weights, chunked_vocab_loss=t.chunked_vocab_loss, early_stop_perplexity=t.early_stop_perplexity,
        seed=recipe.seed, kd_alpha_final=t.kd_alpha_final, kd_anneal=t.kd_anneal,
        kd_hidden_layers=tuple(t.kd_hidden_layers), scale_penalty=t.scale_penalty, dropout=t.dropout,
        early_stop_patience=t.early_stop_patience, kd_embedding_weight=t.kd_embedding_weight,
        checkpoint_shard_mb=recipe.export.max_shard_mb,
    )
