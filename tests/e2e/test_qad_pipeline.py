"""Issue 13 through the real pipeline on a tiny BERT: sentence samples, the learning-rate probe,
early stop on divergence (with the best state restored), the loss curves as Metric events."""

from __future__ import annotations

import pytest

from engine.events import Metric
from engine.pipeline import run
from engine.recipe import Recipe


def _recipe(model_dir, text_file, **train):
    return Recipe.from_dict({
        "model": {"path": str(model_dir)},
        "data": {"path": str(text_file), "seq_len": 48, "batch_size": 8, "calib_batches": 2, "eval_batches": 2},
        "quant": {"scheme": "W4A16-INT4"}, "mode": "qad",
        "train": {"steps": 6, "eval_every": 0, "checkpoint_every": 0, "batch_size": 8, **train},
        "analysis": {"benchmark": False}, "device": "cpu"})


def test_learning_rate_probe_picks_among_the_candidates(tiny_bert_dir, text_file, tmp_path):
    r = _recipe(tiny_bert_dir, text_file, lr="auto", lr_candidates=[1e-6, 3e-3], lr_probe_steps=3)
    rep = run(r, run_dir=tmp_path / "run").report
    assert rep["data"]["samples"] == "lines"  # an encoder gets one sentence per sample
    probe = rep["lr_probe"]
    assert set(probe["held_out_loss"]) == {"1e-06", "0.003"}
    best = min(probe["held_out_loss"].items(), key=lambda kv: kv[1])[0]
    assert probe["chosen"] == float(best)
    assert rep["train_settings"]["lr"] == probe["chosen"]
    # a rate a thousand times larger moves a distillation loss that starts near zero: the probe can tell
    losses = probe["held_out_loss"]
    assert losses["0.003"] != pytest.approx(losses["1e-06"], rel=1e-3)


def test_early_stop_when_the_student_diverges_restores_the_best_state(tiny_bert_dir, text_file, tmp_path):
    events = []
    r = _recipe(tiny_bert_dir, text_file, lr=1.0, warmup_steps=0, grad_clip=0.0, steps=20, eval_every=2,
                early_stop_patience=2, kd_hidden_weight=0.5, kd_hidden_layers=[-1])
    rep = run(r, sink=events.append, run_dir=tmp_path / "run").report
    train = rep["train"]
    assert train["stopped_early"] and train["steps"] < 20, train
    assert "worse than PTQ" in train["early_stop"]
    # lr 1.0 wrecks the student; what is left is the best evaluated state, no worse than PTQ
    assert rep["final"]["embedding_cosine"] >= rep["ptq"]["embedding_cosine"] - 1e-6, (rep["ptq"], rep["final"])
    names = {e.name for e in events if isinstance(e, Metric) and e.stage == "train"}
    assert {"loss", "kd_loss", "hidden_loss", "early_stop"} <= names
