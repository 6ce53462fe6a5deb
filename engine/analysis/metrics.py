"""Model-level quality metrics of a quantized model against its original.

The original is the same model with every quantizer switched off, so only one
copy of the weights is ever held. Each batch runs twice (reference, then
quantized) and the metrics accumulate per token:

- causal LMs: perplexity of both (next-token cross-entropy over the batch's
  non-overlapping windows), mean KL(original || quantized) of the next-token
  distributions, and top-1 agreement;
- encoders: the cosine of L2-normalised sentence embeddings (mean-pooled over the
  attention mask, and CLS-pooled), cosine similarity and MSE of the final hidden
  states per real token (engine.analysis.embedding).

Batches are packed id tensors or padded ``Samples`` (engine.io.batch); padded
positions are neither attended to nor counted.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..io.batch import model_inputs
from ..parallel import Dist
from ..parallel.wrap import is_sharded
from ..quant.select import quantization_disabled
from .embedding import EmbeddingStats


def _forward(model: nn.Module, batch, kind: str) -> torch.Tensor:
    out = model(**model_inputs(batch))
    return out.logits if kind == "causal-lm" else out.last_hidden_state


class LMStats:
    """Streaming sums for perplexity, KL and agreement."""

    def __init__(self):
        self.tokens = 0
        self.nll_ref = 0.0
        self.nll_q = 0.0
        self.kl = 0.0
        self.agree = 0

    def add(self, ids: torch.Tensor, ref_logits: torch.Tensor, q_logits: Optional[torch.Tensor],
            mask: Optional[torch.Tensor] = None) -> None:
        targets = ids[:, 1:].reshape(-1)
        ref = ref_logits[:, :-1].float().reshape(-1, ref_logits.shape[-1])
        q = q_logits[:, :-1].float().reshape(-1, q_logits.shape[-1]) if q_logits is not None else None
        if mask is not None:  # only real next tokens are scored (a padded tail is not)
            keep = mask[:, 1:].reshape(-1).bool().to(targets.device)
            targets, ref = targets[keep], ref[keep]
            q = q[keep] if q is not None else None
        ref_logp = F.log_softmax(ref, -1)
        self.tokens += targets.numel()
        self.nll_ref += F.nll_loss(ref_logp, targets, reduction="sum").item()
        if q is None:
            return
        q_logp = F.log_softmax(q, -1)
        self.nll_q += F.nll_loss(q_logp, targets, reduction="sum").item()
        self.kl += F.kl_div(q_logp, ref_logp, log_target=True, reduction="sum").item()
        self.agree += (ref.argmax(-1) == q.argmax(-1)).sum().item()

    def baseline(self) -> Dict[str, float]:
        return {"perplexity": _ppl(self.nll_ref, self.tokens), "tokens": self.tokens}

    def quantized(self) -> Dict[str, float]:
        n = max(1, self.tokens)
        return {"perplexity": _ppl(self.nll_q, self.tokens), "kl": max(0.0, self.kl / n),
                "top1_agreement": self.agree / n, "tokens": self.tokens}


def _ppl(nll: float, tokens: int) -> float:
    if tokens == 0:
        return float("nan")
    v = nll / tokens
    return math.exp(v) if v < 700 else float("inf")


EncoderStats = EmbeddingStats  # the encoder metrics live in engine.analysis.embedding


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[torch.Tensor], kind: str, device: torch.device,
             compare: bool = True, on_batch: Optional[Callable[[int], None]] = None,
             reference: Optional[nn.Module] = None, dist=None) -> Dict[str, Dict[str, float]]:
    """Metrics of the original and, with ``compare``, of the quantized model.

    The original is ``reference`` when given (a frozen copy, needed once the
    student's weights have been trained), else ``model`` with its quantizers off.
    Returns ``{"baseline": {...}, "quantized": {...}}`` (the latter only with compare).

    ``dist`` (:class:`engine.parallel.Dist`; one process when None): each rank evaluates its share of
    the batches and the sums are all-reduced, so every rank returns the global metrics.
    """
    was_training = model.training
    model.eval()
    stats = LMStats() if kind == "causal-lm" else EncoderStats()
    dist = dist or Dist.single()
    # this rank's batches (all of them in one process); a sharded model pads with uncounted ones
    plan = dist.eval_plan(batches, lockstep=is_sharded(model) or is_sharded(reference))
    batches = [ids for ids, _ in plan]
    counted = [keep for _, keep in plan]
    try:
        for i, ids in enumerate(batches):
            if not counted[i]:  # a sharded model's padding step: run, don't count
                ids = ids.to(device)
                if reference is not None:
                    _forward(reference, ids.to(next(reference.parameters()).device), kind)
                else:
                    with quantization_disabled(model):
                        _forward(model, ids, kind)
                if compare:
                    _forward(model, ids, kind)
                continue
            ids = ids.to(device)
            if reference is not None:
                ref_device = next(reference.parameters()).device
                ref = _forward(reference, ids.to(ref_device), kind).to(device)
            else:
                with quantization_disabled(model):
                    ref = _forward(model, ids, kind)
            q = _forward(model, ids, kind) if compare else None
            inputs = model_inputs(ids)
            stats.add(inputs["input_ids"], ref, q, inputs.get("attention_mask"))
            if on_batch:
                on_batch(i + 1)
    finally:
        model.train(was_training)
    dist.reduce_stats(stats)  # the global sums (one process: as they are)
    out = {"baseline": stats.baseline()}
    if compare:
        out["quantized"] = stats.quantized()
    return out


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """10 log10(signal power / error power); inf for an exact match."""
    ref = reference.detach().float()
    err = (approx.detach().float() - ref).pow(2).sum().item()
    sig = ref.pow(2).sum().item()
    if err == 0:
        return float("inf")
    if sig == 0:
        return float("-inf")
    return 10.0 * math.log10(sig / err)
