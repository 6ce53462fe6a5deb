"""The built-in demo's files: where the demo model lives, its corpus, and its recipe.

The corpus is the standard library's pydoc topics, read from the Python
installation and written once into a cache folder (never copied into the repo).
Training the demo model itself is ``python -m engine.demo train``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

from ..resources import resource_path
from .corpus import python_docs_corpus

DEMO_MODEL_DIR = resource_path("demo-model")

# The demo shows the point of the studio: this scheme loses visibly under PTQ
# and QAD recovers most of it.
DEMO_SCHEME = "W2A16-INT2"
DEMO_SEQ_LEN = 128

MODEL_CONFIG = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
                    rms_norm_eps=1e-5)
VOCAB = 2048
EVAL_EVERY_NTH = 10  # every 10th pydoc topic is held out for evaluation


def cache_dir() -> Path:
    root = os.environ.get("LOWBIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lowbit-studio")
    return Path(root)


def split_corpus() -> Tuple[list, list]:
    texts = python_docs_corpus()
    train = [t for i, t in enumerate(texts) if i % EVAL_EVERY_NTH != EVAL_EVERY_NTH - 1]
    evals = [t for i, t in enumerate(texts) if i % EVAL_EVERY_NTH == EVAL_EVERY_NTH - 1]
    return train, evals


def demo_data() -> Tuple[Path, Path]:
    """(train.txt, eval.txt) of the demo corpus, written once into the cache folder."""
    folder = cache_dir() / "demo-data"
    train_path, eval_path = folder / "python-docs-train.txt", folder / "python-docs-eval.txt"
    if not (train_path.exists() and eval_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        train, evals = split_corpus()
        for path, texts in ((train_path, train), (eval_path, evals)):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("\n\n".join(t.strip() for t in texts) + "\n", encoding="utf-8")
            os.replace(tmp, path)
    return train_path, eval_path


def resolve_model_path(path):
    """``demo`` names the built-in demo model; anything else is returned as is."""
    return DEMO_MODEL_DIR if str(path).strip().lower() == "demo" else path


def resolve_data_paths(recipe) -> Tuple[Optional[str], Optional[str]]:
    """(data.path, data.eval_path), with the demo corpus filled in for the demo model without data."""
    d = recipe.data
    if d.path is None and str(recipe.model.path).strip().lower() == "demo":
        train, evals = demo_data()
        return str(train), d.eval_path or str(evals)
    return d.path, d.eval_path


def demo_available() -> bool:
    return (DEMO_MODEL_DIR / "config.json").exists()


def demo_recipe_dict(mode: str = "qad") -> dict:
    return {
        "model": {"path": "demo"},
        "data": {"seq_len": DEMO_SEQ_LEN, "batch_size": 8,
                 "calib_batches": 8, "eval_batches": 16},
        "quant": {"scheme": DEMO_SCHEME},
        "mode": mode,
        "train": {"steps": 120, "lr": 5e-4, "warmup_steps": 10, "eval_every": 40, "checkpoint_every": 0},
        "device": "auto",
    }
