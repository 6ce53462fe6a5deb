"""Encoder quality as sentence-embedding users measure it, over real tokens only.

For each held-out sentence the final hidden states of the original and of the
quantized encoder are pooled into one embedding each and L2-normalised; the
headline is their cosine, averaged over sentences:

- ``embedding_cosine``: mean pooling over the attention mask (padding excluded),
  what sentence-transformers models such as all-MiniLM-L6-v2 ship;
- ``cls_embedding_cosine``: the first token's state (``[CLS]``), for models pooled
  that way;
- ``cosine`` / ``mse`` / ``relative_mse``: per real token, of the hidden states.

Padded positions never enter any sum, so a sentence scores the same alone or in a
padded batch.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..io.batch import model_inputs
from ..quant.select import quantization_disabled


def mean_pool(hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """[B, T, H] -> [B, H]: the mean of the real tokens' states."""
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def sentence_embeddings(hidden: torch.Tensor, mask: Optional[torch.Tensor], pooling: str = "mean") -> torch.Tensor:
    """L2-normalised sentence embeddings pooled from [B, T, H] hidden states ('mean' or 'cls')."""
    pooled = hidden[:, 0] if pooling == "cls" else mean_pool(hidden, mask)
    return F.normalize(pooled.float(), dim=-1)


class EmbeddingStats:
    """Streaming sums of the encoder metrics (one instance per evaluation)."""

    def __init__(self):
        self.tokens = 0
        self.sentences = 0
        self.cos_sum = 0.0
        self.sq_err = 0.0
        self.ref_sq = 0.0
        self.elems = 0
        self.pooled_cos_sum = 0.0
        self.cls_cos_sum = 0.0

    def add(self, ids, ref_h: torch.Tensor, q_h: Optional[torch.Tensor], mask: Optional[torch.Tensor] = None) -> None:
        if q_h is None:
            return
        ref_h, q_h = ref_h.float(), q_h.float()
        m = torch.ones(ref_h.shape[:2], device=ref_h.device) if mask is None else mask.to(ref_h.device).float()
        self.cos_sum += (F.cosine_similarity(ref_h, q_h, dim=-1) * m).sum().item()
        n_real = int(m.sum().item())
        self.tokens += n_real
        self.sq_err += ((ref_h - q_h).pow(2) * m.unsqueeze(-1)).sum().item()
        self.ref_sq += (ref_h.pow(2) * m.unsqueeze(-1)).sum().item()
        self.elems += n_real * ref_h.shape[-1]
        e_ref, e_q = sentence_embeddings(ref_h, m), sentence_embeddings(q_h, m)
        self.pooled_cos_sum += (e_ref * e_q).sum(-1).sum().item()
        c_ref, c_q = sentence_embeddings(ref_h, m, "cls"), sentence_embeddings(q_h, m, "cls")
        self.cls_cos_sum += (c_ref * c_q).sum(-1).sum().item()
        self.sentences += ref_h.shape[0]

    def baseline(self) -> Dict[str, float]:
        return {"cosine": 1.0, "mse": 0.0, "embedding_cosine": 1.0, "cls_embedding_cosine": 1.0}

    def quantized(self) -> Dict[str, float]:
        n, s = max(1, self.tokens), max(1, self.sentences)
        return {"cosine": self.cos_sum / n, "mse": self.sq_err / max(1, self.elems),
                "relative_mse": self.sq_err / max(1e-30, self.ref_sq),
                "embedding_cosine": self.pooled_cos_sum / s, "cls_embedding_cosine": self.cls_cos_sum / s,
                "tokens": self.tokens}


@torch.no_grad()
def evaluate_embeddings(model, batches, device, reference=None) -> Dict[str, Dict[str, float]]:
    """Encoder metrics of ``model`` against ``reference`` (a frozen original; else ``model`` with its
    quantizers off) over padded sentence batches (``Samples``) or packed id tensors."""
    was = model.training
    model.eval()
    stats = EmbeddingStats()
    try:
        for b in batches:
            inputs = model_inputs(b, device)
            if reference is not None:
                ref_dev = next(reference.parameters()).device
                ref = reference(**{k: v.to(ref_dev) for k, v in inputs.items()}).last_hidden_state.to(device)
            else:
                with quantization_disabled(model):
                    ref = model(**inputs).last_hidden_state
            q = model(**inputs).last_hidden_state
            stats.add(inputs["input_ids"], ref, q, inputs.get("attention_mask"))
    finally:
        model.train(was)
    return {"baseline": stats.baseline(), "quantized": stats.quantized()}
