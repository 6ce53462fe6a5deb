"""calibration.sequential in `lowbit run` and in the memory plan (one block on the device at a time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig

from engine.errors import LowbitError, RecipeError
from engine.io.inspect import inspect_config
from engine.pipeline.plan import check_fits, plan_recipe
from engine.recipe import Recipe
from engine.statefile import load_state


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, bpe_tokenizer, make_llama):
    """A real transformers Llama of three blocks, built from a config."""
    return make_llama(tmp_path_factory.mktemp("models") / "llama-3-blocks", bpe_tokenizer, seed=1,
                      num_hidden_layers=3, max_position_embeddings=64)


def _recipe(model_dir, data, sequential, method="max", algorithm="rtn"):
    return {"version": 1, "model": {"path": str(model_dir)},
            "data": {"path": str(data), "seq_len": 32, "batch_size": 2, "calib_batches": 3, "eval_batches": 1},
            "quant": {"scheme": "W8A8-INT8"},
            "calibration": {"method": method, "algorithm": algorithm, "sequential": sequential},
            "mode": "ptq", "device": "cpu", "analysis": {"benchmark": False}}


def _lowbit_run(recipe: dict, tmp_path, name):
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(recipe))
    out = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(f), "--out", str(tmp_path / name),
                          "--quiet"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "LOWBIT_COMPILE": "0", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    return json.loads((tmp_path / name / "report.json").read_text()), load_state(tmp_path / name / "student.safetensors")


def _untimed(value):
    """The report without its wall times (GPTQ's seconds per block and layer)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


@pytest.mark.parametrize("method,algorithm", [("max", "rtn"), ("percentile", "rtn"), ("mse", "gptq")])
def test_a_sequential_run_gives_the_whole_model_scales_and_report(method, algorithm, llama_dir, text_file, tmp_path):
    whole, whole_state = _lowbit_run(_recipe(llama_dir, text_file, False, method, algorithm), tmp_path, "whole")
    seq, seq_state = _lowbit_run(_recipe(llama_dir, text_file, True, method, algorithm), tmp_path, "sequential")
    assert seq["calibration"] == {"sequential": True, "device": "cpu", "blocks": 3, "after": "cpu"}
    assert "calibration" not in whole
    assert seq["memory"]["plan"]["model"]["sequential_calibration"] is True
    amax = [k for k in whole_state if k.endswith("input_quantizer.amax")]
    assert len(amax) == 3 * 7  # every block's linear layers got a static activation scale
    assert whole_state.keys() == seq_state.keys()
    for k in whole_state:  # bit-exact: the scales and every weight
        assert torch.equal(whole_state[k], seq_state[k]), k
    skip = {"timings", "memory", "run_dir", "calibration"}
    assert _untimed({k: v for k, v in seq.items() if k not in skip}) == \
        _untimed({k: v for k, v in whole.items() if k not in skip})


def test_the_key_is_validated_and_round_trips(tmp_path):
    for value in (True, False, "auto"):
        r = Recipe.from_dict({"model": {"path": "demo"}, "calibration": {"sequential": value}})
        r.save(tmp_path / "r.yaml")
        assert Recipe.load(tmp_path / "r.yaml").calibration.sequential == value
    assert Recipe.from_dict({"model": {"path": "demo"}}).calibration.sequential == "auto"
    for bad in ("yes", 1, None, "sometimes"):
        with pytest.raises(RecipeError, match=r"calibration.sequential: expected true, false or 'auto'"):
            Recipe.from_dict({"model": {"path": "demo"}, "calibration": {"sequential": bad}})


def _llama3_8b():
    return LlamaConfig(vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       tie_word_embeddings=False, architectures=["LlamaForCausalLM"], dtype="bfloat16")


def _ptq(sequential, mode="ptq"):
    return Recipe.from_dict({"model": {"path": "x", "dtype": "bfloat16"}, "device": "cpu", "mode": mode,
                             "data": {"seq_len": 512, "batch_size": 1, "calib_batches": 16},
                             "quant": {"scheme": "W8A8-FP8"}, "calibration": {"sequential": sequential}})


def test_the_plan_counts_one_block_on_a_gpu_the_whole_model_does_not_fit():
    info = inspect_config(_llama3_8b())
    n = info.n_params
    cap = {"cuda:0": 12 << 30, "cpu": 64 << 30}  # a 12 GB GPU: the 16 GB of bf16 weights do not fit
    whole = plan_recipe(_ptq(False), info=info, device="cuda:0", capacity=cap)
    assert not whole.fits and whole.stage("calibrate").peak_bytes > 2 * n
    knob = next(k for k in whole.knobs if k.change == {"calibration.sequential": True})
    with pytest.raises(LowbitError, match="calibration.sequential: True"):
        check_fits(whole)  # refused, with the switch that makes it fit

    for setting in ("auto", True):
        seq = plan_recipe(_ptq(setting), info=info, device="cuda:0", capacity=cap)
        assert seq.fits and seq.model["sequential_calibration"] and seq.model["after_calibration"] == "cpu"
        check_fits(seq)
        cal = seq.stage("calibrate")
        on_gpu = {i.name: i.bytes for i in cal.items if i.device == "cuda:0"}
        block = 4096 * (4096 * 2 + 1024 * 2) + 3 * 4096 * 14_336 + 2 * 4096  # attention, MLP, two norms
        assert on_gpu["one block's weights"] == 2 * block
        assert on_gpu["weights outside the blocks (embeddings, final norm, head)"] == 2 * (2 * 128_256 * 4096 + 4096)
        assert on_gpu["hidden states of the calibration batches"] == 2 * 16 * 512 * 4096 * 2
        assert cal.peak_bytes < 4 << 30 < whole.stage("calibrate").peak_bytes
        assert cal.per_device()["cpu"] >= 2 * n  # the weights wait in CPU memory
        assert seq.stage("load").device == "cpu" and seq.stage("evaluate").device == "cpu"
        assert knob.new_peak_bytes == seq.peak_per_device()["cuda:0"]
    assert "calibration one block at a time on cuda:0" in seq.text()

    # a GPU the whole model fits: auto keeps whole-model calibration; true calibrates sequentially and
    # moves the model there afterwards
    big = {"cuda:0": 80 << 30, "cpu": 64 << 30}
    assert not plan_recipe(_ptq("auto"), info=info, device="cuda:0", capacity=big).model["sequential_calibration"]
    on = plan_recipe(_ptq(True), info=info, device="cuda:0", capacity=big)
    assert on.model["after_calibration"] == "cuda:0" and on.stage("evaluate").device == "cuda:0"
    # auto never moves QAD's training to the CPU
    qad = plan_recipe(_ptq("auto", "qad"), info=info, device="cuda:0", capacity=cap)
    assert not qad.model["sequential_calibration"] and not qad.fits
    assert not any("calibration.sequential" in k.change for k in qad.knobs)
    # on the CPU, auto never turns it on
    assert not plan_recipe(_ptq("auto"), info=info, device="cpu", capacity={"cpu": 8 << 30}).model[
        "sequential_calibration"]


def test_lowbit_plan_json_with_a_declared_gpu_budget(llama_dir, tmp_path):
    def plan(sequential, memory):
        f = tmp_path / f"r-{sequential}.json"
        r = _recipe(llama_dir, "unused.txt", sequential)
        r["data"]["calib_batches"] = 1
        f.write_text(json.dumps(r))
        out = subprocess.run([sys.executable, "-m", "engine.cli", "plan", str(f), "--device", "cuda:0",
                              "--memory", memory, "--json"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    whole = plan(False, "1MB")
    seq = plan("auto", "1MB")
    assert not whole["fits"] and seq["fits"] and seq["model"]["sequential_calibration"]
    calib = {p["model"]["sequential_calibration"]: next(s for s in p["stages"] if s["name"] == "calibrate")
             for p in (whole, seq)}
    assert calib[True]["peak_bytes"] < 0.7 * calib[False]["peak_bytes"]  # embeddings and head dominate this one
    assert calib[True]["per_device"]["cpu"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sequential_on_cuda_matches_whole_model_and_moves_the_model_there(llama_dir, text_file, tmp_path):
    from engine.pipeline import run

    reports = {}
    for sequential in (False, True):
        r = _recipe(llama_dir, text_file, sequential)
        r["device"] = "cuda"
        reports[sequential] = run(Recipe.from_dict(r), run_dir=tmp_path / str(sequential)).report
    assert reports[True]["calibration"]["after"].startswith("cuda")  # the tiny model fits: back on the GPU
    whole = {row["name"]: row["input_amax"] for row in reports[False]["layers"]}
    seq = {row["name"]: row["input_amax"] for row in reports[True]["layers"]}
    assert whole.keys() == seq.keys()
    for name in whole:
        assert seq[name] == pytest.approx(whole[name], rel=1e-5), name
