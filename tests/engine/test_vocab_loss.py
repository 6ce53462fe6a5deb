"""The chunked vocabulary losses equal the unchunked formulas, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.train.vocab_loss import IGNORE_INDEX, Teacher, shifted_targets, topk_teacher, vocab_losses


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|: the error relative to the tensor's scale."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def _reference(h, w, b, ids, th, tw, temperature):
    """The unchunked formulas: full fp32 logits, F.cross_entropy on the shifted tokens, F.kl_div batchmean."""
    batch, length = ids.shape
    z = F.linear(h, w, b).float().reshape(batch, length, -1)
    ce = F.cross_entropy(z[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    zt = F.linear(th, tw).float()
    s = F.log_softmax(z.flatten(0, 1) / temperature, -1)
    p = F.log_softmax(zt / temperature, -1)
    kd = F.kl_div(s, p, log_target=True, reduction="batchmean") * temperature ** 2
    return ce, kd


def _problem(dtype=torch.float32, batch=3, length=21, hidden=40, vocab=3001, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(batch * length, hidden, generator=g) * 2).to(dtype).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.3).to(dtype).requires_grad_(True)
    b = (torch.randn(vocab, generator=g) * 0.1).to(dtype).requires_grad_(True)
    th = (h.detach() + 0.5 * torch.randn(h.shape, generator=g, dtype=dtype))
    tw = (w.detach() + 0.1 * torch.randn(w.shape, generator=g, dtype=dtype))
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    return h, w, b, th, tw, ids


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [7, 64, 10_000])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_chunked_losses_and_gradients_equal_the_unchunked_formulas(temperature, chunk, dtype, tol):
    h, w, b, th, tw, ids = _problem(dtype)
    ce_ref, kd_ref = _reference(h, w, b, ids, th, tw, temperature)
    g_ref = torch.autograd.grad(0.3 * ce_ref + 0.7 * kd_ref, (h, w, b))
    ce, kd = vocab_losses(h, w, b, targets=shifted_targets(ids), teacher=Teacher(hidden=th, weight=tw),
                          temperature=temperature, chunk_tokens=chunk)
    g = torch.autograd.grad(0.3 * ce + 0.7 * kd, (h, w, b))
    assert abs(ce.item() - ce_ref.item()) <= tol * abs(ce_ref.item()) + 1e-30
    assert abs(kd.item() - kd_ref.item()) <= max(tol, 1e-6) * abs(kd_ref.item())
    for got, want in zip(g, g_ref):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert _rel(got, want) <= max(tol, 1e-6) * 2, _rel(got, want)


def test_teacher_logits_in_bf16_and_student_logits_match_the_head_path():
    h, w, b, th, tw, ids = _problem()
    teacher_logits = F.linear(th, tw).to(torch.bfloat16)  # kept in its own dtype, converted chunk by chunk
    z = F.linear(h, w, b)
    ref_s = F.log_softmax(z.float(), -1)
    ref_kd = F.kl_div(ref_s, F.log_softmax(teacher_logits.float(), -1), log_target=True, reduction="batchmean")
    ref_g = torch.autograd.grad(ref_kd, h)[0]
    _, kd = vocab_losses(logits=F.linear(h, w, b), teacher=Teacher(logits=teacher_logits), chunk_tokens=5)
    g = torch.autograd.grad(kd, h)[0]
    assert abs(kd.item() - ref_kd.item()) <= 1e-6 * ref_kd.item()
    assert _rel(g, ref_g) <= 2e-6


def test_ignored_targets_and_kd_row_mask_follow_the_reference():
    h, w, b, th, tw, ids = _problem()
    mask = torch.ones_like(ids)
    mask[0, 15:] = 0  # a padded first sequence
    targets = shifted_targets(ids, mask)
    assert (targets.reshape(ids.shape)[0, 14:] == IGNORE_INDEX).all()
    z = F.linear(h, w, b).float()
    keep = targets != IGNORE_INDEX
    ce_ref = F.cross_entropy(z[keep], targets[keep])
    rows = mask.reshape(-1).bool()
    kd_ref = F.kl_div(F.log_softmax(z[rows], -1), F.log_softmax(F.linear(th, tw)[rows], -1), log_target=True,
                      reduction="batchmean")
    g_ref = torch.autograd.grad(ce_ref + kd_ref, (h, w))
    ce, kd = vocab_losses(h, w, b, targets=targets, teacher=Teacher(hidden=th, weight=tw), kd_rows=rows,
                          chunk_tokens=9)
    g = torch.autograd.grad(ce + kd, (h, w))
    assert abs(ce.item() - ce_ref.item()) <= 1e-6 * ce_ref.item()
    assert abs(kd.item() - kd_ref.item()) <= 1e-6 * kd_ref.item()
    for got, want in zip(g, g_ref):
        assert _rel(got, want) <= 2e-6


def test_topk_teacher_is_the_renormalised_sparse_kl():
    h, w, b, th, tw, ids = _problem(vocab=500)
    zt = F.linear(th, tw)
    k = 20
    vals, idx = torch.topk(zt, k, -1)
    lp = F.log_softmax(vals, -1)
    z = F.linear(h, w, b)
    lq = F.log_softmax(z, -1).gather(1, idx)
    ref = (lp.exp() * (lp - lq)).sum() / h.shape[0]
    g_ref = torch.autograd.grad(ref, (h, w))
    _, kd = vocab_losses(h, w, b, teacher=topk_teacher(zt, k), chunk_tokens=8)
    g = torch.autograd.grad(kd, (h, w))
    assert abs(kd.item() - ref.item()) <= 1e-6 * ref.item()
    for got, want in zip(g, g_ref):
        assert _rel(got, want) <= 2e-6
    # with k = vocab the sparse teacher is the full one
    _, kd_full = vocab_losses(h, w, b, teacher=Teacher(hidden=th, weight=tw))
    _, kd_all = vocab_losses(h, w, b, teacher=topk_teacher(zt, zt.shape[1]))
    assert abs(kd_full.item() - kd_all.item()) <= 1e-5 * kd_full.item()


def test_bf16_student_gradients_keep_their_dtype_and_track_the_fp32_ones():
    h, w, b, th, tw, ids = _problem()
    ce32, _ = vocab_losses(h, w, b, targets=shifted_targets(ids))
    g32 = torch.autograd.grad(ce32, (h, w))
    hb, wb, bb = (t.detach().bfloat16().requires_grad_(True) for t in (h, w, b))
    ce16, _ = vocab_losses(hb, wb, bb, targets=shifted_targets(ids))
    g16 = torch.autograd.grad(ce16, (hb, wb))
    assert g16[0].dtype == torch.bfloat16 and g16[1].dtype == torch.bfloat16
    assert abs(ce16.item() - ce32.item()) <= 0.02 * ce32.item()
    for got, want in zip(g16, g32):
        assert _rel(got, want) <= 0.05


def test_bad_calls_are_refused_with_a_message():
    h, w, b, th, tw, ids = _problem()
    with pytest.raises(ValueError, match="targets"):
        vocab_losses(h, w, b)
    with pytest.raises(ValueError, match="rows"):
        vocab_losses(h, w, b, teacher=Teacher(hidden=th[:5], weight=tw))
    with pytest.raises(ValueError, match="exactly one"):
        Teacher(hidden=th, weight=tw, logits=th)


@pytest.mark.parametrize("tied", [True, False])
def test_trainer_loss_through_the_head_equals_the_full_logits_formula(tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine import calib
    from engine.events import CancelToken
    from engine.quant import schemes
    from engine.quant.select import apply_plan, plan_layers
    from engine.train import frozen_original
    from engine.train.loop import Trainer, TrainSettings
    from engine.train.vocab_loss import forward_without_logits

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=700, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    blocks = torch.randint(0, 700, (4, 20), generator=torch.Generator().manual_seed(2))
    teacher = frozen_original(model)
    apply_plan(model, plan_layers(model, schemes.get("W8A8-INT8"))[0])
    calib.calibrate(model, lambda m: m(input_ids=blocks))
    s = TrainSettings(mode="qad", steps=1, lr=1e-4, batch_size=4, kd_alpha=0.6, kd_temperature=2.0,
                      eval_every=0, checkpoint_every=0)
    trainer = Trainer(model, teacher, "causal-lm", blocks, s, torch.device("cpu"), lambda e: None, CancelToken())
    assert forward_without_logits(model, {"input_ids": blocks}) is not None
    total, parts = trainer.loss(blocks)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, params)
    # the reference: the model's own full logits and the unchunked formulas
    z = model(input_ids=blocks).logits.float()
    with torch.no_grad():
        zt = teacher(input_ids=blocks).logits.float()
    ce = F.cross_entropy(z[:, :-1].flatten(0, 1), blocks[:, 1:].flatten())
    kd = F.kl_div(F.log_softmax(z.flatten(0, 1) / 2, -1), F.log_softmax(zt.flatten(0, 1) / 2, -1),
                  log_target=True, reduction="batchmean") * 4
    ref_total = 0.6 * kd + 0.4 * ce
    ref_grads = torch.autograd.grad(ref_total, params)
    assert abs(parts["kd_loss"].item() - kd.item()) <= 1e-5 * kd.item()
    assert abs(parts["task_loss"].item() - ce.item()) <= 1e-6 * ce.item()
    for got, want in zip(grads, ref_grads):
        assert _rel(got, want) <= 1e-4


def test_one_chunk_keeps_the_teachers_log_probs_for_the_gradient_and_then_drops_them():
    """All rows in one chunk: the loss pass keeps the teacher's log p, the gradient pass reads it
    instead of applying the teacher's head again, and lets it go. Several chunks: nothing is kept
    (memory stays one chunk). The gradients are those of the unchunked formulas either way."""
    h, w, b, th, tw, ids = _problem()
    ce_ref, kd_ref = _reference(h, w, b, ids, th, tw, 1.0)
    g_ref = torch.autograd.grad(kd_ref, (h, w, b))
    for chunk, kept in ((10_000, True), (16, False)):
        teacher = Teacher(hidden=th, weight=tw)
        _, kd = vocab_losses(h, w, b, teacher=teacher, chunk_tokens=chunk)
        assert (teacher._kept is not None) == kept
        if kept:
            assert teacher._kept[3].shape == (h.shape[0], w.shape[0])
        g = torch.autograd.grad(kd, (h, w, b))
        assert teacher._kept is None  # released by the gradient pass
        for got, want in zip(g, g_ref):
            assert _rel(got, want) <= 2e-6
    with torch.no_grad():  # no gradient to come: nothing kept
        teacher = Teacher(hidden=th, weight=tw)
        vocab_losses(h, w, b, teacher=teacher, chunk_tokens=10_000)
        assert teacher._kept is None
