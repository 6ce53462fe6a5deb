"""Inspecting without loading, the memory plan, and its enforcement (CLI in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from engine.errors import LowbitError
from engine.io.inspect import inspect_config, inspect_model
from engine.memory import rss
from engine.pipeline.plan import check_fits, plan_recipe
from engine.recipe import Recipe


def _llama3_8b():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       tie_word_embeddings=False, architectures=["LlamaForCausalLM"], dtype="bfloat16")


def test_an_8b_model_is_described_in_under_2_s_without_memory_for_weights():
    t_import = time.perf_counter()
    import transformers.models.llama.modeling_llama  # noqa: F401  (once per process: the architecture's code)

    t_import = time.perf_counter() - t_import
    before = rss()
    t0 = time.perf_counter()
    info = inspect_config(_llama3_8b())
    desc = info.describe()
    seconds = time.perf_counter() - t0
    grown = rss() - before
    print(f"8B inspection: {seconds:.3f} s (the architecture's module imported first in {t_import:.2f} s), "
          f"resident set +{grown / 2**20:.0f} MiB")
    assert seconds < 2.0
    assert grown < 200 * 2**20  # the bf16 weights would be 15 GiB
    assert all(p.device.type == "meta" for p in info.model.parameters())
    assert desc["n_params"] == 8_030_261_248  # Llama-3-8B
    assert desc["n_linear"] == 32 * 7 + 1 and desc["layers"][0]["name"] == "model.layers.0.self_attn.q_proj"
    assert desc["dtype"] == "bfloat16" and desc["n_blocks"] == 32 and not desc["tied_embeddings"]


def test_inspection_of_a_folder_matches_the_loaded_model(tiny_llama_dir):
    from engine.io.model import describe_model, load_model

    info = inspect_model(tiny_llama_dir)
    loaded = describe_model(load_model(tiny_llama_dir))
    meta = info.describe()
    for key in ("name", "architecture", "kind", "n_params", "n_linear", "linear_params", "layers"):
        assert meta[key] == loaded[key], key
    assert meta["checkpoint_bytes"] == sum(p.stat().st_size for p in tiny_llama_dir.glob("*.safetensors")) - sum(
        8 + int.from_bytes(p.read_bytes()[:8], "little") for p in tiny_llama_dir.glob("*.safetensors"))


def _recipe(path, **over):
    d = {"model": {"path": str(path), "dtype": "bfloat16"}, "mode": "qad", "device": "cpu",
         "data": {"seq_len": 512, "batch_size": 4}}
    for k, v in over.items():
        section, _, key = k.partition(".")
        d.setdefault(section, {})[key] = v
    return Recipe.from_dict(d)


def test_the_8b_plan_counts_every_training_item_and_its_knobs_save_memory():
    info = inspect_config(_llama3_8b())
    p = plan_recipe(_recipe("unused"), info=info, device="cuda:0", capacity={"cuda:0": 80 << 30, "cpu": 256 << 30})
    train = p.stage("train")
    items = {i.name: i.bytes for i in train.items}
    n = 8_030_261_248
    assert items["student weights (bfloat16)"] == 2 * n
    assert items["fp32 master weights"] == 4 * n and items["AdamW moments (fp32)"] == 8 * n
    assert p.total_peak_bytes == max(sum(s.per_device().values()) for s in p.stages)
    assert not p.fits  # full AdamW on 8B parameters needs about 16 bytes each: more than 80 GB
    names = [k.name for k in p.knobs]
    assert "teacher on the CPU" in names and "gradient checkpointing" in names
    cpu_teacher = next(k for k in p.knobs if k.name == "teacher on the CPU")
    assert cpu_teacher.saves_bytes == 2 * n
    with pytest.raises(LowbitError, match=r"does not fit: stage 'train' needs about .* on cuda:0"):
        check_fits(p)
    # PTQ of the same model fits a 24 GB GPU
    ptq_recipe = Recipe.from_dict({"model": {"path": "x", "dtype": "bfloat16"}, "device": "cpu",
                                   "data": {"seq_len": 512, "batch_size": 1}})
    ptq = plan_recipe(ptq_recipe, info=info, device="cuda:0", capacity={"cuda:0": 24 << 30, "cpu": 64 << 30})
    assert ptq.fits and ptq.stage("calibrate").peak_bytes < 20 << 30


def test_the_8b_gptq_plan_counts_the_hessians_and_the_originals_it_keeps():
    info = inspect_config(_llama3_8b())
    r = Recipe.from_dict({"model": {"path": "x", "dtype": "bfloat16"}, "device": "cpu", "mode": "ptq",
                          "data": {"seq_len": 512, "batch_size": 1, "calib_batches": 16},
                          "quant": {"scheme": "W4A16-INT4"}, "calibration": {"algorithm": "gptq"}})
    p = plan_recipe(r, info=info, device="cuda:0", capacity={"cuda:0": 80 << 30, "cpu": 256 << 30})
    items = {i.name: i for i in p.stage("gptq").items}
    h, i = 4096, 14_336
    # q / k / v share the normed input, gate / up the MLP's, o_proj and down_proj read their own
    assert items["Hessians of one block (fp32)"].bytes == 4 * (3 * h * h + i * i)
    # the largest group: gate / up stacked (2 x 14336 rows of 4096) against down (4096 rows of 14336)
    gate_up = 4 * (4 * 2 * i * h + 4 * h * h)
    down = 4 * (4 * h * i + 4 * i * i)
    assert items["rounding one layer group (fp32 weights, Hessian inverse)"].bytes == max(gate_up, down)
    linear = 32 * (h * (h + 2 * 1024 + h) + 3 * h * i)  # the quantized layers (the head is excluded)
    originals = "original weights of the GPTQ-rounded layers (bfloat16)"
    assert items[originals].bytes == 2 * linear and items[originals].device == "cpu"
    assert items["hidden states of the calibration batches"].bytes == 2 * 16 * 512 * h * 2
    evaluate = {i.name: i.bytes for i in p.stage("evaluate").items}
    assert evaluate["reference: the original model rebuilt (bfloat16)"] == evaluate["student weights (bfloat16)"]
    assert evaluate[originals] == 2 * linear
    rtn = plan_recipe(r.with_updates({"calibration.algorithm": "rtn"}), info=info, device="cuda:0",
                      capacity={"cuda:0": 80 << 30, "cpu": 256 << 30})
    assert "gptq" not in [s.name for s in rtn.stages]
    assert originals not in {i.name for i in rtn.stage("evaluate").items}


@pytest.mark.parametrize("compile_setting,per_element", [("auto", 2), ("0", 24)])
def test_the_8b_w4a4_plan_counts_quantized_inputs_and_masks(compile_setting, per_element, monkeypatch):
    monkeypatch.setenv("LOWBIT_COMPILE", compile_setting)
    info = inspect_config(_llama3_8b())
    cap = {"cuda:0": 80 << 30, "cpu": 256 << 30}
    w4a4 = plan_recipe(_recipe("unused", **{"quant.scheme": "W4A4-NVFP4"}), info=info, device="cuda:0", capacity=cap)
    w4a16 = plan_recipe(_recipe("unused", **{"quant.scheme": "W4A16-NVFP4"}), info=info, device="cuda:0",
                        capacity=cap)
    h, i, tokens = 4096, 14_336, 4 * 512
    train = {it.name: it.bytes for it in w4a4.stage("train").items}
    # per block: the normed input q / k / v share, o_proj's, the MLP's normed input gate / up share,
    # down_proj's; each saved in bf16 (CUDA autocast) with a one-byte mask
    assert train["fake-quantized inputs and STE masks saved for backward"] == 32 * (3 * h + i) * tokens * 3
    assert train["activation fake quant (widest input)"] == tokens * i * per_element
    assert "fake-quantized inputs and STE masks saved for backward" not in {
        it.name for it in w4a16.stage("train").items}
    evaluate = {it.name: it.bytes for it in w4a4.stage("evaluate").items}
    assert evaluate["activation fake quant (widest input)"] == tokens * i * per_element


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_lowbit_plan_json_and_a_refused_dry_run(tmp_path, tiny_llama_dir, text_file):
    recipe = {"version": 1, "model": {"path": str(tiny_llama_dir)}, "mode": "qad", "device": "cpu",
              "data": {"path": str(text_file), "seq_len": 64, "batch_size": 2}, "train": {"steps": 2}}
    f = tmp_path / "r.json"
    f.write_text(json.dumps(recipe))
    out = _cli("plan", str(f), "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    names = [s["name"] for s in plan["stages"]]
    assert names[:4] == ["load", "calibrate", "evaluate", "train"]
    assert all(s["peak_bytes"] > 0 for s in plan["stages"])
    assert plan["total_peak_bytes"] == max(sum(s["per_device"].values()) for s in plan["stages"])
    ok = _cli("run", str(f), "--dry-run")
    assert ok.returncode == 0 and "fits" in ok.stdout, ok.stderr
    small = _cli("plan", str(f), "--memory", "300MB", "--check")
    assert small.returncode == 2
    line = small.stderr.strip().splitlines()[-1]
    assert line.startswith("error: this run does not fit: stage") and "lowbit plan" in line
