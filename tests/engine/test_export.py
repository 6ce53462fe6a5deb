"""Exports: every scheme through every writer that can express it, read back bit for bit,
verified against the student, loaded by compressed-tensors, sized, and written atomically."""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from engine import calib, formats
from engine.errors import ExportError
from engine.pipeline.stages.export import export_stage
from engine.export import (MARKER, TARGETS, export_model, read_export, rebuild_model,
                           verify_export)
from engine.export import packing
from engine.quant import schemes
from engine.quant.select import apply_plan, plan_layers, quant_layers

VOCAB = 96


@pytest.fixture(autouse=True)
def _eager_fake_quant(monkeypatch):
    # torch.compile costs seconds per format and shape; the eager kernel is the definition
    monkeypatch.setenv("LOWBIT_COMPILE", "0")


def _tiny_config(**kw):
    from transformers import LlamaConfig

    base = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    base.update(kw)
    return LlamaConfig(**base)


def _base_model(dtype=torch.float32, **kw):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    # _from_config builds in `dtype` the way a checkpoint load does (rotary buffers stay float32)
    return LlamaForCausalLM._from_config(_tiny_config(**kw), dtype=dtype).eval()


def _batches(n=2, seq=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, seq), generator=g) for _ in range(n)]


def _quantize(model, scheme, overrides=(), batches=None):
    plans, _ = plan_layers(model, schemes.get(scheme) if isinstance(scheme, str) else scheme,
                           overrides=list(overrides))
    apply_plan(model, plans)
    batches = batches or _batches()
    calib.calibrate(model, lambda m: [m(input_ids=b) for b in batches])
    return model


_STUDENTS = {}


def student(scheme, dtype=torch.float32):
    """A calibrated student per (scheme, dtype), built once; tests must not change it."""
    key = (scheme, dtype)
    if key not in _STUDENTS:
        _STUDENTS[key] = _quantize(_base_model(dtype), scheme)
    return _STUDENTS[key]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bits, so that equality is bit for bit (also for float8 and NaN)."""
    t = t.detach().contiguous()
    return t.view(torch.uint8) if t.element_size() == 1 else t.view({2: torch.int16, 4: torch.int32,
                                                                      8: torch.int64}[t.element_size()])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _unsupported(scheme: str, target: str) -> bool:
    """Pairings a target's layout cannot express (the writer must refuse them)."""
    return target == "modelopt" and scheme in ("W4A4-MXFP4", "W4A16-MXFP4", "W3A16-INT3", "W2A16-INT2")


# ----------------------------------------------------------------------------- packing


def test_packers_invert_and_match_the_documented_bit_order():
    g = torch.Generator().manual_seed(0)
    for bits in range(1, 9):
        for cols in (32, 40, 100):
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            v = torch.randint(lo, hi + 1, (3, cols), generator=g).to(torch.int8)
            words = packing.pack_int_words(v, bits)
            assert words.dtype == torch.int32 and words.shape == (3, -(-cols * bits // 32))
            assert torch.equal(packing.unpack_int_words(words, bits, cols), v)
    # element i at bit 4*i, LSB first, offset +8: [1, 2, -8, 7, 0, ...] -> nibbles 9, 10, 0, 15, 8, ...
    v = torch.tensor([[1, 2, -8, 7, 0, 0, 0, 0]], dtype=torch.int8)
    assert packing.pack_int_words(v, 4).view(torch.uint8).tolist() == [[0xA9, 0xF0, 0x88, 0x88]]
    codes = torch.tensor([[1, 2, 3, 15]], dtype=torch.uint8)
    assert packing.pack_nibbles_last(codes).tolist() == [[0x21, 0xF3]]  # element 2i in the low nibble
    rows = torch.tensor([[1, -1], [-8, 7]], dtype=torch.int8)
    assert packing.pack_nibbles_rows(rows).tolist() == [[0x81, 0x7F]]  # row 2i low, two's complement
    assert torch.equal(packing.unpack_nibbles_rows(packing.pack_nibbles_rows(rows)), rows)
    c6 = torch.randint(0, 64, (2, 8), generator=g).to(torch.uint8)
    assert torch.equal(packing.unpack_6bit_last(packing.pack_6bit_last(c6)), c6)


def test_int_packing_matches_compressed_tensors():
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    g = torch.Generator().manual_seed(1)
    for bits in (2, 3, 4, 5, 8):
        v = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (4, 96), generator=g).to(torch.int8)
        assert torch.equal(packing.pack_int_words(v, bits), helpers.pack_to_int32(v, bits))


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scheme", schemes.names())
def test_round_trip_bit_for_bit(scheme, target, tmp_path):
    model = student(scheme)
    out = tmp_path / "export"
    if _unsupported(scheme, target):
        with pytest.raises(ExportError) as err:
            export_model(model, target, out)
        msg = str(err.value)
        assert schemes.get(scheme).weight in msg and "compressed-tensors" in msg and "dense" in msg
        assert not out.exists() and not any(tmp_path.iterdir())
        return
    result = export_model(model, target, out)
    ckpt = read_export(out)
    assert ckpt.target == target
    layers = dict(quant_layers(model))
    assert set(ckpt.layers) == set(layers)
    for name, layer in layers.items():
        got = ckpt.layers[name]
        wq, iq = layer.weight_quantizer, layer.input_quantizer
        assert (got.weight_format, got.activation_format) == (wq.format_name, iq.format_name), name
        if target == "dense":
            assert _same_bits(got.dense_weight, layer.quantized_weight())
        else:
            want = wq.fmt.quantize(layer.weight.detach(), wq.amax)
            q = got.qtensor
            assert _same_bits(q.codes, want.codes), name
            assert _same_bits(q.scale, want.scale), name
            for part in ("scale2", "zero_point"):
                if getattr(want, part) is not None:
                    assert _same_bits(getattr(q, part), getattr(want, part)), (name, part)
        if iq.fmt is not None and iq.amax is not None:
            assert _same_bits(got.input_amax.reshape(()), iq.amax.reshape(())), name
        else:
            assert got.input_amax is None
    v = verify_export(out, model, _batches(1))
    assert v["passed"] and v["max_abs_logit_diff"] <= v["tolerance"], v
    assert result["n_files"] >= 3 and result["bytes_on_disk"] > 0


def test_layout_tensors_follow_each_target(tmp_path):
    """Names, dtypes, shapes and scale conventions of the stored tensors (one layer per case)."""
    from safetensors.torch import load_file

    name = "model.layers.0.mlp.down_proj"  # [128, 256]
    cases = [
        ("W4A16-INT4", "compressed-tensors", {"weight_packed": (torch.int32, (128, 32)),
                                              "weight_scale": (torch.float32, (128, 2)),
                                              "weight_shape": (torch.int64, (2,))}),
        ("W8A8-INT8", "compressed-tensors", {"weight": (torch.int8, (128, 256)),
                                             "weight_scale": (torch.float32, (128, 1)),
                                             "input_scale": (torch.float32, (1,))}),
        ("W4A4-NVFP4", "compressed-tensors", {"weight_packed": (torch.uint8, (128, 128)),
                                              "weight_scale": (torch.float8_e4m3fn, (128, 16)),
                                              "weight_global_scale": (torch.float32, (1,)),
                                              "input_global_scale": (torch.float32, (1,))}),
        ("W4A4-MXFP4", "compressed-tensors", {"weight_packed": (torch.uint8, (128, 128)),
                                              "weight_scale": (torch.uint8, (128, 8))}),
        ("W4A16-INT4", "modelopt", {"weight": (torch.uint8, (64, 256)), "weight_scale": (torch.float32, (128, 2)),
                                    "pre_quant_scale": (torch.float32, (256,))}),
        ("W4A4-NVFP4", "modelopt", {"weight": (torch.uint8, (128, 128)),
                                    "weight_scale": (torch.float8_e4m3fn, (128, 16)),
                                    "weight_scale_2": (torch.float32, ()), "input_scale": (torch.float32, ())}),
        ("W8A8-FP8", "modelopt", {"weight": (torch.float8_e4m3fn, (128, 256)), "weight_scale": (torch.float32, ()),
                                  "input_scale": (torch.float32, ())}),
    ]
    for scheme, target, want in cases:
        model = student(scheme)
        out = tmp_path / f"{scheme}-{target}"
        export_model(model, target, out)
        tensors = load_file(str(out / "model.safetensors"))
        local = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        assert {k: (v.dtype, tuple(v.shape)) for k, v in local.items()} == want, (scheme, target)
        layer = dict(quant_layers(model))[name]
        if scheme == "W4A4-NVFP4":
            s2 = layer.weight_quantizer.fmt.quantize(layer.weight.detach(), layer.weight_quantizer.amax).scale2
            act_s2 = layer.input_quantizer.amax / (6 * 448)
            if target == "compressed-tensors":  # reciprocal global scales
                assert torch.equal(local["weight_global_scale"], (1.0 / s2).reshape(1))
                assert torch.equal(local["input_global_scale"], (1.0 / act_s2).reshape(1))
            else:
                assert torch.equal(local["weight_scale_2"], s2) and torch.equal(local["input_scale"], act_s2)
        if scheme == "W4A16-INT4":  # our grid: amax / 7, carried as is
            blk = layer.weight.detach().reshape(128, 2, 128).abs().amax(-1)
            assert torch.equal(local["weight_scale"], blk / 7)
        config = json.loads((out / "config.json").read_text())
        qc = config["quantization_config"]
        if target == "compressed-tensors":
            assert qc["quant_method"] == "compressed-tensors" and qc["quantization_status"] == "compressed"
            assert qc["kv_cache_scheme"] is None and qc["version"]
            assert qc["ignore"] == ["lm_head"] and qc["config_groups"]["group_0"]["targets"] == ["Linear"]
        else:
            hf = json.loads((out / "hf_quant_config.json").read_text())
            assert hf["producer"]["name"] == "lowbit-studio" and hf["quantization"]["exclude_modules"] == ["lm_head"]
            algo = {"W4A16-INT4": "W4A16_AWQ", "W4A4-NVFP4": "NVFP4", "W8A8-FP8": "FP8"}[scheme]
            assert hf["quantization"]["quant_algo"] == qc["quant_algo"] == algo and qc["quant_method"] == "modelopt"
            assert hf["quantization"]["kv_cache_quant_algo"] is None
            if algo == "W4A16_AWQ":
                assert hf["quantization"]["group_size"] == 128


def test_mixed_precision(tmp_path):
    overrides = [{"pattern": "*mlp*", "weight": "int4_g128", "activation": "none"},
                 {"pattern": "*o_proj", "weight": "int8", "activation": "int8_tensor"},
                 {"pattern": "*k_proj", "weight": "none", "activation": "none"}]
    model = _quantize(_base_model(), "W8A8-FP8", overrides)
    ct_out, mo_out = tmp_path / "ct", tmp_path / "mo"
    export_model(model, "compressed-tensors", ct_out)
    qc = json.loads((ct_out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "mixed-precision"
    assert sorted(g["format"] for g in qc["config_groups"].values()) == ["float-quantized", "int-quantized",
                                                                         "pack-quantized"]
    assert set(qc["ignore"]) == {"lm_head", "model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.k_proj"}
    targets = [t for g in qc["config_groups"].values() for t in g["targets"]]
    assert len(targets) == len(set(targets)) == 12
    export_model(model, "modelopt", mo_out)
    hf = json.loads((mo_out / "hf_quant_config.json").read_text())["quantization"]
    assert hf["quant_algo"] == "MIXED_PRECISION"
    assert hf["quantized_layers"]["model.layers.0.mlp.up_proj"] == {"quant_algo": "W4A16_AWQ", "group_size": 128}
    assert hf["quantized_layers"]["model.layers.1.self_attn.o_proj"] == {"quant_algo": "W8A8_SQ_PER_CHANNEL"}
    assert hf["quantized_layers"]["model.layers.1.self_attn.q_proj"] == {"quant_algo": "FP8"}
    for out in (ct_out, mo_out):
        v = verify_export(out, model, _batches(1))
        assert v["passed"], v


def test_modelopt_refuses_dynamic_activations_and_odd_shapes(tmp_path):
    custom = schemes.get("custom", "int8", "int8")  # per-token int8 activations: no ModelOpt algorithm
    with pytest.raises(ExportError, match="int8.*compressed-tensors or dense"):
        export_model(_quantize(_base_model(), custom), "modelopt", tmp_path / "a")
    with pytest.raises(ExportError, match="fp8_e5m2"):
        export_model(_quantize(_base_model(), schemes.get("custom", "fp8_e5m2", None)), "compressed-tensors",
                     tmp_path / "b")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- files, shards, atomicity


def test_sharded_dense_export_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = student("W4A4-NVFP4")
    out = tmp_path / "dense"
    result = export_model(model, "dense", out, max_shard_mb=0.25, recipe={"quant": {"scheme": "W4A4-NVFP4"}})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all((out / s).exists() for s in shards)
    assert result["n_files"] == len(list(out.iterdir()))
    from safetensors import safe_open

    with safe_open(str(out / shards[0]), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["lowbit.layers"])["model.layers.0.mlp.up_proj"] == {"weight": "nvfp4",
                                                                               "activation": "nvfp4"}
    assert json.loads(meta["lowbit.recipe"]) == {"quant": {"scheme": "W4A4-NVFP4"}}
    info = json.loads((out / MARKER).read_text())
    assert info["layers"]["model.layers.0.mlp.up_proj"]["weight"] == "nvfp4"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _batches(1)[0]
    with torch.no_grad():
        want = _weight_only_logits(model, ids)
        got = plain(input_ids=ids).logits
    assert torch.equal(got, want)  # same fake-quant weights, no activation quantization
    v = verify_export(out, model, [ids])
    assert v["passed"] and v["max_abs_logit_diff"] == 0.0, v


def _weight_only_logits(model, ids):
    saved = [(layer.input_quantizer, layer.input_quantizer.enabled) for _, layer in quant_layers(model)]
    try:
        for q, _ in saved:
            q.enabled = False
        with torch.no_grad():
            return model(input_ids=ids).logits
    finally:
        for q, state in saved:
            q.enabled = state


def test_tied_embeddings_are_written_once(tmp_path):
    model = _quantize(_base_model(tie_word_embeddings=True), "W4A16-NVFP4")
    out = tmp_path / "tied"
    export_model(model, "compressed-tensors", out)
    ckpt = read_export(out)
    assert "lm_head.weight" not in ckpt.tensors and "model.embed_tokens.weight" in ckpt.tensors
    rebuilt = rebuild_model(out)
    assert rebuilt.lm_head.weight.data_ptr() == rebuilt.model.embed_tokens.weight.data_ptr()
    assert verify_export(out, model, _batches(1))["passed"]


def test_refuses_a_foreign_folder_and_replaces_a_previous_export(tmp_path):
    model = student("W8A8-FP8")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty and is not a previous lowbit export"):
        export_model(model, "compressed-tensors", foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "out"
    export_model(model, "dense", out, max_shard_mb=0.2)
    old_shards = {p.name for p in out.glob("model-*.safetensors")}
    assert len(old_shards) > 1
    export_model(model, "compressed-tensors", out)  # a previous lowbit export may be replaced
    names = {p.name for p in out.iterdir()}
    assert not names & old_shards and "model.safetensors.index.json" not in names
    assert names == {"config.json", "model.safetensors", "generation_config.json", MARKER}
    assert read_export(out).target == "compressed-tensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    export_model(model, "modelopt", empty)
    assert (empty / "hf_quant_config.json").exists()


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def _looks_complete(folder: Path) -> list:
    """Files that would let a loader take ``folder`` for a finished export."""
    bad = []
    for config in folder.rglob("config.json"):
        if "quantization_config" in json.loads(config.read_text()):
            bad.append(config)
    for index in folder.rglob("model.safetensors.index.json"):
        shards = set(json.loads(index.read_text())["weight_map"].values())
        if any(not (index.parent / s).exists() for s in shards):
            bad.append(index)
    for st in folder.rglob("*.safetensors"):
        if not st.name.startswith("."):
            bad.append(st)
    return bad


def test_crash_midway_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import safetensors.torch

    model = student("W4A16-NVFP4")
    other = tmp_path / "earlier"
    export_model(model, "compressed-tensors", other)
    before = _snapshot(other)

    real_save = safetensors.torch.save_file
    calls = []

    def crash_after_first_shard(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 1:
            raise OSError("disk full (simulated)")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", crash_after_first_shard)
    out = tmp_path / "new"
    with pytest.raises(ExportError, match="simulated"):  # the OSError, as a user-facing ExportError
        export_model(model, "compressed-tensors", out, max_shard_mb=0.1)
    assert len(calls) == 2
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]  # no half-written sibling left behind
    assert _snapshot(other) == before

    # a crash while replacing a previous export leaves that export as it was
    calls.clear()
    with pytest.raises(ExportError, match="simulated"):  # the OSError, as a user-facing ExportError
        export_model(model, "dense", other, max_shard_mb=0.1)
    assert _snapshot(other) == before
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert verify_export(other, model, _batches(1))["passed"]


# ----------------------------------------------------------------------------- sizes


def _large_fp16_model():
    """hidden 512, intermediate 2048, 2 layers, vocab 256: the Linear layers hold 97% of the weights.

    Built on the meta device and filled with N(0, 0.02) directly (random init through transformers
    costs seconds); only the weights matter here, nothing runs forward.
    """
    from transformers import LlamaForCausalLM

    config = _tiny_config(vocab_size=256, hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                          num_key_value_heads=8, tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.float16).eval()
    model.tie_weights()  # to_empty gives every parameter its own storage
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def test_size_ratios_against_float16_dense(tmp_path):
    """Linear layers dominate: 4-bit exports (scales included) are well under a third of float16."""
    base = _large_fp16_model()
    sizes = {}
    for scheme, targets in [("W4A16-NVFP4", ("dense", "compressed-tensors", "modelopt")),
                            ("W4A16-INT4", ("compressed-tensors",))]:
        model = copy.deepcopy(base)
        plans, _ = plan_layers(model, schemes.get(scheme))
        apply_plan(model, plans)
        calib.calibrate_weights(model)
        for target in targets:
            result = export_model(model, target, tmp_path / f"{scheme}-{target}")
            sizes[(scheme, target)] = result["bytes_on_disk"]
    dense = sizes[("W4A16-NVFP4", "dense")]
    ratios = {k: v / dense for k, v in sizes.items()}
    print("\nexport size / float16 dense size:",
          ", ".join(f"{s} {t}: {r:.3f}" for (s, t), r in ratios.items()))
    assert ratios[("W4A16-NVFP4", "compressed-tensors")] <= 0.30
    assert ratios[("W4A16-NVFP4", "modelopt")] <= 0.30
    assert ratios[("W4A16-INT4", "compressed-tensors")] <= 0.28


# ----------------------------------------------------------------------------- an independent client


def _ct_config(dequantize: bool):
    """transformers' CompressedTensorsConfig; 5.x renamed run_compressed=False to dequantize=True."""
    pytest.importorskip("compressed_tensors")
    from transformers.utils.quantization_config import CompressedTensorsConfig

    if "dequantize" in inspect.signature(CompressedTensorsConfig.__init__).parameters:
        return CompressedTensorsConfig(dequantize=dequantize)
    return CompressedTensorsConfig(run_compressed=not dequantize)


def _load_ct(out, dtype, dequantize):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    config = _ct_config(dequantize)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists input scales a dense model does not use
    try:
        with warnings.catch_warnings():
            # "the quantization_config from the model will be used", taking only `dequantize` from ours
            warnings.filterwarnings("ignore", message=".*quantization_config.*", category=UserWarning)
            return AutoModelForCausalLM.from_pretrained(out, quantization_config=config, dtype=dtype).eval()
    finally:
        hf_logging.set_verbosity(verbosity)


# (scheme, dtype): FP4 weights decompress in bfloat16 in compressed-tensors, so those students are bfloat16
CT_CASES = [("W4A16-INT4", torch.float32), ("W3A16-INT3", torch.float32),  # INT3 codes straddle int32 words
            ("W8A8-INT8", torch.float32), ("W8A8-FP8", torch.float32),
            ("W4A16-NVFP4", torch.bfloat16), ("W4A4-NVFP4", torch.bfloat16), ("W4A4-MXFP4", torch.float32)]


@pytest.mark.parametrize("scheme,dtype", CT_CASES, ids=[c[0] for c in CT_CASES])
def test_compressed_tensors_dequantizes_our_weights(scheme, dtype, tmp_path):
    """transformers + compressed-tensors (dequantize on load) gets our weights and our weight-only logits.

    A dequantized load runs no activation quantization, so the logits are compared with
    the student's input quantizers switched off. Tolerances: weights and logits must be
    equal to a few ulps of the model dtype (they come out bit-identical).
    """
    model = student(scheme, dtype)
    out = tmp_path / "ct"
    export_model(model, "compressed-tensors", out)
    ct = _load_ct(out, dtype, dequantize=True)
    state = ct.state_dict()
    w_diff = 0.0
    for name, layer in quant_layers(model):
        ours = layer.quantized_weight().detach().float()
        theirs = state[f"{name}.weight"].float()
        assert state[f"{name}.weight"].dtype == dtype
        w_diff = max(w_diff, float((theirs - ours).abs().max()))
        ulp = torch.finfo(dtype).eps * ours.abs().max()
        assert float((theirs - ours).abs().max()) <= 4 * ulp, name
    ids = _batches(1)[0]
    want = _weight_only_logits(model, ids).float()
    with torch.no_grad():
        got = ct(input_ids=ids).logits.float()
    l_diff = float((got - want).abs().max())
    print(f"\n{scheme} ({dtype}): max |weight diff| {w_diff:.3g}, max |logit diff| {l_diff:.3g} "
          f"(max |logit| {float(want.abs().max()):.3g})")
    assert l_diff <= 8 * torch.finfo(dtype).eps * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("scheme", ["W8A8-INT8", "W8A8-FP8"])
def test_compressed_tensors_runtime_matches_activation_quantization(scheme, tmp_path):
    """Loaded compressed (decompressed by compressed-tensors on the first forward, with its own
    static activation quantization from our input_scale), the logits equal the full student's."""
    model = student(scheme)
    out = tmp_path / "ct"
    export_model(model, "compressed-tensors", out)
    ct = _load_ct(out, torch.float32, dequantize=False)
    ids = _batches()[0]  # calibration data: activations stay inside the calibrated range
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = ct(input_ids=ids).logits
    diff = float((got - want).abs().max())
    print(f"\n{scheme} with compressed-tensors activation quantization: max |logit diff| {diff:.3g}")
    assert diff <= 1e-5 * max(1.0, float(want.abs().max()))


def test_compressed_tensors_nvfp4_activation_scales_mean_ours():
    """compressed-tensors' NVFP4 activation quantizer, given our input_global_scale, lands on our grid
    (float32; the only difference is s_b / global vs s_b * s2, a rounding of the block scale product)."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize
    from compressed_tensors.quantization.quant_config import QuantizationStatus

    from engine.export.compressed_tensors import _act_args, reciprocal

    fmt = formats.get("nvfp4")
    x = torch.randn(4, 8, 128, generator=torch.Generator().manual_seed(3)) * 3
    amax = x.abs().max() * 0.9
    module = torch.nn.Module()
    module.quantization_status = QuantizationStatus.COMPRESSED
    s2 = fmt.quantize(torch.zeros(1), amax).scale2
    module.input_global_scale = torch.nn.Parameter(reciprocal(s2).reshape(1), requires_grad=False)
    theirs = forward_quantize(module, x, "input", QuantizationArgs(**_act_args(fmt, True)))
    ours = fmt.fake_quant(x, amax)
    assert float((theirs - ours).abs().max()) <= 4 * torch.finfo(torch.float32).eps * float(amax)


def test_compressed_tensors_loads_mixed_precision(tmp_path):
    overrides = [{"pattern": "*mlp*", "weight": "int4_g128", "activation": "none"}]
    model = _quantize(_base_model(), "W8A8-FP8", overrides)
    out = tmp_path / "mixed"
    export_model(model, "compressed-tensors", out)
    # transformers 5.x's dequantize-on-load applies one scheme to every dense layer, so a
    # mixed checkpoint is loaded compressed and decompressed by compressed-tensors itself
    ct = _load_ct(out, torch.float32, dequantize=False)
    ids = _batches()[0]
    with torch.no_grad():
        got = ct(input_ids=ids).logits
        want = model(input_ids=ids).logits
    state = ct.state_dict()
    for name, layer in quant_layers(model):
        assert torch.equal(state[f"{name}.weight"], layer.quantized_weight().detach()), name
    assert float((got - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))


# ----------------------------------------------------------------------------- the run stage


def test_export_stage_records_report_and_events(tmp_path):
    from engine.events import CancelToken, StageStarted
    from engine.pipeline import RunContext

    model = _quantize(_base_model(), "W8A8-FP8")
    source = tmp_path / "source"
    source.mkdir()
    (source / "tokenizer_config.json").write_text("{}")
    (source / "generation_config.json").write_text('{"max_length": 7}')
    events = []
    recipe = SimpleNamespace(export=SimpleNamespace(format="modelopt", path=str(tmp_path / "x"), verify=True,
                                                    max_shard_mb=1), data=SimpleNamespace(batch_size=2,
                                                                                          eval_batches=5),
                             to_dict=lambda: {"quant": {"scheme": "W8A8-FP8"}})
    ctx = RunContext(recipe, tmp_path / "run", events.append, CancelToken(), torch.device("cpu"))
    ctx.loaded = SimpleNamespace(model=model, path=source, tokenizer=None)
    ctx.splits = SimpleNamespace(eval=torch.cat(_batches(3)))
    result = export_stage(ctx)
    rep = ctx.report["export"]
    assert rep is result and rep["format"] == "modelopt" and rep["path"] == str(tmp_path / "x")
    assert rep["verify"]["passed"] and rep["verify"]["batches"] == 2 and rep["n_files"] == 6
    assert 8.0 <= rep["bits_per_param"] < 8.01 and rep["bytes_on_disk"] > 0
    assert json.loads((tmp_path / "x" / "generation_config.json").read_text()) == {"max_length": 7}
    assert (tmp_path / "x" / "tokenizer_config.json").exists()
    assert [e.stage for e in events if isinstance(e, StageStarted)] == ["export", "verify export"]
    assert json.loads((tmp_path / "x" / MARKER).read_text())["recipe"] == {"quant": {"scheme": "W8A8-FP8"}}
