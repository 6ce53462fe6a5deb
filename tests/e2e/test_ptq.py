"""PTQ end to end through the runner and the real CLI, on tiny models built in the tests."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from engine.analysis.metrics import evaluate
from engine.events import read_events
from engine.quant import schemes
from engine.recipe import Recipe
from engine.pipeline import run

ALL_SCHEMES = schemes.names()


def _recipe(model_dir, data, scheme, **data_overrides):
    d = {"seq_len": 64, "batch_size": 2, "calib_batches": 2, "eval_batches": 2, "path": str(data)}
    d.update(data_overrides)
    return Recipe.from_dict({"model": {"path": str(model_dir)}, "data": d, "quant": {"scheme": scheme},
                             "device": "cpu"}, require_version=False)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_every_scheme_runs_on_a_causal_lm(tiny_llama_dir, text_file, tmp_path, scheme):
    res = run(_recipe(tiny_llama_dir, text_file, scheme), run_dir=tmp_path / "run")
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep == res.report
    assert rep["status"] == "completed" and rep["scheme"] == scheme and rep["mode"] == "ptq"
    assert math.isfinite(rep["baseline"]["perplexity"]) and math.isfinite(rep["quantized"]["perplexity"])
    assert rep["quantized"]["kl"] >= 0 and 0 <= rep["quantized"]["top1_agreement"] <= 1
    assert rep["layers"] and all(math.isfinite(row["weight_sqnr_db"]) for row in rep["layers"])
    assert {row["name"] for row in rep["layers"]}.isdisjoint({"lm_head"})
    assert (tmp_path / "run" / "recipe.yaml").exists()
    types = [e["type"] for e in read_events(tmp_path / "run" / "events.jsonl")]
    assert types[0] == "RunStarted" and types[-1] == "RunFinished"
    assert "LayerStats" in types and "Progress" in types


def test_int8_costs_under_one_percent_perplexity(tiny_llama_dir, text_file, tmp_path):
    rep = run(_recipe(tiny_llama_dir, text_file, "W8A8-INT8", eval_batches=4), run_dir=tmp_path / "r").report
    base, q = rep["baseline"]["perplexity"], rep["quantized"]["perplexity"]
    assert abs(q - base) / base < 0.01, (base, q)
    # 8-bit weights are far more faithful than 2-bit ones
    sqnr8 = min(r["weight_sqnr_db"] for r in rep["layers"])
    rep2 = run(_recipe(tiny_llama_dir, text_file, "W2A16-INT2"), run_dir=tmp_path / "r2").report
    assert sqnr8 > max(r["weight_sqnr_db"] for r in rep2["layers"]) + 20


@pytest.mark.parametrize("scheme", ["W8A8-INT8", "W4A16-INT4", "W4A4-NVFP4", "W4A4-MXFP4", "W8A8-FP8"])
def test_encoder_schemes_report_cosine_and_mse(tiny_bert_dir, text_file, tmp_path, scheme):
    rep = run(_recipe(tiny_bert_dir, text_file, scheme), run_dir=tmp_path / "run").report
    q = rep["quantized"]
    assert 0.0 < q["cosine"] <= 1.0 + 1e-6 and 0.0 < q["embedding_cosine"] <= 1.0 + 1e-6
    assert q["mse"] >= 0.0 and "perplexity" not in q
    assert rep["model"]["kind"] == "encoder"


def test_kl_is_zero_with_quantization_off(tiny_llama_dir, text_file, tmp_path):
    from engine.io.data import batches, make_splits
    from engine.io.model import load_model
    from engine.quant.select import apply_plan, plan_layers, quantizers

    loaded = load_model(tiny_llama_dir)
    apply_plan(loaded.model, plan_layers(loaded.model, schemes.get("W4A4-NVFP4"))[0])
    for q in quantizers(loaded.model):
        q.enabled = False
    splits = make_splits(loaded.tokenizer, text_file, 64)
    res = evaluate(loaded.model, batches(splits.eval, 2, 2), "causal-lm", torch.device("cpu"))
    assert res["quantized"]["kl"] == 0.0
    assert res["quantized"]["top1_agreement"] == 1.0
    assert res["quantized"]["perplexity"] == res["baseline"]["perplexity"]


def test_cli_quantize_writes_recipe_and_report(tiny_llama_dir, text_file, tmp_path):
    out = tmp_path / "cli-run"
    cmd = [sys.executable, "-m", "engine.cli", "quantize", "--model", str(tiny_llama_dir), "--data", str(text_file),
           "--scheme", "W4A16-INT4", "--mode", "ptq", "--calib-batches", "2", "--eval-batches", "2",
           "--batch-size", "2", "--seq-len", "64", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["scheme"] == "W4A16-INT4" and rep["mode"] == "ptq"
    assert {"baseline", "quantized", "layers"} <= set(rep)
    assert "perplexity" in proc.stdout  # the summary table
    again = Recipe.load(out / "recipe.yaml")
    assert again.quant.scheme == "W4A16-INT4" and again.data.seq_len == 64


def test_cli_reports_bad_input_without_traceback(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "quantize", "--model", str(tmp_path / "not-a-model"),
                           "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
