"""AWQ and SmoothQuant on Llama-, Qwen2-, Mistral- and BERT-style blocks built from configs:
mappings found from the running graph, exact re-parametrisation (full-precision output
unchanged to 1e-5 relative), lower quantized error than RTN, and exports without extra tensors."""

from __future__ import annotations

import re

import pytest
import torch

from engine.calib.awq import awq
from engine.calib.smoothquant import smoothquant
from engine.errors import LowbitError
from engine.events import CancelToken, Cancelled
from engine.quant import schemes
from engine.quant.select import apply_plan, plan_layers, quant_layers, quantization_disabled

VOCAB = 200


@pytest.fixture(autouse=True)
def _eager_fake_quant(monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", "0")


def build(kind: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    if kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=4, tie_word_embeddings=False, **common))
    elif kind == "qwen2":  # grouped-query attention and q/k/v biases
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(num_key_value_heads=2, **common))
    elif kind == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(num_key_value_heads=2, sliding_window=16, **common))
    else:
        model = tf.BertModel(tf.BertConfig(**common))
    model.eval()
    # trained models have outlier channels; give the norms some, so that scaling has work to do
    g = torch.Generator().manual_seed(1)
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if "norm" in name.lower() and isinstance(w, torch.Tensor) and w.dim() == 1:
            w.data.mul_(torch.exp(torch.randn(w.shape, generator=g)))
    return model


def _batches(n=3, seq=24):
    g = torch.Generator().manual_seed(2)
    return [torch.randint(4, VOCAB, (2, seq), generator=g) for _ in range(n)]


def _loop(batches, kind):
    mask = torch.ones(2, batches[0].shape[1], dtype=torch.long)
    mask[1, -5:] = 0  # one padded sequence

    def loop(m):
        for b in batches:
            m(input_ids=b, attention_mask=mask)
    return loop


def _outputs(model, batches):
    with quantization_disabled(model), torch.no_grad():
        out = model(input_ids=batches[0])
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def _quantized_out(model, batches):
    with torch.no_grad():
        out = model(input_ids=batches[0])
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


EXPECTED = {  # (producer suffix -> consumer suffixes) per block
    "llama": {"input_layernorm": ["q_proj", "k_proj", "v_proj"], "v_proj": ["o_proj"],
              "post_attention_layernorm": ["gate_proj", "up_proj"], "up_proj": ["down_proj"]},
    "qwen2": {"input_layernorm": ["q_proj", "k_proj", "v_proj"],
              "post_attention_layernorm": ["gate_proj", "up_proj"], "up_proj": ["down_proj"]},
    "mistral": {"input_layernorm": ["q_proj", "k_proj", "v_proj"],
                "post_attention_layernorm": ["gate_proj", "up_proj"], "up_proj": ["down_proj"]},
    "bert": {"value": ["dense"]},
}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "bert"])
@pytest.mark.parametrize("algo", ["awq", "smoothquant"])
def test_exact_reparametrisation_and_graph_mappings(kind, algo):
    model = build(kind)
    plans, _ = plan_layers(model, schemes.get("W4A16-INT4" if algo == "awq" else "W8A8-INT8"))
    apply_plan(model, plans)
    batches = _batches()
    ref = _outputs(model, batches)
    q_before = _quantized_out(model, batches)
    res = (awq(model, _loop(batches, kind), grid=10) if algo == "awq"
           else smoothquant(model, _loop(batches, kind)))
    got = _outputs(model, batches)
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert rel <= 1e-5, rel
    # the mappings, read from the graph: every foldable group of each block, nothing else folded
    folded = {}
    for g in res.groups:
        if g["producer"] is not None:
            block = re.search(r"layers?\.\d+", g["consumers"][0]).group(0)
            folded.setdefault(block, {})[g["producer"].rsplit(".", 1)[-1]] = sorted(
                c.rsplit(".", 1)[-1] for c in g["consumers"])
    assert len(folded) == 2 and all(v == {k: sorted(c) for k, c in EXPECTED[kind].items()} for v in folded.values()), folded
    if kind == "bert":  # post-LN: the norm output also feeds the residual, so it stays unscaled
        reasons = {g["reason"] for g in res.groups if g["producer"] is None}
        assert any("residual" in r for r in reasons)
    # and quantization loses less than before on the samples the search saw
    key = "awq_error" if algo == "awq" else "smoothquant_error"
    assert all(r[key] <= r["rtn_error"] + 1e-12 for r in res.layers)
    assert sum(r[key] for r in res.layers) < sum(r["rtn_error"] for r in res.layers)
    del q_before


def test_smoothquant_fixed_alpha_and_bad_values():
    model = build("llama")
    apply_plan(model, plan_layers(model, schemes.get("W8A8-INT8"))[0])
    batches = _batches(2)
    res = smoothquant(model, _loop(batches, "llama"), alpha=0.5)
    assert {g["alpha"] for g in res.groups if g["producer"]} == {0.5}
    with pytest.raises(LowbitError, match="alpha"):
        smoothquant(model, _loop(batches, "llama"), alpha=1.5)
    with pytest.raises(LowbitError, match="grid"):
        awq(model, _loop(batches, "llama"), grid=1)


def test_awq_cancel():
    model = build("llama")
    apply_plan(model, plan_layers(model, schemes.get("W4A16-INT4"))[0])
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        awq(model, _loop(_batches(1), "llama"), cancel=token)


@pytest.mark.parametrize("target", ["compressed-tensors", "modelopt", "dense"])
def test_awq_model_exports_without_extra_tensors(target, tmp_path):
    from safetensors import safe_open

    from engine import calib
    from engine.export import export_model, verify_export

    model = build("llama")
    scheme = schemes.get("W4A16-NVFP4") if target == "modelopt" else schemes.get("custom", "int4_g32", "none")
    apply_plan(model, plan_layers(model, scheme)[0])
    batches = _batches(2)
    plain = build("llama")
    apply_plan(plain, plan_layers(plain, scheme)[0])
    awq(model, _loop(batches, "llama"), grid=6)
    for m in (model, plain):
        calib.calibrate(m, _loop(batches, "llama"))
    export_model(model, target, tmp_path / "awq")
    export_model(plain, target, tmp_path / "plain")

    def keys(folder):
        out = set()
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as fh:
                out |= set(fh.keys())
        return out

    assert keys(tmp_path / "awq") == keys(tmp_path / "plain")  # the scales live in the norms and weights
    v = verify_export(tmp_path / "awq", model, batches[:1])
    assert v["passed"], v
