"""The QAT / QAD loss: what each term is, how the terms are weighted, and over which tokens.

Every term is a mean over real tokens only: padded positions (attention mask 0) never
count, so a batch of short sentences padded to its longest one gives the same loss as
the sentences one by one.

Terms (each reported as its own curve on the live loss plot):

- ``task_loss``: next-token cross-entropy of the student (causal LMs).
- ``kd_loss``: distillation from the frozen original. Causal LMs: KL(teacher || student)
  of the temperature-softened next-token distributions, times T^2. Encoders (no head):
  the MSE of the final hidden states, which is what a sentence embedding is pooled from.
- ``hidden_loss``: optional per-layer alignment of the hidden states (``kd_hidden_weight``
  > 0; ``kd_hidden_layers`` picks the layers, empty = all). Each layer's squared error is
  divided by the teacher's mean square at that layer, so that layers of very different
  magnitude (the residual stream grows with depth) weigh alike.
- ``scale_penalty``: with learnable scales, the mean squared relative growth of each
  learned scale above its calibrated value (``scale_penalty`` weight). Growing a scale
  trades rounding error for clipping error and lets training widen the grid without
  bound; the penalty keeps scales near what calibration chose unless the loss says
  otherwise.

Mixing: for causal LMs ``alpha * kd_loss + (1 - alpha) * task_loss`` where ``alpha``
moves from ``kd_alpha`` to ``kd_alpha_final`` over the run (``kd_anneal``: linear or
cosine; ``kd_alpha_final`` null = constant), then ``+ kd_hidden_weight * hidden_loss
+ scale_penalty * scale_penalty``. Encoders have no task loss: ``kd_loss`` carries
weight 1. QAT is ``task_loss`` (plus the scale penalty).
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .vocab_loss import shifted_targets, student_args, teacher_of, vocab_losses

ANNEAL = ("linear", "cosine")


def kd_alpha_at(start: float, final: Optional[float], step: int, steps: int, anneal: str = "linear") -> float:
    """The distillation weight at ``step`` (0-based) of ``steps``: ``start`` moving to ``final``."""
    if final is None or steps <= 1:
        return float(start)
    progress = min(1.0, max(0.0, step / (steps - 1)))
    if anneal == "cosine":
        progress = 0.5 * (1.0 - math.cos(math.pi * progress))
    return float(start + (final - start) * progress)


def masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``values`` ([B, T]) over the positions where ``mask`` is 1 (all when None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Squared error per element of [B, T, H] hidden states, averaged over real tokens."""
    per_token = (student.float() - teacher.float()).pow(2).mean(-1)
    return masked_mean(per_token, mask)


def embedding_distance(student: torch.Tensor, teacher: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over sentences of 1 - cosine of the mask-aware mean-pooled embeddings (what embedding users compare)."""
    if mask is None:
        ps, pt = student.float().mean(1), teacher.float().mean(1)
    else:
        m = mask.to(torch.float32).unsqueeze(-1)
        ps = (student.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
        pt = (teacher.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
    return (1.0 - F.cosine_similarity(ps, pt, dim=-1)).mean()


def hidden_alignment(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                     mask: Optional[torch.Tensor], layers: Sequence[int] = ()) -> torch.Tensor:
    """Mean over the chosen layers of each layer's MSE relative to the teacher's mean square there.

    ``student`` / ``teacher`` are ``output_hidden_states`` tuples (embeddings first, then one per
    block); ``layers`` index the blocks from 1 (negative counts from the end); empty = all blocks.
    """
    n = len(teacher) - 1
    picked = _pick_layers(n, layers)
    terms = []
    for i in picked:
        t = teacher[i].float()
        power = masked_mean(t.pow(2).mean(-1), mask).clamp(min=1e-12)
        terms.append(hidden_mse(student[i], t, mask) / power)
    return torch.stack(terms).mean()


def _pick_layers(n: int, layers: Sequence[int]) -> List[int]:
    if not layers:
        return list(range(1, n + 1))
    out = []
    for i in layers:
        j = i if i > 0 else n + 1 + i
        if not 1 <= j <= n:
            raise ValueError(f"train.kd_hidden_layers names layer {i}, but the model has {n} blocks "
                             f"(use 1..{n}, or -1 for the last)")
        out.append(j)
    return sorted(set(out))


def learnable_scales(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """The learned quantizer scales (``amax`` parameters) of a model."""
    return [(n, p) for n, p in model.named_parameters() if n.endswith("amax") and p.requires_grad]


def scale_growth_penalty(scales: Iterable[Tuple[nn.Parameter, torch.Tensor]]) -> Optional[torch.Tensor]:
    """Mean over quantizers of the mean squared relative growth of each scale above its calibrated value."""
    terms = []
    for p, ref in scales:
        growth = (p / ref.clamp(min=1e-12) - 1.0).clamp(min=0.0)
        terms.append(growth.float().pow(2).mean())
    return torch.stack(terms).mean() if terms else None


class LossComposer:
    """Builds the total loss and its named parts from one batch's student and teacher outputs."""

    def __init__(self, settings, kind: str, student: nn.Module):
        self.s, self.kind = settings, kind
        self.scales = []
        if getattr(settings, "scale_penalty", 0.0) > 0:
            self.scales = [(p, p.detach().clone()) for _, p in learnable_scales(student)]

    @property
    def needs_hidden_states(self) -> bool:
        return self.s.mode == "qad" and self.s.kd_hidden_weight > 0

    def alpha(self, step: int) -> float:
        s = self.s
        return kd_alpha_at(s.kd_alpha, getattr(s, "kd_alpha_final", None), step, s.steps,
                           getattr(s, "kd_anneal", "linear"))

    def __call__(self, step: int, inputs: Dict[str, torch.Tensor], out, teacher_out=None,
                 mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        s = self.s
        parts: Dict[str, torch.Tensor] = {}
        weights: Dict[str, float] = {}
        alpha = self.alpha(step) if s.mode == "qad" else 0.0
        if self.kind == "causal-lm":
            want_ce = s.mode == "qat" or alpha < 1.0
            want_kd = s.mode == "qad" and alpha > 0.0
            ce, kd = self.lm_terms(inputs, out, teacher_out, mask, want_ce, want_kd)
            if want_ce:
                parts["task_loss"], weights["task_loss"] = ce, (1.0 if s.mode == "qat" else 1.0 - alpha)
            if want_kd:
                parts["kd_loss"], weights["kd_loss"] = kd, alpha
        elif s.mode == "qad":
            parts["kd_loss"] = hidden_mse(out.last_hidden_state, teacher_out.last_hidden_state, mask)
            weights["kd_loss"] = 1.0
            w = getattr(s, "kd_embedding_weight", 0.0)
            if w > 0:
                parts["embedding_loss"] = embedding_distance(out.last_hidden_state, teacher_out.last_hidden_state,
                                                             mask)
                weights["embedding_loss"] = w
        if self.needs_hidden_states:
            parts["hidden_loss"] = hidden_alignment(out.hidden_states, teacher_out.hidden_states, mask,
                                                    getattr(s, "kd_hidden_layers", ()))
            weights["hidden_loss"] = s.kd_hidden_weight
        if self.scales:
            penalty = scale_growth_penalty(self.scales)
            if penalty is not None:
                parts["scale_penalty"], weights["scale_penalty"] = penalty, s.scale_penalty
        total = sum(w * parts[k] for k, w in weights.items())
        return total, parts

    def lm_terms(self, inputs, out, teacher_out, mask, want_ce: bool, want_kd: bool):
        """(cross-entropy, distillation KL) over the real tokens of a causal LM batch."""
        ids = inputs["input_ids"]
        targets = shifted_targets(ids, inputs.get("attention_mask")) if want_ce else None
        # the student's head and the teacher's apply a chunk of tokens at a time (engine.train.vocab_loss)
        teacher = teacher_of(teacher_out, device=ids.device) if want_kd else None
        kd_rows = mask.reshape(-1) > 0 if (want_kd and mask is not None) else None
        return vocab_losses(**student_args(out), targets=targets, teacher=teacher,
                            temperature=self.s.kd_temperature, kd_rows=kd_rows)


# --------------------------------------------------------------------------- distillation semantics


def student_randomness(dropout: str, mode: str) -> bool:
    """Whether the student trains with its train-only randomness (dropout, stochastic depth) on.

    ``auto`` is off for QAD: the teacher runs deterministic, so a student with dropout on is
    asked to match a target it cannot reach and chases the noise instead of the quantization
    error. ``auto`` is off for QAT too: QAT starts from an already trained model, and the
    one QAT fixture this project has (the demo Llama) has no dropout, so on and off train
    alike there; QAT follows QAD until a model with dropout and a task head says otherwise.
    """
    if dropout not in ("auto", "on", "off"):
        raise ValueError(f"train.dropout must be auto, on or off, got {dropout!r}")
    return dropout == "on"


def set_student_mode(model: nn.Module, randomness: bool) -> None:
    """Put the student in training mode, or in the teacher's deterministic mode.

    Deterministic = ``eval()`` for every module (dropout off, norms use their running
    statistics), except that layers with gradient checkpointing enabled keep their
    ``training`` flag, because transformers only checkpoints a layer that is training; the
    layer's own sub-modules (attention, dropout) stay in eval mode.
    """
    if randomness:
        model.train()
        return
    model.eval()
    for m in model.modules():
        if getattr(m, "gradient_checkpointing", False) is True:
            m.training = True
