"""A workstation-sized model on this CPU: a Qwen2.5-0.5B-shaped causal LM (494M parameters, a
151,936-token vocabulary, random weights, bf16, sharded safetensors) through PTQ W4A16-INT4 with
4 calibration batches and 2 QAD steps, in a `lowbit run` subprocess. The memory plan made
before the run (from the config and headers only) is within 25% of each stage's measured peak
resident set, and its total fits this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

QWEN25_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=2048,
                  tie_word_embeddings=True, rope_theta=1_000_000.0)


def build_model(folder: Path, corpus_texts) -> None:
    """The model from its config with random weights, saved in bf16 as several safetensors shards."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.io.tokenizer import train_tokenizer

    torch.manual_seed(0)
    cfg = Qwen2Config(**QWEN25_05B, architectures=["Qwen2ForCausalLM"])
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    model.tie_weights()
    model.save_pretrained(folder, max_shard_size="300MB")
    train_tokenizer(corpus_texts, vocab_size=1024, kind="bpe").save_pretrained(folder)


@pytest.mark.slow
def test_qwen_05b_shaped_model_ptq_and_qad_within_the_memory_plan(tmp_path, corpus_texts, text_file):
    folder = tmp_path / "qwen2.5-0.5b-shaped"
    t0 = time.monotonic()
    build_model(folder, corpus_texts)
    built_s = time.monotonic() - t0
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) >= 3
    recipe = {
        "version": 1, "model": {"path": str(folder), "dtype": "bfloat16"}, "device": "cpu", "mode": "qad",
        "data": {"path": str(text_file), "seq_len": 128, "batch_size": 2, "calib_batches": 4, "eval_batches": 1},
        "quant": {"scheme": "W4A16-INT4"},
        "train": {"steps": 2, "lr": 1e-5, "warmup_steps": 0, "eval_every": 0, "checkpoint_every": 0},
        "analysis": {"benchmark": False},
    }
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(recipe))
    lowbit = [sys.executable, "-m", "engine.cli"]
    plan_out = subprocess.run(lowbit + ["plan", str(recipe_file), "--json"], capture_output=True, text=True,
                              check=True, timeout=120)
    plan = json.loads(plan_out.stdout)
    run_dir = tmp_path / "run"
    t1 = time.monotonic()
    done = subprocess.run(lowbit + ["run", str(recipe_file), "--out", str(run_dir), "--quiet"], capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "LOWBIT_COMPILE": "0"})
    run_s = time.monotonic() - t1
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((run_dir / "report.json").read_text())
    measured = report["memory"]["measured"]
    from engine.memory import fmt_bytes, total_ram
    from engine.pipeline.plan import RUN_STAGES

    print(f"\nbuilt and saved in {built_s:.1f} s; run {run_s:.1f} s wall; "
          f"{plan['model']['n_params']:,} parameters; timings {report['timings']}")
    worst = 0.0
    bad = []
    for stage in plan["stages"]:
        peaks = [v for k, v in measured.items() if RUN_STAGES.get(k) == stage["name"]]
        if not peaks:
            continue
        got, want = max(peaks), stage["peak_bytes"]
        err = abs(got - want) / got
        worst = max(worst, err)
        print(f"  {stage['name']:10s} planned {fmt_bytes(want):>10s}  measured {fmt_bytes(got):>10s}  "
              f"({(want - got) / got:+.1%})")
        bad += [f"stage {stage['name']}: planned {want}, measured {got}"] if err > 0.25 else []
    (Path(os.environ.get("LOWBIT_KEEP_REPORT", tmp_path)) / "workstation-report.json").write_text(
        json.dumps({"plan": plan, "measured": measured, "timings": report["timings"], "run_s": run_s}, indent=1))
    assert not bad, bad
    assert {"load", "calibrate", "evaluate", "train"} <= {RUN_STAGES.get(k) for k in measured}
    assert plan["total_peak_bytes"] < total_ram()
    assert 490e6 < plan["model"]["n_params"] < 500e6
