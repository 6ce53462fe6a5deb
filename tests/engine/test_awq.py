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


# ------------------------------------------------------------------ explicit scales where no fold exists

def _explicit_bert(scheme="custom"):
    model = build("bert")
    sch = schemes.get("custom", "int4_g32", "none") if scheme == "custom" else schemes.get(scheme)
    apply_plan(model, plan_layers(model, sch)[0])
    return model


def test_explicit_scales_where_no_fold_exists_are_exact_and_lower_the_error():
    """BERT's FFN down projection reads GELU's output (and its post-LN norms feed the residual):
    with unfoldable="explicit" those groups are searched too, their weights hold W * s and the
    layers multiply their input by 1 / s, so the full-precision output is unchanged and the
    quantized error on the samples is below round-to-nearest."""
    batches = _batches()
    skip, explicit = _explicit_bert(), _explicit_bert()
    ref = _outputs(explicit, batches)
    res_skip = awq(skip, _loop(batches, "bert"), grid=10)
    res = awq(explicit, _loop(batches, "bert"), grid=10, unfoldable="explicit")
    got = _outputs(explicit, batches)
    assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-5
    groups = {g["consumers"][0]: g for g in res.groups}
    down = groups["encoder.layer.0.output.dense"]
    assert down["producer"] is None and down["explicit"] and not down["folded"] and down["ratio"] > 0
    assert "channel by channel" in down["reason"]
    layer = explicit.encoder.layer[0].output.dense
    assert layer.pre_quant_scale is not None and layer.pre_quant_scale.shape == (layer.in_features,)
    # folded groups are untouched by the setting; skipped groups carry no multiplier
    assert all(not g.get("explicit") for g in res_skip.groups)
    assert skip.encoder.layer[0].output.dense.pre_quant_scale is None
    rows = {r["name"]: r for r in res.layers}
    assert rows["encoder.layer.1.output.dense"]["awq_error"] < rows["encoder.layer.1.output.dense"]["rtn_error"]
    assert all(r["awq_error"] <= r["rtn_error"] + 1e-12 for r in res.layers)
    assert len(res.layers) > len(res_skip.layers)
    with pytest.raises(LowbitError, match="unfoldable"):
        awq(skip, _loop(batches, "bert"), unfoldable="fold")


def test_explicit_scales_survive_a_saved_state_and_restore():
    from engine.quant.select import restore_amax

    batches = _batches(2)
    model = _explicit_bert()
    awq(model, _loop(batches, "bert"), grid=6, unfoldable="explicit")
    q = _quantized_out(model, batches)
    state = model.state_dict()
    assert "encoder.layer.0.output.dense.pre_quant_scale" in state
    again = build("bert")  # a fresh model rebuilt from the plan and the saved state (engine.pipeline.student)
    apply_plan(again, plan_layers(again, schemes.get("custom", "int4_g32", "none"))[0])
    restore_amax(again, state)
    again.load_state_dict(state, strict=False)
    assert torch.equal(_quantized_out(again, batches), q)
    # back to plain nn.Linear layers: the multiplier goes into the weight, the output stays
    fp = _outputs(again, batches)
    for _, layer in quant_layers(again):
        layer.restore()
    with torch.no_grad():
        plain = again(input_ids=batches[0]).last_hidden_state
    assert float((plain - fp).abs().max() / fp.abs().max()) <= 1e-5


def test_explicit_scales_export_dense_folded_and_packed_refused(tmp_path):
    from safetensors import safe_open

    from engine import calib
    from engine.errors import ExportError
    from engine.export import export_model, verify_export
    from engine.export.exporter import check_exportable

    batches = _batches(2)
    model, plain = _explicit_bert(), _explicit_bert()
    awq(model, _loop(batches, "bert"), grid=6, unfoldable="explicit")
    for m in (model, plain):
        calib.calibrate(m, _loop(batches, "bert"))
    export_model(model, "dense", tmp_path / "awq")
    export_model(plain, "dense", tmp_path / "plain")

    def tensors(folder):
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as fh:
                out.update({k: fh.get_tensor(k) for k in fh.keys()})
        return out

    got = tensors(tmp_path / "awq")
    assert set(got) == set(tensors(tmp_path / "plain"))  # no multiplier tensor: it is in the weight
    layer = model.encoder.layer[0].output.dense
    assert torch.equal(got["encoder.layer.0.output.dense.weight"],
                       (layer.quantized_weight().float() * layer.pre_quant_scale).to(got[
                           "encoder.layer.0.output.dense.weight"].dtype))
    v = verify_export(tmp_path / "awq", model, batches[:1])
    assert v["passed"], v
    target = "compressed-tensors"
    with pytest.raises(ExportError, match=r"encoder\.layer\.0\.attention\.self\.query.*awq_unfoldable: skip"):
        check_exportable(model, target)
    with pytest.raises(ExportError, match="explicit AWQ input scale"):
        export_model(model, target, tmp_path / target)
    assert not (tmp_path / target).exists() or not any((tmp_path / target).iterdir())


@pytest.mark.parametrize("scheme,algo", [("custom", "W4A16_AWQ"), ("W4A4-NVFP4", "NVFP4_AWQ")])
def test_explicit_scales_export_to_modelopt_as_pre_quant_scale_and_reload(scheme, algo, tmp_path):
    """ModelOpt's AWQ layouts carry the layer's input multiplier as pre_quant_scale [in]; our reader
    and rebuild apply it before the input quantizer, so the reload gives the fake-quant outputs."""
    import json

    from engine import calib
    from engine.export import export_model, read_export, verify_export

    batches = _batches(2)
    model = _explicit_bert(scheme)
    awq(model, _loop(batches, "bert"), grid=6, unfoldable="explicit")
    calib.calibrate(model, _loop(batches, "bert"))
    explicit = {n: m for n, m in quant_layers(model) if m.pre_quant_scale is not None}
    assert "encoder.layer.0.output.dense" in explicit
    export_model(model, "modelopt", tmp_path / "mo")
    ckpt = read_export(tmp_path / "mo")
    for name, layer in quant_layers(model):
        got = ckpt.layers[name]
        if name in explicit:
            assert torch.equal(got.pre_quant_scale, layer.pre_quant_scale.float()), name
            assert torch.equal(got.weight(torch.float32), layer.quantized_weight().float()), name  # not folded
        else:
            assert got.pre_quant_scale is None, name
    marker = json.loads((tmp_path / "mo" / "hf_quant_config.json").read_text())["quantization"]
    algos = {e["quant_algo"] for e in marker["quantized_layers"].values()} if "quantized_layers" in marker else {
        marker["quant_algo"]}
    assert algo in algos
    v = verify_export(tmp_path / "mo", model, batches)
    assert v["passed"], v


def test_modelopt_refuses_explicit_scales_where_its_layout_has_no_pre_quant_scale(tmp_path):
    from engine import calib
    from engine.errors import ExportError
    from engine.export import carries_input_multipliers, export_model

    batches = _batches(2)
    model = _explicit_bert("W4A16-NVFP4")  # ModelOpt has no weight-only NVFP4 layout with pre_quant_scale
    assert not carries_input_multipliers(model, "modelopt") and carries_input_multipliers(model, "dense")
    awq(model, _loop(batches, "bert"), grid=4, unfoldable="explicit")
    calib.calibrate(model, _loop(batches, "bert"))
    with pytest.raises(ExportError, match="pre_quant_scale tensor only in its AWQ layouts.*awq_unfoldable: skip"):
        export_model(model, "modelopt", tmp_path / "mo")
    assert carries_input_multipliers(_explicit_bert("W4A4-NVFP4"), "modelopt")
    assert not carries_input_multipliers(_explicit_bert("W4A4-NVFP4"), "dense")  # a reload would quantize x
    assert not carries_input_multipliers(_explicit_bert(), "compressed-tensors")


def test_explicit_scales_are_seen_by_gptq_and_the_auto_setting():
    from engine.calib.awq import resolve_unfoldable
    from engine.calib.gptq import gptq

    assert resolve_unfoldable("auto", None) == "explicit" and resolve_unfoldable("auto", "dense") == "explicit"
    assert resolve_unfoldable("auto", "compressed-tensors") == "skip" and resolve_unfoldable("auto", "modelopt") == "skip"
    assert resolve_unfoldable("skip", None) == "skip" and resolve_unfoldable("explicit", "modelopt") == "explicit"
    # with the export's own answer for the model (modelopt with an AWQ layout, dense with quantized activations)
    assert resolve_unfoldable("auto", "modelopt", True) == "explicit"
    assert resolve_unfoldable("auto", "dense", False) == "skip" and resolve_unfoldable("skip", "modelopt", True) == "skip"
    batches = _batches(3)
    model = _explicit_bert()
    awq(model, _loop(batches, "bert"), grid=6, unfoldable="explicit")
    layer = model.encoder.layer[1].output.dense
    seen = []
    h = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1]) * m.pre_quant_scale))
    with quantization_disabled(model), torch.no_grad():
        _loop(batches, "bert")(model)
    h.remove()
    x = torch.cat(seen)  # what the matmul multiplies
    w = layer.weight.detach().clone()
    res = gptq(model, _loop(batches, "bert"))
    row = next(r for r in res.layers if r["name"] == "encoder.layer.1.output.dense")
    d = layer.weight.detach() - w
    rel = float(((x @ d.T) ** 2).sum() / ((x @ w.T) ** 2).sum())
    assert abs(rel - row["gptq_error"]) <= 1e-3 * row["gptq_error"]  # its Hessian is that of x * pre_quant_scale
    assert all(r["gptq_error"] < r["rtn_error"] for r in res.layers)


def _bert_run(model_dir, data, run_dir, export, unfoldable="auto"):
    from engine.pipeline.runner import run
    from engine.recipe import Recipe

    recipe = Recipe.from_dict({
        "model": {"path": str(model_dir)},
        "data": {"path": str(data), "seq_len": 32, "batch_size": 2, "calib_batches": 2, "eval_batches": 1},
        "quant": {"scheme": "custom", "weight": "int4_g32"}, "mode": "ptq", "device": "cpu",
        "calibration": {"algorithm": "awq", "awq_grid": 4, "awq_unfoldable": unfoldable},
        "export": {"format": export, "verify": True}, "analysis": {"benchmark": False}})
    report = run(recipe, run_dir=run_dir).report
    assert report["export"]["verify"]["passed"], report["export"]["verify"]  # reloaded, rebuilt, same outputs
    return report


def test_a_bert_run_chooses_explicit_scales_by_export_target(tiny_bert_dir, text_file, tmp_path):
    from safetensors import safe_open

    from engine.errors import ExportError
    from engine.recipe import Recipe, RecipeError

    def unfolded(report):  # the groups with no fold: searched (a ratio) when explicit, else left alone
        return {g["consumers"][0]: g for step in report["ptq_algorithm"]["steps"] for g in step["groups"]
                if g["producer"] is None}

    dense = _bert_run(tiny_bert_dir, text_file, tmp_path / "dense", "dense")  # auto: explicit
    groups = unfolded(dense)
    assert groups["encoder.layer.0.output.dense"]["ratio"] is not None
    assert any(g["explicit"] for g in groups.values())
    exported = [f for f in (tmp_path / "dense").rglob("*.safetensors") if "export" in str(f.parent)]
    assert exported
    for f in exported:  # folded into the weights: no tensor a loader would not know
        with safe_open(str(f), "pt") as fh:
            assert not any(k.endswith("pre_quant_scale") for k in fh.keys())
    mo = _bert_run(tiny_bert_dir, text_file, tmp_path / "mo", "modelopt")  # auto: explicit (W4A16_AWQ carries it)
    assert any(g["explicit"] for g in unfolded(mo).values())
    scales = []
    for f in (tmp_path / "mo").rglob("*.safetensors"):
        if "export" in str(f.parent):
            with safe_open(str(f), "pt") as fh:
                scales += [fh.get_tensor(k) for k in fh.keys() if k.endswith("output.dense.pre_quant_scale")]
    assert scales and not all(bool((t == 1).all()) for t in scales)  # the real multipliers, not ones
    packed = _bert_run(tiny_bert_dir, text_file, tmp_path / "ct", "compressed-tensors")  # auto: skip
    assert all(g["ratio"] is None and not g["explicit"] for g in unfolded(packed).values())
    with pytest.raises(ExportError, match="awq_unfoldable: skip"):  # refused right after AWQ, before any training
        _bert_run(tiny_bert_dir, text_file, tmp_path / "refused", "compressed-tensors", "explicit")
    with pytest.raises(RecipeError, match="awq_unfoldable"):
        Recipe.from_dict({"model": {"path": "demo"}, "calibration": {"awq_unfoldable": "fold"}})
