"""Exports of an encoder run are verified on what encoders are run on: padded sentences with a mask.

The verification reloads the export, rebuilds the model and compares its outputs with the
quantized student's on the run's evaluation sentences. An encoder's batches are padded
``Samples`` (token ids + attention mask), not token blocks; both the in-run export and
``lowbit export`` of a finished run must feed them as such.
"""

import json
import subprocess
import sys

import pytest
import torch

from engine.export.verify import compare_logits, verify_export
from engine.io.samples import make_sample_splits
from engine.pipeline import run
from engine.pipeline.student import load_student
from engine.recipe import Recipe


@pytest.fixture(scope="module")
def sentences(tmp_path_factory, corpus_texts):
    lines = [s.strip() for t in corpus_texts for s in t.split(".") if len(s.split()) >= 4][:120]
    path = tmp_path_factory.mktemp("data") / "sentences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _recipe(model_dir, data, fmt):
    return Recipe.from_dict({"model": {"path": str(model_dir)},
                             "data": {"path": str(data), "seq_len": 48, "batch_size": 8, "calib_batches": 2,
                                      "eval_batches": 2},
                             "quant": {"scheme": "W4A4-NVFP4"}, "export": {"format": fmt, "verify": True},
                             "device": "cpu"}, require_version=False)


@pytest.mark.parametrize("fmt", ["compressed-tensors", "dense"])
def test_an_encoder_run_exports_and_verifies_on_padded_sentences(tiny_bert_dir, sentences, tmp_path, fmt):
    rep = run(_recipe(tiny_bert_dir, sentences, fmt), run_dir=tmp_path / "run").report
    assert rep["status"] == "completed", rep.get("error")
    assert rep["data"]["samples"] == "lines"
    v = rep["export"]["verify"]
    assert v["passed"] and v["batches"] >= 1
    assert v["max_abs_logit_diff"] <= v["tolerance"]


def test_lowbit_export_of_a_finished_encoder_run_verifies(tiny_bert_dir, sentences, tmp_path):
    run(_recipe(tiny_bert_dir, sentences, None), run_dir=tmp_path / "run")
    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "export", str(tmp_path / "run"),
                           "--format", "compressed-tensors", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    v = json.loads((tmp_path / "run" / "report.json").read_text())["export"]["verify"]
    assert v["passed"] and v["inputs"] == "eval data"  # the run's sentences, not random tokens


def test_verification_of_an_encoder_export_catches_a_wrong_weight(tiny_bert_dir, sentences, tmp_path):
    """Not a vacuous pass: a tampered student no longer matches the export it wrote."""
    run(_recipe(tiny_bert_dir, sentences, "dense"), run_dir=tmp_path / "run")
    loaded, recipe, _ = load_student(tmp_path / "run")
    splits = make_sample_splits(loaded.tokenizer, sentences, 48)
    batches = [splits.eval[:8]]
    assert verify_export(tmp_path / "run" / "export", loaded.model, batches)["passed"]
    with torch.no_grad():
        loaded.model.encoder.layer[0].attention.self.query.weight.mul_(1.5)
    assert not verify_export(tmp_path / "run" / "export", loaded.model, batches)["passed"]


def test_padding_positions_are_not_compared(tiny_bert_dir, sentences):
    """Two models that agree on every real token pass, whatever they put at padded positions."""
    from engine.io.model import load_model

    a = load_model(tiny_bert_dir).model.eval()
    splits = make_sample_splits(load_model(tiny_bert_dir).tokenizer, sentences, 48)
    batch = splits.eval[:8]
    assert not bool(batch.attention_mask.all())  # the batch really is padded

    class NoisyPadding(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            hidden = out.last_hidden_state + 1e3 * (1 - attention_mask[..., None].float())
            return type(out)(last_hidden_state=hidden)

    res = compare_logits(a, NoisyPadding(a), [batch])
    assert res["max_abs_logit_diff"] == 0.0
