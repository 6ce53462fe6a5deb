"""compressed-tensors exports of the architectures users bring, loaded by transformers itself.

Qwen2 has biases on q/k/v and ties its embeddings (as Qwen2.5-0.5B ships); BERT is an encoder
loaded with ``AutoModel``. Each export is read back by transformers + compressed-tensors
(dequantize on load), an independent client, and must give the student's weight-only outputs.
Tolerance: 8 ulps of the model dtype times the largest output (they come out equal, or within
one bf16 ulp where bf16 matmuls round differently).
"""

import warnings

import pytest
import torch

from engine import calib
from engine.export import export_model
from engine.quant import schemes
from engine.quant.select import apply_plan, plan_layers, quant_layers

VOCAB = 1000


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", "0")  # the eager kernel is the definition; compiling costs seconds


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=True))


def _bert():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                num_attention_heads=4))


def _output(model, ids):
    out = model(input_ids=ids)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def _weight_only(model, ids):
    """The student's output with its activation quantizers off: what a dequantized load computes."""
    qs = [layer.input_quantizer for _, layer in quant_layers(model)]
    before = [q.enabled for q in qs]
    for q in qs:
        q.enabled = False
    try:
        with torch.no_grad():
            return _output(model, ids)
    finally:
        for q, on in zip(qs, before):
            q.enabled = on


CASES = [(arch, scheme) for arch in ("qwen2", "bert") for scheme in ("W4A16-INT4", "W8A8-INT8", "W4A16-NVFP4")]


@pytest.mark.parametrize("arch,scheme", CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_transformers_loads_our_compressed_tensors_export(arch, scheme, tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    from transformers.utils.quantization_config import CompressedTensorsConfig

    dtype = torch.bfloat16 if "NVFP4" in scheme else torch.float32  # FP4 decompresses in bf16
    torch.manual_seed(0)
    model = (_qwen2() if arch == "qwen2" else _bert()).to(dtype).eval()
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    plans, _ = plan_layers(model, schemes.get(scheme))
    apply_plan(model, plans)
    calib.calibrate(model, lambda m: [m(input_ids=ids)])
    out = tmp_path / "ct"
    export_model(model, "compressed-tensors", out)
    auto = AutoModelForCausalLM if arch == "qwen2" else AutoModel
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a dequantized load lists the input scales it does not use
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = auto.from_pretrained(out, quantization_config=CompressedTensorsConfig(dequantize=True),
                                          dtype=dtype).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    want = _weight_only(model, ids)
    with torch.no_grad():
        got = _output(loaded, ids)
    if arch == "qwen2":
        assert loaded.config.tie_word_embeddings and loaded.lm_head.weight is loaded.model.embed_tokens.weight
        bias = dict(loaded.named_parameters())["model.layers.0.self_attn.q_proj.bias"]
        assert torch.equal(bias, model.model.layers[0].self_attn.q_proj.bias)
    assert float((got - want).abs().max()) <= 8 * torch.finfo(dtype).eps * max(1.0, float(want.abs().max()))
