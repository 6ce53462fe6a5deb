"""Sequential (one block on the device at a time) calibration gives the whole-model scales."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine import calib
from engine.calib.sequential import calibrate_activations_sequential
from engine.quant import schemes
from engine.quant.select import apply_plan, plan_layers, quant_layers


def _quantized_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    apply_plan(model, plan_layers(model, schemes.get("W8A8-INT8"))[0])
    calib.calibrate_weights(model)
    return model


def _batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 300, (2, 24), generator=g) for _ in range(3)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_sequential_activation_scales_equal_the_whole_model_ones(device):
    whole = _quantized_llama()
    seq = copy.deepcopy(whole)
    batches = _batches()
    calib.calibrate_activations(whole, lambda m: [m(input_ids=b) for b in batches])
    seen = []
    left = calibrate_activations_sequential(seq, lambda m: [m(input_ids=b.to(device)) for b in batches], device,
                                            progress=seen.append)
    assert left == [] and seen[-1] == "block 3 of 3"
    assert all(p.device.type == "cpu" for p in seq.parameters())  # the weights came back home
    pairs = list(zip(quant_layers(whole), quant_layers(seq)))
    assert len(pairs) == 21
    for (name, a), (_, b) in pairs:
        assert b.input_quantizer.amax.device.type == "cpu"
        torch.testing.assert_close(b.input_quantizer.amax, a.input_quantizer.amax, rtol=1e-5, atol=0, msg=name)
