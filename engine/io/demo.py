"""The built-in demo's files: where the demo model lives, its corpus, and its recipe.

The corpus is the standard library's pydoc topics, read from the Python
installation and written once into a cache folder (never copied into the repo).
Training the demo model itself is ``python -m engine.demo train``, the demo encoder
``python -m engine.demo train-encoder``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

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

# The demo encoder (issue 13): a small BERT-style encoder trained by `python -m engine.demo train-encoder`
# on the same corpus, one sentence per sample; the fixture of encoder QAD.
DEMO_ENCODER_DIR = resource_path("demo-encoder")
ENCODER_SEQ_LEN = 64
ENCODER_VOCAB = 2048
ENCODER_CONFIG = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      max_position_embeddings=128, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
ENCODER_EVAL_EVERY_NTH = 5  # every 5th pydoc topic is held out (a few hundred sentences)
ENCODER_SCHEME = "W4A4-NVFP4"
DEMO_NAMES = {"demo": DEMO_MODEL_DIR, "demo-encoder": DEMO_ENCODER_DIR}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


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
    """``demo`` names the built-in demo model and ``demo-encoder`` the demo encoder; anything else is
    returned as is."""
    return DEMO_NAMES.get(str(path).strip().lower(), path)


def _demo_name(path) -> Optional[str]:
    p = str(path).strip().lower()
    if p in DEMO_NAMES:
        return p
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError):
        return None
    return next((name for name, folder in DEMO_NAMES.items() if folder.resolve() == resolved), None)


def resolve_data_paths(recipe) -> Tuple[Optional[str], Optional[str]]:
    """(data.path, data.eval_path), with the demo corpus filled in for a demo model without data:
    running text for the demo Llama, one sentence per line for the demo encoder."""
    d = recipe.data
    name = _demo_name(recipe.model.path) if d.path is None else None
    if name == "demo":
        train, evals = demo_data()
        return str(train), d.eval_path or str(evals)
    if name == "demo-encoder":
        train, evals = demo_sentences()
        return str(train), d.eval_path or str(evals)
    return d.path, d.eval_path


def demo_available() -> bool:
    return (DEMO_MODEL_DIR / "config.json").exists()


def demo_encoder_available() -> bool:
    return (DEMO_ENCODER_DIR / "config.json").exists()


def demo_encoder_recipe_dict(mode: str = "qad") -> dict:
    """The demo encoder's recipe: sentences, W4A4-NVFP4, the encoder defaults of train.*."""
    return {
        "model": {"path": "demo-encoder"},
        "data": {"seq_len": ENCODER_SEQ_LEN, "batch_size": 32, "calib_batches": 8, "eval_batches": 8},
        "quant": {"scheme": ENCODER_SCHEME},
        "mode": mode,
        "train": {"steps": 200, "eval_every": 50, "checkpoint_every": 0},
        "device": "auto",
    }


def sentences_of(text: str) -> List[str]:
    """The prose sentences of one pydoc topic: paragraphs re-joined, code and headings left out."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in para.split("\n") if line.strip()]
        if not lines or any(line.startswith((">>>", "...", "$")) for line in lines):
            continue
        joined = re.sub(r"\s+", " ", " ".join(lines))
        if set(joined) <= set("*=-~^ ") or len(joined.split()) < 4:
            continue
        for s in _SENTENCE_END.split(joined):
            s = s.strip()
            words = s.split()
            symbols = sum(not c.isalnum() and not c.isspace() for c in s)
            if 4 <= len(words) <= 60 and symbols <= 0.15 * len(s):
                out.append(s)
    return out


def split_sentences() -> Tuple[List[str], List[str]]:
    texts = python_docs_corpus()
    train, evals = [], []
    for i, t in enumerate(texts):
        (evals if i % ENCODER_EVAL_EVERY_NTH == ENCODER_EVAL_EVERY_NTH - 1 else train).extend(sentences_of(t))
    return train, evals


def demo_sentences() -> Tuple[Path, Path]:
    """(train.txt, eval.txt): the demo corpus as one sentence per line, written once into the cache folder."""
    folder = cache_dir() / "demo-data"
    train_path = folder / "python-docs-sentences-train.txt"
    eval_path = folder / "python-docs-sentences-eval.txt"
    if not (train_path.exists() and eval_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        for path, lines in zip((train_path, eval_path), split_sentences()):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, path)
    return train_path, eval_path


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
