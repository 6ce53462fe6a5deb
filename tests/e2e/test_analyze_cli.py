"""``lowbit analyze`` and ``lowbit mixed`` in subprocesses; the mixed recipe then runs with ``lowbit run``."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from engine.recipe import Recipe

DATA = ["--seq-len", "64", "--batch-size", "2", "--batches", "2", "--eval-batches", "2", "--device", "cpu"]


def _command(name: str) -> list:
    return [sys.executable, "-m", "engine.cli", name]


def _lowbit(name, *args):
    # one OpenMP thread: tiny models on a shared machine run much faster without thread contention
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LOWBIT_COMPILE": "0",
           "OMP_NUM_THREADS": "1"}
    cmd = _command(name) if name != "run" else [sys.executable, "-m", "engine.cli", "run"]
    proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_lowbit_analyze_writes_the_layer_format_matrix(tiny_llama_dir, text_file, tmp_path):
    out = tmp_path / "analysis"
    proc = _lowbit("analyze", "--model", tiny_llama_dir, "--data", text_file, "--formats", "nvfp4,int4_g128,int8",
                   "--sensitivity", *DATA, "--out", out, "--quiet")
    data = json.loads((out / "analysis.json").read_text())
    assert data["formats"] == ["nvfp4", "int4_g128", "int8"]
    names = [r["name"] for r in data["layers"]]
    assert len(names) == 14 and not any("lm_head" in n or "embed" in n for n in names)
    for row in data["layers"]:
        assert row["params"] == row["in_features"] * row["out_features"]
        for f in data["formats"]:
            m = row["formats"][f]
            assert math.isfinite(m["weight_sqnr_db"]) and math.isfinite(m["output_sqnr_db"])
            assert m["sensitivity"] >= 0
        # int8 keeps every layer closer than 4-bit integers, in the weights and at the output
        assert row["formats"]["int8"]["output_sqnr_db"] > row["formats"]["int4_g128"]["output_sqnr_db"] + 15
        assert row["formats"]["int8"]["sensitivity"] < row["formats"]["int4_g128"]["sensitivity"]
    with open(out / "analysis.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == names and "nvfp4.weight_sqnr_db" in rows[0]
    assert "most sensitive under nvfp4" in proc.stdout


def test_lowbit_mixed_recipe_meets_budget_and_runs(tiny_llama_dir, text_file, tmp_path):
    out = tmp_path / "mixed"
    proc = _lowbit("mixed", "--model", tiny_llama_dir, "--data", text_file, "--formats", "int4_g128,int8",
                   "--budget-bits", "6.0", *DATA, "--out", out, "--quiet")
    mixed = json.loads((out / "mixed.json").read_text())
    assert mixed["budget_bits"] == 6.0 and mixed["achieved_bits"] <= 6.0
    assert set(mixed["assignment"].values()) == {"int4_g128", "int8"}
    assert mixed["uniform_format"] == "int4_g128"
    assert mixed["measured_kl"] < mixed["uniform_kl"]
    assert "achieved" in proc.stdout

    recipe = Recipe.load(out / "recipe.yaml")
    assert recipe.quant.scheme == "custom" and recipe.device == "cpu"
    run_dir = tmp_path / "run"
    _lowbit("run", out / "recipe.yaml", "--out", run_dir, "--quiet")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed"
    assert {p["name"]: p["weight"] for p in report["plan"] if p["weight"]} == mixed["assignment"]
    # the run measures the same model on the same held-out batches (its KL sums float32 log-softmaxes)
    assert report["ptq"]["kl"] == pytest.approx(mixed["measured_kl"], rel=0.02)


def test_lowbit_analyze_reads_an_encoders_data_as_sentences(tiny_bert_dir, text_file, tmp_path):
    """An encoder is analysed on padded sentences with their mask, as the run feeds it, not on packed text."""
    sentences = tmp_path / "sentences.txt"
    lines = [s.strip() for s in text_file.read_text(encoding="utf-8").split(".") if len(s.split()) >= 4][:60]
    sentences.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "analysis"
    _lowbit("analyze", "--model", tiny_bert_dir, "--data", sentences, "--formats", "nvfp4,int8", *DATA,
            "--out", out, "--quiet")
    data = json.loads((out / "analysis.json").read_text())
    assert data["formats"] == ["nvfp4", "int8"]
    names = [r["name"] for r in data["layers"]]
    assert "encoder.layer.0.attention.self.query" in names and "encoder.layer.1.output.dense" in names
