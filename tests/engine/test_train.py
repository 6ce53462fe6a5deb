"""Training: exact straight-through gradients, losses, schedule, determinism, cancel."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import calib, formats
from engine.errors import Cancelled
from engine.events import CancelToken
from engine.quant import schemes
from engine.quant.linear import QuantLinear
from engine.quant.select import apply_plan, plan_layers
from engine.train import frozen_original
from engine.train.loop import BlockStream, Trainer, TrainSettings, lr_factor


def _in_range_mask(fmt, x, amax):
    """Where x is not clipped: |x| <= the largest magnitude the format can represent for its scale."""
    if fmt.name == "nvfp4":
        # the element range is 6 times each block's decoded scale s_b * s2
        q = fmt.quantize(x, amax)
        s = (q.scale.float() * q.scale2).reshape(fmt.group_view(x).shape[:-1] + (1,))
        return fmt.ungroup(fmt.group_view(x).abs() <= 6.0 * s, x)
    if fmt.has_tensor_scale and amax is not None:
        return x.abs() <= amax
    return torch.ones_like(x, dtype=torch.bool)


@pytest.mark.parametrize("wname,aname", [("int4_g32", "int8_tensor"), ("fp8_e4m3", "fp8_e4m3"),
                                         ("int3_g32", "int8_tensor"), ("nvfp4", "nvfp4")])
def test_every_parameter_gets_the_exact_straight_through_gradient(wname, aname):
    torch.manual_seed(0)
    l1, l2 = nn.Linear(32, 48), nn.Linear(48, 16)
    model = nn.Sequential(l1, nn.ReLU(), l2)
    wf, af = formats.get(wname), formats.get(aname)
    for lin in (l1, l2):
        QuantLinear.convert(lin, wf, af)
    x = torch.randn(8, 32)
    calib.calibrate(model, lambda m: m(x * 0.5))  # calibrate on a smaller range: some inputs clip
    for lin in (l1, l2):
        q = lin.weight_quantizer
        q.set_amax(q.amax * 0.7)  # and clip the weights' largest values too
    xin = x.clone().requires_grad_(True)
    out = model(xin)
    g = torch.randn_like(out)
    out.backward(g)
    # by hand, layer by layer, with the same fake-quantized tensors
    with torch.no_grad():
        a1, w1 = l1.input_quantizer.amax, l1.weight_quantizer.amax
        xq1, wq1 = af.fake_quant(x, a1), wf.fake_quant(l1.weight, w1)
        h = F.linear(xq1, wq1, l1.bias)
        r = h.clamp(min=0)
        a2, w2 = l2.input_quantizer.amax, l2.weight_quantizer.amax
        xq2, wq2 = af.fake_quant(r, a2), wf.fake_quant(l2.weight, w2)
        d_wq2 = g.t() @ xq2
        d_w2 = d_wq2 * _in_range_mask(wf, l2.weight.detach(), w2) if wf.has_tensor_scale else None
        d_xq2 = g @ wq2
        d_r = d_xq2 * _in_range_mask(af, r, a2)
        d_h = d_r * (h > 0)
        d_wq1 = d_h.t() @ xq1
        d_xq1 = d_h @ wq1
        d_x = d_xq1 * _in_range_mask(af, x, a1)
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    torch.testing.assert_close(l2.bias.grad, g.sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1.bias.grad, d_h.sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xin.grad, d_x, rtol=1e-5, atol=1e-6)
    assert (~_in_range_mask(af, x, a1)).any(), "the test must exercise clipping"
    if d_w2 is not None:
        torch.testing.assert_close(l2.weight.grad, d_w2, rtol=1e-5, atol=1e-6)
        assert (d_w2 == 0).any() and (l2.weight.grad[d_w2 == 0] == 0).all()
    else:
        # per-group weight scales: the gradient is identity wherever |w| <= its group's amax
        wmask = (formats.get(wname).group_view(l2.weight.abs()) <= w2.reshape(
            formats.get(wname).group_view(l2.weight).shape[:-1] + (1,)))
        expected = wf.ungroup(wf.group_view(d_wq2) * wmask, l2.weight)
        torch.testing.assert_close(l2.weight.grad, expected, rtol=1e-5, atol=1e-6)
        assert (expected == 0).any()


def test_llama_all_parameters_get_gradients_with_w4a4(tiny_llama_dir):
    from engine.io.model import load_model

    loaded = load_model(tiny_llama_dir)
    model = loaded.model
    apply_plan(model, plan_layers(model, schemes.get("W4A4-NVFP4"))[0])
    ids = torch.randint(0, model.config.vocab_size, (2, 32))
    calib.calibrate(model, lambda m: m(input_ids=ids))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []


def test_lr_schedule_warmup_then_cosine():
    s = TrainSettings(mode="qat", steps=100, lr=1.0, warmup_steps=10)
    assert lr_factor(0, s) == pytest.approx(0.1) and lr_factor(9, s) == pytest.approx(1.0)
    assert lr_factor(10, s) == pytest.approx(1.0) and lr_factor(55, s) == pytest.approx(0.5)
    assert lr_factor(100, s) == pytest.approx(0.0, abs=1e-12)


def test_block_stream_depends_only_on_seed_and_position():
    blocks = torch.arange(50).reshape(10, 5)
    a, b = BlockStream(blocks, 3, seed=1), BlockStream(blocks, 3, seed=1)
    seq_a = [a.batch(i) for i in range(8)]
    assert all(torch.equal(x, b.batch(i)) for i, x in reversed(list(enumerate(seq_a))))
    # one epoch visits every block once
    first = torch.cat([a.batch(i) for i in range(4)])[:10, 0]
    assert sorted(first.tolist()) == list(range(0, 50, 5))
    assert not torch.equal(BlockStream(blocks, 3, seed=2).batch(0), seq_a[0])


def _trainer(tiny_llama_dir, mode, steps=4, cancel=None, sink=None):
    from engine.io.model import load_model

    loaded = load_model(tiny_llama_dir)
    model = loaded.model
    apply_plan(model, plan_layers(model, schemes.get("W4A16-INT4"))[0])
    torch.manual_seed(0)
    blocks = torch.randint(0, model.config.vocab_size, (12, 32))
    calib.calibrate(model, lambda m: m(input_ids=blocks[:4]))
    teacher = frozen_original(model)
    s = TrainSettings(mode=mode, steps=steps, lr=1e-3, warmup_steps=1, batch_size=2, eval_every=0,
                      checkpoint_every=0)
    return Trainer(model, teacher, "causal-lm", blocks, s, torch.device("cpu"), sink or (lambda e: None),
                   cancel or CancelToken())


def test_qad_loss_is_zero_for_an_unquantized_student(tiny_llama_dir):
    tr = _trainer(tiny_llama_dir, "qad")
    from engine.quant.select import quantization_disabled

    with quantization_disabled(tr.student):
        loss, parts = tr.loss(tr.stream.batch(0))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss_q, _ = tr.loss(tr.stream.batch(0))
    assert loss_q.item() > 1e-6


def test_training_is_deterministic_and_teacher_stays_frozen(tiny_llama_dir):
    runs = []
    for _ in range(2):
        tr = _trainer(tiny_llama_dir, "qad", steps=3)
        before = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
        tr.fit()
        assert all(torch.equal(before[k], v) for k, v in tr.teacher.state_dict().items())
        runs.append({k: v.clone() for k, v in tr.student.state_dict().items()})
        assert [h["step"] for h in tr.history] == [1, 2, 3]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_cancel_from_another_thread_stops_within_one_step(tiny_llama_dir):
    cancel = CancelToken()
    steps_seen = []

    def sink(event):
        if getattr(event, "stage", None) == "train" and type(event).__name__ == "Progress":
            steps_seen.append(event.done)
            if event.done == 2:
                threading.Thread(target=cancel.cancel).start()

    tr = _trainer(tiny_llama_dir, "qat", steps=50, cancel=cancel, sink=sink)
    with pytest.raises(Cancelled):
        tr.fit()
    assert 2 <= tr.step <= 3


def test_learnable_scale_gets_the_lsq_gradient_and_trains():
    from engine.quant.quantizer import TensorQuantizer

    torch.manual_seed(0)
    for name in ("int4", "int8_tensor", "fp8_e4m3", "int3_g32"):
        fmt = formats.get(name)
        x = torch.randn(6, 64) * 3
        q = TensorQuantizer(fmt, "weight")
        q.set_amax(fmt.amax_of(x) * 0.6)  # some values clip
        assert q.enable_learnable_scale() and q.learnable
        g = torch.randn_like(x)
        (q(x) * g).sum().backward()
        with torch.no_grad():
            D = fmt.lsq_divisor
            a = q.amax.detach()
            xg, gg = fmt.group_view(x), fmt.group_view(g)
            ag = a.reshape(xg.shape[:-1] + (1,)) if a.numel() > 1 else a.reshape([1] * xg.dim())
            s = ag / D
            u = xg / s
            inside = xg.abs() <= ag
            qv = fmt.group_view(fmt.fake_quant(x, a)) / s
            expected = (gg * (qv - u * inside) / D).sum(-1)
            expected = expected.sum() if a.numel() == 1 else expected.reshape(a.shape)
        torch.testing.assert_close(q.amax.grad, expected, rtol=1e-4, atol=1e-5)
    nv = TensorQuantizer(formats.get("mxfp4"), "weight")
    assert not nv.enable_learnable_scale()  # block-derived scales cannot be learned
