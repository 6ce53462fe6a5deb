"""QuantLinear, layer selection and calibration on real (tiny) transformers models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine import calib, formats
from engine.quant import schemes
from engine.quant.linear import QuantLinear
from engine.quant.select import (DEFAULT_EXCLUSIONS, Override, apply_plan, plan_layers, quant_layers,
                                 quantization_disabled, remove_quantization)


def _llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_quantlinear_shares_parameters_and_restores():
    lin = nn.Linear(64, 32)
    w, b = lin.weight, lin.bias
    q = QuantLinear.convert(lin, formats.get("int4_g32"), formats.get("fp8_e4m3"))
    assert q is lin and q.weight is w and q.bias is b
    assert q.weight.data_ptr() == w.data_ptr()
    restored = q.restore()
    assert type(restored) is nn.Linear and restored.weight is w
    assert not hasattr(restored, "weight_quantizer")


def test_fake_quant_forward_equals_dequantize_then_matmul():
    torch.manual_seed(1)
    for wname, aname in [("int4_g32", "int8_tensor"), ("nvfp4", "nvfp4"), ("fp8_e4m3", "fp8_e4m3"),
                         ("mxfp4", "mxfp4"), ("int8", None)]:
        lin = nn.Linear(96, 48)
        q = QuantLinear.convert(lin, formats.get(wname), formats.get(aname) if aname else None)
        x = torch.randn(3, 5, 96)
        calib.calibrate(q, lambda m: m(x))
        wf = formats.get(wname)
        w_hat = wf.dequantize(wf.quantize(q.weight.detach(), q.weight_quantizer.amax))
        if aname:
            af = formats.get(aname)
            x_hat = af.dequantize(af.quantize(x, q.input_quantizer.amax))
        else:
            x_hat = x
        expected = F.linear(x_hat, w_hat, q.bias)
        with torch.no_grad():
            got = q(x)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=f"{wname}/{aname}")


def test_plan_default_exclusions_overrides_and_warnings():
    model = _llama()
    plans, warnings = plan_layers(model, schemes.get("W4A16-INT4"), exclude=["layers.1.mlp.*"],
                                  overrides=[Override("down_proj", weight="int8"),
                                             Override("layers.0.self_attn.q_proj", weight="none"),
                                             Override("no_such_layer", weight="int8")])
    by = {p.name: p for p in plans}
    assert by["lm_head"].weight is None and "default" in by["lm_head"].reason
    assert by["model.layers.0.mlp.up_proj"].weight == "int4_g128"
    assert by["model.layers.1.mlp.up_proj"].weight is None  # excluded
    assert by["model.layers.0.mlp.down_proj"].weight == "int8"  # override wins (later rule)
    assert by["model.layers.0.self_attn.q_proj"].weight is None
    assert any("no_such_layer" in w and "matches no Linear" in w for w in warnings)
    assert "*lm_head" in DEFAULT_EXCLUSIONS
    done = apply_plan(model, plans)
    assert "lm_head" not in done and len(done) == sum(p.quantized for p in plans)
    assert all(isinstance(m, QuantLinear) for _, m in quant_layers(model))


def test_quantization_disabled_is_the_original_model():
    model = _llama()
    ids = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    plans, _ = plan_layers(model, schemes.get("W4A4-NVFP4"))
    apply_plan(model, plans)
    calib.calibrate(model, lambda m: m(input_ids=ids))
    with torch.no_grad():
        q = model(input_ids=ids).logits
        with quantization_disabled(model):
            off = model(input_ids=ids).logits
    assert torch.equal(off, ref)
    assert not torch.equal(q, ref)
    remove_quantization(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)


def test_mse_calibration_beats_max_on_heavy_tailed_weights():
    torch.manual_seed(0)
    w = torch.distributions.StudentT(1.5).sample((128, 256))
    for name in ("int4", "int4_g32", "int3_g32", "fp8_e4m3_channel", "nvfp4"):
        lin = nn.Linear(256, 128, bias=False)
        lin.weight.data.copy_(w)
        q = QuantLinear.convert(lin, formats.get(name), None)
        calib.calibrate_weights(q, "max")
        err_max = (q.quantized_weight() - w).pow(2).mean().item()
        calib.calibrate_weights(q, "mse")
        err_mse = (q.quantized_weight() - w).pow(2).mean().item()
        if name == "nvfp4":
            # only the tensor-wide scale is searched (block scales follow the data): never worse
            assert err_mse <= err_max, (name, err_mse, err_max)
        else:
            assert err_mse < 0.99 * err_max, (name, err_mse, err_max)


def test_percentile_calibration_ignores_rare_outliers():
    torch.manual_seed(0)
    lin = nn.Linear(64, 8)
    q = QuantLinear.convert(lin, None, formats.get("int8_tensor"))
    x = torch.randn(64, 64)
    x[0, 0] = 1000.0
    calib.calibrate_activations(q, lambda m: m(x), "max")
    assert q.input_quantizer.amax.item() == 1000.0
    calib.calibrate_activations(q, lambda m: m(x), "percentile", 99.9)
    assert q.input_quantizer.amax.item() < 10.0


def test_dynamic_formats_take_no_calibrated_amax():
    lin = nn.Linear(64, 8)
    q = QuantLinear.convert(lin, formats.get("mxfp4"), formats.get("mxfp4"))
    x = torch.randn(4, 64)
    calib.calibrate(q, lambda m: m(x))
    assert q.weight_quantizer.amax is None and q.input_quantizer.amax is None
