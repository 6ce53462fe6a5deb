"""Model-level quality metrics of a quantized model against its original.

The original is the same model with every quantizer switched off, so only one
copy of the weights is ever held. Each batch runs twice (reference, then
quantized) and the metrics accumulate per token:

- causal LMs: perplexity of both (next-token cross-entropy over the batch's
  non-overlapping windows), mean KL(original || quantized) of the next-token
  distributions, and top-1 agreement;
- encoders: cosine similarity and MSE of the final hidden states per token, and
  the cosine of mean-pooled sentence embeddings.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel import Dist
from ..parallel.wrap import is_sharded
from ..quant.select import quantization_disabled


def _forward(model: nn.Module, ids: torch.Tensor, kind: str) -> torch.Tensor:
    out = model(input_ids=ids)
    return out.logits if kind == "causal-lm" else out.last_hidden_state


class LMStats:
    """Streaming sums for perplexity, KL and agreement."""

    def __init__(self):
        self.tokens = 0
        self.nll_ref = 0.0
        self.nll_q = 0.0
        self.kl = 0.0
        self.agree = 0

    def add(self, ids: torch.Tensor, ref_logits: torch.Tensor, q_logits: Optional[torch.Tensor]) -> None:
        targets = ids[:, 1:].reshape(-1)
        ref = ref_logits[:, :-1].float().reshape(-1, ref_logits.shape[-1])
        ref_logp = F.log_softmax(ref, -1)
        self.tokens += targets.numel()
        self.nll_ref += F.nll_loss(ref_logp, targets, reduction="sum").item()
        if q_logits is None:
            return
        q = q_logits[:, :-1].float().reshape(-1, q_logits.shape[-1])
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


class EncoderStats:
    def __init__(self):
        self.tokens = 0
        self.sentences = 0
        self.cos_sum = 0.0
        self.sq_err = 0.0
        self.ref_sq = 0.0
        self.elems = 0
        self.pooled_cos_sum = 0.0

    def add(self, ids, ref_h: torch.Tensor, q_h: Optional[torch.Tensor]) -> None:
        if q_h is None:
            return
        ref_h, q_h = ref_h.float(), q_h.float()
        self.cos_sum += F.cosine_similarity(ref_h, q_h, dim=-1).sum().item()
        self.tokens += ref_h.shape[0] * ref_h.shape[1]
        self.sq_err += (ref_h - q_h).pow(2).sum().item()
        self.ref_sq += ref_h.pow(2).sum().item()
        self.elems += ref_h.numel()
        self.pooled_cos_sum += F.cosine_similarity(ref_h.mean(1), q_h.mean(1), dim=-1).sum().item()
        self.sentences += ref_h.shape[0]

    def baseline(self) -> Dict[str, float]:
        return {"cosine": 1.0, "mse": 0.0, "embedding_cosine": 1.0}

    def quantized(self) -> Dict[str, float]:
        n = max(1, self.tokens)
        return {"cosine": self.cos_sum / n, "mse": self.sq_err / max(1, self.elems),
                "relative_mse": self.sq_err / max(1e-30, self.ref_sq),
                "embedding_cosine": self.pooled_cos_sum / max(1, self.sentences), "tokens": self.tokens}


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
            stats.add(ids, ref, q)
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
