"""``train.lr: auto``: pick the learning rate by trying a few, briefly, on held-out data.

Whether QAD recovers anything depends more on the learning rate than on any other
setting, and the right one differs between a 1M-parameter demo and a pretrained
encoder. The probe trains a copy of the student's state for ``probe_steps`` steps
at each candidate rate (on the training pool minus a held-out slice), scores each
by the training loss on that slice, restores the student, and returns the best rate.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Sequence, Tuple

import torch
from torch import nn

from ..events import CancelToken, Sink
from ..statefile import cpu_state_dict
from .loop import Trainer, TrainSettings
from .losses import set_student_mode


def held_out_slice(pool, batch_size: int) -> Tuple[object, object]:
    """(training part, held-out part) of a block / sample pool: the last tenth, at least one batch."""
    n = int(pool.shape[0])
    n_hold = min(max(batch_size, n // 10), max(1, n // 2))
    return pool[: n - n_hold], pool[n - n_hold:]


def probe_lr(student: nn.Module, teacher, kind: str, pool, settings: TrainSettings, candidates: Sequence[float],
             probe_steps: int, device: torch.device, sink: Sink, cancel: CancelToken, dist=None,
             log: Callable[[str], None] = lambda m: None) -> Tuple[float, Dict[float, float]]:
    """The candidate rate with the lowest held-out loss after ``probe_steps`` steps, and every rate's loss."""
    train_part, held = held_out_slice(pool, settings.batch_size)
    held_batches = [held[i:i + settings.batch_size] for i in range(0, int(held.shape[0]), settings.batch_size)]
    start = {k: v.clone() for k, v in cpu_state_dict(student).items()}  # a CPU model's state shares storage
    scores: Dict[float, float] = {}
    probe = dataclasses.replace(settings, steps=probe_steps, warmup_steps=min(settings.warmup_steps, probe_steps // 4),
                                eval_every=0, checkpoint_every=0, early_stop_patience=0, kd_alpha_final=None)
    try:
        for lr in candidates:
            cancel.check()
            trainer = Trainer(student, teacher, kind, train_part, dataclasses.replace(probe, lr=float(lr)), device,
                              lambda e: None, cancel, dist=dist)
            trainer.fit()
            set_student_mode(student, False)
            with torch.no_grad():
                losses = [float(trainer.loss(b)[0]) for b in held_batches]
            trainer.release()
            score = sum(losses) / len(losses)
            scores[float(lr)] = score if score == score else float("inf")  # NaN ranks last
            log(f"learning-rate probe: lr {lr:g} -> held-out loss {score:.6g}")
            student.load_state_dict(start, strict=False)
    finally:
        student.load_state_dict(start, strict=False)
    best = min(scores, key=scores.get)
    return best, scores
