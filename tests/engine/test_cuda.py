"""The CUDA path, against the same numpy reference as the CPU: every format's fake quant (eager
and torch.compile'd, float32 and bf16), its straight-through gradient, and a short bf16 QAD run
whose peak GPU memory the memory plan covers. Skipped where there is no CUDA device (CI, the
development machines); `benchmarks/gpu_check.sh` runs this file on a lent GPU."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import engine.formats as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import format_reference as R  # noqa: E402
from test_formats import ALL, assert_bits, make_input  # noqa: E402


@pytest.mark.parametrize("compile_mode", ["0", "1"], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", ALL)
def test_cuda_fake_quant_and_gradient_equal_the_reference(name, compile_mode, monkeypatch):
    """Bit for bit: outputs on NaN / inf / denormals / rows that do not divide the blocks, and the
    straight-through gradient (no flush-to-zero, no approximate division may change a value)."""
    monkeypatch.setenv("LOWBIT_COMPILE", compile_mode)
    x_np = make_input("specials", (64, 1000), seed=29)
    ref = R.reference(name, x_np)
    g = torch.from_numpy(np.random.default_rng(2).standard_normal(x_np.shape).astype(np.float32))
    x = torch.from_numpy(x_np).cuda().requires_grad_()
    y = F.get(name).fake_quant(x)
    y.backward(g.cuda())
    assert_bits(y.detach().cpu(), ref.y, x_np)
    assert_bits(x.grad.cpu(), np.where(ref.mask, g.numpy(), 0), x_np, signed_zero=False, what="gradient")
    with torch.no_grad():  # the inference kernel (no mask) too
        assert_bits(F.get(name).fake_quant(x.detach()).cpu(), ref.y, x_np)


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4", "int4_g128", "fp8_e4m3", "mxfp8", "int8"])
def test_cuda_bf16_equals_cpu_bf16(name, monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", "1")
    x = torch.from_numpy(make_input("rowscale", (128, 512), seed=5)).to(torch.bfloat16)
    cpu = F.get(name).fake_quant(x)
    gpu = F.get(name).fake_quant(x.cuda()).cpu()
    assert gpu.dtype == torch.bfloat16
    assert torch.equal(cpu.view(torch.int16), gpu.view(torch.int16))


def test_bf16_qad_on_cuda_fits_its_memory_plan(tiny_llama_dir, text_file, tmp_path):
    """A few QAD steps of a bf16 student on the GPU: finite losses, fp32 master weights, and the
    plan's train-stage estimate at or above what torch measured (the plan must not under-promise)."""
    from engine.pipeline import run
    from engine.recipe import Recipe

    recipe = Recipe.from_dict({
        "model": {"path": str(tiny_llama_dir), "dtype": "bfloat16"}, "device": "cuda", "mode": "qad",
        "data": {"path": str(text_file), "seq_len": 64, "batch_size": 4, "calib_batches": 2, "eval_batches": 2},
        "quant": {"scheme": "W4A4-NVFP4"},
        "train": {"steps": 4, "lr": 1e-5, "warmup_steps": 0, "eval_every": 0, "checkpoint_every": 0},
        "analysis": {"benchmark": False}}, require_version=False)
    torch.cuda.reset_peak_memory_stats()
    rep = run(recipe, run_dir=tmp_path / "run").report
    assert rep["status"] == "completed", rep.get("error")
    assert all(np.isfinite(r["loss"]) for r in rep["loss_history"])
    measured = torch.cuda.max_memory_allocated()
    per_device = rep["memory"]["plan"]["peak_per_device"]
    planned = max(n for dev, n in per_device.items() if dev.startswith("cuda"))
    print(f"\nbf16 QAD on {torch.cuda.get_device_name()}: max_memory_allocated {measured / 2**20:.1f} MiB, "
          f"plan {planned / 2**20:.1f} MiB ({per_device})")
    assert measured <= planned * 1.25
