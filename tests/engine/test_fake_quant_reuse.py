"""Reusing the last fake-quant result (engine.formats._reuse) is exact: the same outputs, STE
masks and gradients as computing every call, and a miss whenever anything could differ."""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from engine import calib, formats
from engine.events import CancelToken
from engine.formats import _reuse
from engine.quant import schemes
from engine.quant.quantizer import TensorQuantizer
from engine.quant.select import apply_plan, plan_layers
from engine.train import frozen_original
from engine.train.loop import Trainer, TrainSettings


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", "0")
    _reuse.clear()
    yield
    _reuse.clear()


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    real = _reuse._compile.run

    def counting(fmt, x, amax, need_mask):
        calls.append(fmt.name)
        return real(fmt, x, amax, need_mask)

    monkeypatch.setattr(_reuse._compile, "run", counting)
    return calls


def _no_reuse(monkeypatch):
    monkeypatch.setattr(_reuse, "_usable", lambda x, amax: False)


def _bits_equal(a, b):
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num().view(torch.int32),
                                                             b.nan_to_num().view(torch.int32))


def _shared_input_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 40, generator=g)
    x[0, 3], x[1, 5], x[2, 7] = float("nan"), float("inf"), -float("inf")
    x[3, :16] = 2.0 ** -140  # denormal block
    amax = float(x[torch.isfinite(x)].abs().max()) * 0.5  # clips: some STE mask entries are 0
    grads = [torch.randn(6, 40, generator=g) for _ in range(3)]
    return x, amax, grads


@pytest.mark.parametrize("name,static", [("nvfp4", True), ("nvfp4", False), ("mxfp4", False), ("int8_tensor", True),
                                         ("fp8_e4m3", True)])
def test_three_readers_of_one_tensor_share_one_kernel_and_keep_exact_gradients(name, static, kernel_calls,
                                                                              monkeypatch):
    x0, amax, grads = _shared_input_case()

    def run():
        leaf = x0.clone().requires_grad_()
        x = leaf * 1.0  # a plain non-leaf tensor, like a norm's output
        quantizers = [TensorQuantizer(name, "input") for _ in range(3)]
        for q in quantizers:  # equal amax values in distinct tensors, as calibration leaves q, k and v
            q.set_amax(torch.tensor(amax) if static else None)
        ys = [q(x) for q in quantizers]
        torch.autograd.backward(ys, grads)
        return [y.detach() for y in ys], leaf.grad

    ys, grad = run()
    assert len(kernel_calls) == 1
    assert ys[0].data_ptr() == ys[1].data_ptr() == ys[2].data_ptr()
    _no_reuse(monkeypatch)
    want_ys, want_grad = run()
    assert len(kernel_calls) == 4
    for y, w in zip(ys, want_ys):
        assert _bits_equal(y, w)
    assert _bits_equal(grad, want_grad)
    if static and name == "nvfp4":
        assert bool((grad == 0).any()), "the case should clip"


def test_every_possible_difference_misses(kernel_calls):
    fmt = formats.get("nvfp4")
    x = torch.randn(4, 32)
    a = torch.tensor(1.5)
    fmt.fake_quant(x, a)
    fmt.fake_quant(x, a)
    assert len(kernel_calls) == 1
    fmt.fake_quant(x, torch.tensor(1.5))  # same value, another tensor: CPU scalars compare by value
    assert len(kernel_calls) == 1
    expect = 1
    for change in (
        lambda: fmt.fake_quant(x, torch.tensor(1.25)),  # another value
        lambda: fmt.fake_quant(x, None),  # dynamic instead of static
        lambda: formats.get("mxfp4").fake_quant(x),  # another format
        lambda: fmt.fake_quant(x.clone(), a),  # an equal tensor is not the same tensor
        lambda: fmt.fake_quant(x.add_(0.0), a),  # in place: the version counter moved
        lambda: fmt.fake_quant(x[:, :16], a),  # a view of it
    ):
        change()
        expect += 1
        assert len(kernel_calls) == expect
    fmt.fake_quant(x, torch.tensor(0.0))
    fmt.fake_quant(x, torch.tensor(-0.0))  # -0.0 is not 0.0 bit for bit: no reuse across them
    a.add_(0.0)
    fmt.fake_quant(x, a)
    assert len(kernel_calls) == expect + 3
    y = fmt.fake_quant(x, a)
    y.mul_(2.0)  # the cached output was changed in place
    fmt.fake_quant(x, a)
    assert len(kernel_calls) == expect + 4
    # a learnable amax gets its own LSQ gradient per reader: never shared
    lsq = formats.get("int8_tensor")
    p = torch.nn.Parameter(torch.tensor(2.0))
    xr = torch.randn(8, 8, requires_grad=True)
    n = len(kernel_calls)
    lsq.fake_quant(xr, p), lsq.fake_quant(xr, p)
    assert len(kernel_calls) == n + 2
    # Parameters (weights) and inference tensors are not cached
    w = torch.nn.Parameter(torch.randn(4, 32))
    fmt.fake_quant(w, a), fmt.fake_quant(w, a)
    with torch.inference_mode():
        xi = torch.randn(4, 32)
        fmt.fake_quant(xi, a), fmt.fake_quant(xi, a)
    assert len(kernel_calls) == n + 6


def test_the_entry_dies_with_its_input():
    fmt = formats.get("nvfp4")
    x = torch.randn(4, 32)
    fmt.fake_quant(x)
    assert _reuse._last.entry is not None
    del x
    gc.collect()
    assert _reuse._last.entry is None


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("mode", ["qat", "qad"])
def test_w4a4_training_is_bit_identical_with_and_without_reuse(mode, monkeypatch, kernel_calls):
    base = _tiny_llama()
    blocks = torch.randint(0, 96, (16, 24), generator=torch.Generator().manual_seed(1))

    def train():
        student = copy.deepcopy(base)
        apply_plan(student, plan_layers(student, schemes.get("W4A4-NVFP4"))[0])
        calib.calibrate(student, lambda m: m(input_ids=blocks[:4]))
        teacher = frozen_original(student) if mode == "qad" else None
        s = TrainSettings(mode=mode, steps=3, lr=1e-3, warmup_steps=0, batch_size=4, grad_accum=2,
                          eval_every=0, checkpoint_every=0)
        t = Trainer(student, teacher, "causal-lm", blocks, s, torch.device("cpu"), lambda e: None, CancelToken())
        losses = [t.train_step()["loss"] for _ in range(3)]
        return losses, {k: v.detach().clone() for k, v in student.state_dict().items()}

    losses, state = train()
    shared = len(kernel_calls)
    _no_reuse(monkeypatch)
    want_losses, want_state = train()
    assert len(kernel_calls) - shared > shared  # reuse did skip kernels (q/k/v, gate/up)
    assert losses == want_losses
    assert state.keys() == want_state.keys()
    for k in state:
        assert _bits_equal(state[k].float(), want_state[k].float()), k
