"""Issue 13's mechanism: on a BERT-style encoder shipped with dropout 0.1 (the demo encoder, trained
by this project with masked LM), QAD with the default settings -- a deterministic student, one
sentence per sample with special tokens and attention masks, batches of 32 sentences -- beats the
same QAD with dropout kept on, and wins back at least 60% of the PTQ sentence-embedding cosine gap
at W4A4-NVFP4 on held-out sentences.

Measured on this project's 2-core machine (direct trainer, same data and seed, 200 steps):
PTQ 0.99932, QAD 0.99975 (63.6% of the gap) at lr 1e-4.
"""

from __future__ import annotations

import json

import pytest

from engine.io.demo import DEMO_ENCODER_DIR, demo_encoder_available, demo_encoder_recipe_dict
from engine.pipeline import run
from engine.recipe import Recipe

pytestmark = pytest.mark.slow


def _recovered(rep) -> float:
    ptq, final = rep["ptq"]["embedding_cosine"], rep["final"]["embedding_cosine"]
    return (final - ptq) / (1.0 - ptq)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    assert demo_encoder_available(), "resources/demo-encoder is part of the project"
    config = json.loads((DEMO_ENCODER_DIR / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.1 and config["attention_probs_dropout_prob"] == 0.1
    recipe = Recipe.from_dict(demo_encoder_recipe_dict("qad")).with_updates(
        {"quant.scheme": "W4A4-NVFP4", "train.eval_every": 0, "device": "cpu", "analysis.benchmark": False})
    root = tmp_path_factory.mktemp("encoder-qad")
    default = run(recipe, run_dir=root / "default").report
    noisy = run(recipe.with_updates({"train.dropout": "on"}), run_dir=root / "dropout-on").report
    return default, noisy


def test_default_qad_runs_on_sentences_with_a_deterministic_student(two_runs):
    default, noisy = two_runs
    assert default["data"]["samples"] == "lines"
    # the report says what the student trained with: the recipe's 'auto' resolved to off for QAD
    assert default["train_settings"]["batch_size"] == 32 and default["train_settings"]["dropout"] == "off"
    assert noisy["train_settings"]["dropout"] == "on"
    assert default["ptq"]["embedding_cosine"] < 0.9996, "W4A4-NVFP4 must cost the demo encoder something"


def test_qad_defaults_beat_dropout_on_and_recover_most_of_the_gap(two_runs):
    default, noisy = two_runs
    assert default["final"]["embedding_cosine"] > noisy["final"]["embedding_cosine"], (default["final"], noisy["final"])
    assert _recovered(default) >= 0.60, (default["ptq"], default["final"])
    assert _recovered(default) > _recovered(noisy)
