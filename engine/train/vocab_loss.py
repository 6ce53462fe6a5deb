"""Cross-entropy and distillation KL over the vocabulary, computed a chunk of tokens at a time.

With a 152k vocabulary, one fp32 copy of the logits of 2048 tokens is 1.2 GB, and the
plain formulation (``log_softmax`` of student and teacher, ``kl_div``, then autograd's
saved tensors and gradients) keeps several of them alive at once. Here:

- the student's logits are never whole: the LM head is applied to ``chunk_tokens`` rows
  of the final hidden states at a time, inside a custom autograd function that keeps
  only the hidden states and recomputes each chunk's logits in the backward pass;
- the teacher's logits are never whole in fp32 either: they come per chunk from the
  teacher's hidden states and head (or from a logits tensor in its own dtype, e.g. bf16,
  converted one chunk at a time, or from its top-k values and indices); when every row fits in
  one chunk, that chunk's log-probabilities are kept from the loss pass for the gradient pass
  instead of being computed twice;
- the loss values and gradients are the same as the unchunked formulas
  (``F.cross_entropy`` over the shifted tokens, ``F.kl_div(..., reduction="batchmean")
  * T^2``): each chunk's sum is exact and the chunk sums are added in float64.

Gradients are formed per chunk by autograd of the plain formulas on that chunk's rows
(``F.cross_entropy`` / ``F.kl_div`` with sum reduction, seeded with 1 / n_targets and
T^2 / n_rows), so each row's gradient is bit for bit what the whole-logits formulas give it,
however the rows are chunked or split over ranks. The closed forms (softmax(z) - onehot) / n
and T * (softmax(z / T) - p) / n are equal only in exact arithmetic; their different rounding
made a two-process run drift away from the one-process run once a fake-quantized activation
landed on the other side of a rounding boundary.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class Teacher:
    """Where the teacher's next-token distribution comes from, one chunk of rows at a time.

    Exactly one of: ``hidden`` (N, H) with ``weight`` (V, H) and optional ``bias`` (its LM
    head); ``logits`` (N, V) in any dtype; ``topk_values`` / ``topk_indices`` (N, k): the
    teacher's k largest logits, its distribution renormalised over them (sparse distillation).
    """

    hidden: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    topk_values: Optional[torch.Tensor] = None
    topk_indices: Optional[torch.Tensor] = None
    device: Optional[torch.device] = None  # where the student's chunks are (the teacher may live elsewhere)
    # (lo, hi, temperature, log p) kept by the loss pass for the gradient pass (one chunk only)
    _kept: Optional[tuple] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        given = [self.hidden is not None, self.logits is not None, self.topk_values is not None]
        if sum(given) != 1:
            raise ValueError("Teacher takes exactly one of hidden (+ weight), logits or topk_values (+ topk_indices)")
        if self.hidden is not None and self.weight is None:
            raise ValueError("Teacher(hidden=...) needs the weight of the teacher's LM head")
        if self.topk_values is not None and self.topk_indices is None:
            raise ValueError("Teacher(topk_values=...) needs topk_indices")

    @property
    def rows(self) -> int:
        for t in (self.hidden, self.logits, self.topk_values):
            if t is not None:
                return t.shape[0]
        return 0

    @property
    def sparse(self) -> bool:
        return self.topk_values is not None

    @torch.no_grad()
    def log_probs(self, lo: int, hi: int, temperature: float, keep: bool = False) -> torch.Tensor:
        """log p of rows lo..hi in fp32: (n, V), or (n, k) for a top-k teacher.

        ``keep``: hold on to the result, so that the gradient pass takes its rows from it instead
        of applying the teacher's head and softmax again (until :meth:`release`). Callers must
        not change what is returned in place."""
        k = self._kept
        if k is not None and k[2] == temperature and k[0] <= lo and hi <= k[1]:
            return k[3][lo - k[0]:hi - k[0]]
        if self.hidden is not None:
            z = F.linear(self.hidden[lo:hi].to(self.weight.dtype), self.weight, self.bias).float()
        elif self.logits is not None:
            z = self.logits[lo:hi].float()
        else:
            z = self.topk_values[lo:hi].float()
        if self.device is not None:
            z = z.to(self.device)
        lp = F.log_softmax(z / temperature, -1)
        if keep:
            self._kept = (lo, hi, temperature, lp)
        return lp

    def release(self) -> None:
        """Drop what :meth:`log_probs` kept."""
        self._kept = None


def topk_teacher(logits: torch.Tensor, k: int) -> Teacher:
    """A sparse teacher from full logits: its k largest values and their indices per row."""
    values, indices = torch.topk(logits, k, dim=-1)
    return Teacher(topk_values=values, topk_indices=indices)


def auto_chunk_tokens(vocab: int) -> int:
    """Rows per chunk so that one fp32 (rows, vocab) buffer is about 128 MB (a few are alive at once)."""
    return max(16, (1 << 25) // max(1, vocab))


def _chunk(z: torch.Tensor, targets: Optional[torch.Tensor], teacher: Optional[Teacher], lo: int, hi: int,
           temperature: float, kd_rows: Optional[torch.Tensor], want: str,
           ce_scale: float = 0.0, kd_scale: float = 0.0, keep_teacher: bool = False):
    """Loss sums (float64 scalars) or the gradient d(loss)/dz of one chunk of fp32 student logits z.

    The caller passes z without keeping a reference, so it is freed as soon as it is used.
    ``keep_teacher``: the teacher keeps this chunk's log p for the gradient pass."""
    if want == "grad":
        return _chunk_grad(z, targets, teacher, lo, hi, temperature, kd_rows, ce_scale, kd_scale)
    lq = F.log_softmax(z, -1)  # the CE's log q; also the KD's when T = 1
    lq_t = None
    if teacher is not None and temperature != 1.0:
        lq_t = F.log_softmax(z / temperature, -1)
    del z
    if lq_t is None:
        lq_t = lq
    rows = None if kd_rows is None else kd_rows[lo:hi, None].to(lq.dtype)
    if want == "loss":
        ce_sum = kd_sum = None
        if targets is not None:
            t = targets[lo:hi]
            valid = t != IGNORE_INDEX
            picked = lq.gather(1, torch.where(valid, t, 0)[:, None])[:, 0]
            ce_sum = -(picked * valid).sum(dtype=torch.float64)
        if teacher is not None:
            lp = teacher.log_probs(lo, hi, temperature, keep=keep_teacher)
            if teacher.sparse:
                lq_t = lq_t.gather(1, teacher.topk_indices[lo:hi])
            del lq
            terms = lp - lq_t
            del lq_t
            terms *= lp.exp() if keep_teacher else lp.exp_()  # a kept log p stays as it is
            if rows is not None:
                terms *= rows
            kd_sum = terms.sum(dtype=torch.float64)
        return ce_sum, kd_sum


GRAD_PIECES = 16  # autograd forms a chunk's gradient a sixteenth of its rows at a time (its temporaries stay small)


def _chunk_grad(z: torch.Tensor, targets: Optional[torch.Tensor], teacher: Optional[Teacher], lo: int, hi: int,
                temperature: float, kd_rows: Optional[torch.Tensor], ce_scale: float, kd_scale: float) -> torch.Tensor:
    """d(loss)/dz of one chunk (rows lo..hi): autograd of the plain formulas (``F.cross_entropy`` and
    ``F.kl_div`` of ``log_softmax(z / T)``, summed over the rows) seeded with each term's scale.

    These are the float operations the whole-logits formulas perform row by row, so a row's gradient
    is the same bits whether it is computed in this chunk, in one whole batch, or on another rank's
    share of the batch. (A closed form such as ``T * (softmax(z / T) - p)`` is equal in exact
    arithmetic but rounds differently, and a fake-quantized student turns such differences into
    different rounding decisions a few steps later.) Rows are independent, so autograd runs on
    ``GRAD_PIECES`` slices of the chunk in turn, which keeps its temporaries small."""
    grad = torch.empty_like(z)
    n = z.shape[0]
    piece = max(1, -(-n // GRAD_PIECES))
    for a in range(0, n, piece):
        b = min(n, a + piece)
        with torch.enable_grad():
            x = z[a:b].detach().requires_grad_(True)
            outputs, seeds = [], []
            if targets is not None and ce_scale != 0.0:
                outputs.append(F.cross_entropy(x, targets[lo + a:lo + b], ignore_index=IGNORE_INDEX, reduction="sum"))
                seeds.append(ce_scale)
            if teacher is not None and kd_scale != 0.0:
                lp = teacher.log_probs(lo + a, lo + b, temperature)
                lq_t = F.log_softmax(x / temperature, -1)
                if teacher.sparse:
                    lq_t = lq_t.gather(1, teacher.topk_indices[lo + a:lo + b])
                if kd_rows is None:
                    kd = F.kl_div(lq_t, lp, log_target=True, reduction="sum")
                else:
                    terms = F.kl_div(lq_t, lp, log_target=True, reduction="none")
                    kd = (terms * kd_rows[lo + a:lo + b, None].to(terms.dtype)).sum()
                del lp, lq_t
                outputs.append(kd)
                seeds.append(kd_scale)
            if not outputs:
                grad[a:b] = 0.0
                continue
            seeds = [torch.tensor(v, dtype=out.dtype, device=out.device) for out, v in zip(outputs, seeds)]
            (grad[a:b],) = torch.autograd.grad(outputs, (x,), seeds)
        del outputs, x
    return grad


class _HeadLoss(torch.autograd.Function):
    """(CE, KD) of the student's LM head applied to ``hidden`` chunk by chunk; gradients for
    the hidden states, the head's weight and its bias, recomputing each chunk's logits."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, bias, opts):
        targets, teacher, temperature, chunk, kd_rows, grad_on = opts
        n = hidden.shape[0]
        ce = torch.zeros((), dtype=torch.float64, device=hidden.device)
        kd = torch.zeros((), dtype=torch.float64, device=hidden.device)
        keep = _keep_teacher(teacher, n, chunk, grad_on and any(ctx.needs_input_grad[:3]))
        with torch.no_grad():
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                c, k = _chunk(F.linear(hidden[lo:hi], weight, bias).float(), targets, teacher, lo, hi,
                              temperature, kd_rows, "loss", keep_teacher=keep)
                if c is not None:
                    ce += c
                if k is not None:
                    kd += k
        ctx.save_for_backward(hidden, weight, bias)
        ctx.opts = opts
        ctx.norms = _norms(targets, teacher, kd_rows, n)
        n_ce, n_kd = ctx.norms
        return (ce / max(n_ce, 1)).float(), (kd / max(n_kd, 1) * temperature * temperature).float()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_ce, grad_kd):
        hidden, weight, bias = ctx.saved_tensors
        targets, teacher, temperature, chunk, kd_rows, _ = ctx.opts
        n_ce, n_kd = ctx.norms
        ce_scale = float(grad_ce) / max(n_ce, 1) if targets is not None else 0.0
        kd_scale = float(grad_kd) * temperature * temperature / max(n_kd, 1) if teacher is not None else 0.0
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        n = hidden.shape[0]
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            h = hidden[lo:hi]
            g = _chunk(F.linear(h, weight, bias).float(), targets, teacher, lo, hi, temperature, kd_rows, "grad",
                       ce_scale, kd_scale)
            if need_h:
                grad_h[lo:hi] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(g.t(), h.float())
            if need_b:
                grad_b += g.sum(0)
            del g
        if teacher is not None:
            teacher.release()
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None)


class _LogitsLoss(torch.autograd.Function):
    """(CE, KD) of a given logits tensor (any dtype), never converting all of it to fp32 at once."""

    @staticmethod
    def forward(ctx, logits, opts):
        targets, teacher, temperature, chunk, kd_rows, grad_on = opts
        n = logits.shape[0]
        ce = torch.zeros((), dtype=torch.float64, device=logits.device)
        kd = torch.zeros((), dtype=torch.float64, device=logits.device)
        keep = _keep_teacher(teacher, n, chunk, grad_on and ctx.needs_input_grad[0])
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            c, k = _chunk(logits[lo:hi].float(), targets, teacher, lo, hi, temperature, kd_rows, "loss",
                          keep_teacher=keep)
            if c is not None:
                ce += c
            if k is not None:
                kd += k
        ctx.save_for_backward(logits)
        ctx.opts = opts
        ctx.norms = _norms(targets, teacher, kd_rows, n)
        n_ce, n_kd = ctx.norms
        return (ce / max(n_ce, 1)).float(), (kd / max(n_kd, 1) * temperature * temperature).float()

    @staticmethod
    def backward(ctx, grad_ce, grad_kd):
        (logits,) = ctx.saved_tensors
        targets, teacher, temperature, chunk, kd_rows, _ = ctx.opts
        n_ce, n_kd = ctx.norms
        ce_scale = float(grad_ce) / max(n_ce, 1) if targets is not None else 0.0
        kd_scale = float(grad_kd) * temperature * temperature / max(n_kd, 1) if teacher is not None else 0.0
        grad = torch.empty_like(logits)
        for lo in range(0, logits.shape[0], chunk):
            hi = min(logits.shape[0], lo + chunk)
            g = _chunk(logits[lo:hi].float(), targets, teacher, lo, hi, temperature, kd_rows, "grad",
                       ce_scale, kd_scale)
            grad[lo:hi] = g.to(logits.dtype)
        if teacher is not None:
            teacher.release()
        return grad, None


def _keep_teacher(teacher: Optional[Teacher], n: int, chunk: int, grad_follows: bool) -> bool:
    """Whether the loss pass keeps the teacher's log p for the gradient pass: when all rows are one
    chunk (at most one chunk buffer, ~128 MB at most, which the loss pass had alive anyway) and a
    gradient will be asked for. Then the gradient pass does not apply the teacher's head and
    softmax a second time. With several chunks each is recomputed, so memory stays one chunk."""
    return teacher is not None and grad_follows and n <= chunk


def _norms(targets, teacher, kd_rows, n) -> Tuple[int, int]:
    n_ce = int((targets != IGNORE_INDEX).sum()) if targets is not None else 0
    if teacher is None:
        n_kd = 0
    else:
        n_kd = int(kd_rows.sum()) if kd_rows is not None else n
    return n_ce, n_kd


def vocab_losses(hidden: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                 bias: Optional[torch.Tensor] = None, *, logits: Optional[torch.Tensor] = None,
                 targets: Optional[torch.Tensor] = None, teacher: Optional[Teacher] = None,
                 temperature: float = 1.0, chunk_tokens: Optional[int] = None,
                 kd_rows: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, distillation KL) of the student over the vocabulary, by chunks of rows.

    The student is either its final hidden states ``hidden`` (N, H) with its LM head
    ``weight`` (V, H) / ``bias`` (preferred: its logits never exist whole), or ``logits`` (N, V).
    ``targets`` (N,) holds the next token of each row or ``IGNORE_INDEX``: the CE is their
    mean (as ``F.cross_entropy``). ``teacher`` gives the KD term: ``sum_rows KL(p_T || q_T)
    / n_rows * T^2`` (as ``F.kl_div(..., reduction="batchmean") * T^2``), over the rows where
    ``kd_rows`` (N,) is true, or all rows. A term that is not asked for is a zero tensor.
    """
    if hidden is None and logits is None:
        raise ValueError("vocab_losses needs the student's hidden states (with its head) or its logits")
    vocab = weight.shape[0] if hidden is not None and weight is not None else (logits.shape[-1] if logits is not None else 1)
    chunk_tokens = auto_chunk_tokens(vocab) if chunk_tokens is None else int(chunk_tokens)
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be at least 1")
    if targets is None and teacher is None:
        raise ValueError("vocab_losses needs targets (cross-entropy), a teacher (distillation) or both")
    if hidden is not None:
        # under CUDA autocast the hidden states may be bf16 while the head is fp32: the head's dtype rules
        hidden = hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype if weight is not None else hidden.dtype)
    else:
        logits = logits.reshape(-1, logits.shape[-1])
    n = hidden.shape[0] if hidden is not None else logits.shape[0]
    if teacher is not None and teacher.rows != n:
        raise ValueError(f"the teacher has {teacher.rows} rows and the student {n}")
    if kd_rows is not None:
        kd_rows = kd_rows.reshape(-1).bool()
    # the last entry: grad mode is on here, so a gradient pass may follow (inside the autograd
    # functions' forward it is always off)
    opts = (targets.reshape(-1) if targets is not None else None, teacher, float(temperature), int(chunk_tokens),
            kd_rows, torch.is_grad_enabled())
    if hidden is not None:
        if weight is None:
            raise ValueError("vocab_losses(hidden=...) needs the weight of the LM head")
        return _HeadLoss.apply(hidden, weight, bias, opts)
    return _LogitsLoss.apply(logits, opts)


def shifted_targets(ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next-token targets of (B, L) ids, flattened to (B*L,): row (b, i) predicts ids[b, i+1];
    the last position of each sequence (and padded targets) are IGNORE_INDEX."""
    t = torch.full_like(ids, IGNORE_INDEX)
    t[:, :-1] = ids[:, 1:]
    if attention_mask is not None:
        t[:, :-1] = torch.where(attention_mask[:, 1:].bool(), t[:, :-1], IGNORE_INDEX)
    return t.reshape(-1)


class HeadOutput:
    """A causal LM's forward pass stopped before its head: the final hidden states (after the final
    norm) and the head that turns them into logits, for the chunked loss to apply."""

    logits = None

    def __init__(self, last_hidden_state: torch.Tensor, hidden_states, head: torch.nn.Module):
        self.last_hidden_state, self.hidden_states, self.head = last_hidden_state, hidden_states, head

    def to(self, device) -> "HeadOutput":
        """The per-layer hidden states moved to ``device`` (the loss compares them there); the final
        ones stay with the head, which computes each chunk's logits where it lives."""
        hidden = tuple(h.to(device) for h in self.hidden_states) if self.hidden_states is not None else None
        return HeadOutput(self.last_hidden_state, hidden, self.head)


def forward_without_logits(model, inputs, output_hidden_states: bool = False) -> Optional[HeadOutput]:
    """Run a causal LM up to its head; None where that is not the same as its own forward
    (no plain linear head, logit soft-capping or scaling, no separable base model)."""
    head = lm_head_of(model)
    body = getattr(model, "base_model", None)
    if head is None or body is None or body is model:
        return None
    kwargs = dict(inputs)
    if "use_cache" in inspect.signature(body.forward).parameters:
        kwargs["use_cache"] = False  # training never reuses the key / value cache
    out = body(**kwargs, output_hidden_states=output_hidden_states)
    last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return HeadOutput(last, getattr(out, "hidden_states", None) if output_hidden_states else None, head)


def student_args(out) -> dict:
    """``vocab_losses`` keyword arguments for the student side of a model output."""
    if isinstance(out, HeadOutput):
        weight, bias = head_weight(out.head)
        return {"hidden": head_input(out.head, out.last_hidden_state), "weight": weight, "bias": bias}
    return {"logits": out.logits}


def teacher_of(out, device=None, top_k: Optional[int] = None) -> Teacher:
    """The distillation target from the teacher's output: its head applied per chunk where it lives,
    or its logits (in their own dtype); with ``top_k``, its k largest logits only."""
    if isinstance(out, HeadOutput) and not top_k:
        weight, bias = head_weight(out.head)
        h = head_input(out.head, out.last_hidden_state)
        return Teacher(hidden=h.reshape(-1, h.shape[-1]), weight=weight.detach(),
                       bias=None if bias is None else bias.detach(), device=device)
    logits = out.logits if not isinstance(out, HeadOutput) else out.head(out.last_hidden_state)
    logits = logits.reshape(-1, logits.shape[-1])
    if top_k:
        t = topk_teacher(logits, top_k)
        t.topk_values, t.topk_indices = t.topk_values.to(device or logits.device), t.topk_indices.to(device or logits.device)
        return t
    return Teacher(logits=logits, device=device)


def lm_head_of(model) -> Optional[torch.nn.Module]:
    """The model's output projection when it is a plain linear map of the last hidden states (the
    chunked loss can then apply it itself); None for heads it cannot reproduce (logit soft-capping,
    scaled logits), which then use the model's own logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not isinstance(head, torch.nn.Linear):
        return None
    cfg = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling"):
        if getattr(cfg, attr, None) not in (None, 1, 1.0):
            return None
    return head


def head_weight(head: torch.nn.Module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The weight and bias the head's forward uses (fake-quantized for a quantized head)."""
    weight = head.quantized_weight() if hasattr(head, "quantized_weight") else head.weight
    return weight, head.bias


def head_input(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """What the head's matmul sees of ``hidden`` (its input quantizer applied, for a quantized head)."""
    q = getattr(head, "input_quantizer", None)
    return q(hidden) if q is not None else hidden
