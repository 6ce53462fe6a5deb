"""Shared fixtures: offline environment, the demo corpus, text files and tiny models.

Everything is built locally (no hub access) and cached for the whole session.
The folders returned by the model fixtures are shared between tests: treat them
as read-only, and ``shutil.copytree`` them into ``tmp_path`` before changing files.
"""

from __future__ import annotations

import os

# Before transformers / huggingface_hub / Qt are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# the demo data cache and the GUI settings go to throwaway folders, never the user's own
import tempfile  # noqa: E402

os.environ["LOWBIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="lowbit-test-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Sizes of the text fixtures, in characters. The demo corpus tokenizes at about
# 3 characters per token with the 1024-token BPE tokenizer, so TEXT_CHARS gives
# about 60 blocks of 64 tokens and EVAL_CHARS about 20.
TEXT_CHARS = 12_000
EVAL_CHARS = 4_000
TOKENIZER_VOCAB = 1024


def _take_chars(docs: list[str], n_chars: int) -> str:
    """Join whole documents (blank line between) until at least ``n_chars``, then cut at a line end."""
    parts: list[str] = []
    total = 0
    for doc in docs:
        parts.append(doc.strip())
        total += len(doc)
        if total >= n_chars:
            break
    text = "\n\n".join(parts)
    cut = text.find("\n", n_chars)
    return (text if cut < 0 else text[:cut]) + "\n"


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    """The built-in demo corpus (Python's pydoc topics), one string per topic, sorted by key."""
    from engine.io.corpus import python_docs_corpus

    return python_docs_corpus()


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory, corpus_texts: list[str]) -> Path:
    """A UTF-8 .txt file from the start of the corpus (~12k chars, ~60 blocks of 64 tokens)."""
    path = tmp_path_factory.mktemp("data") / "train.txt"
    path.write_text(_take_chars(corpus_texts, TEXT_CHARS), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def eval_text_file(tmp_path_factory: pytest.TempPathFactory, corpus_texts: list[str]) -> Path:
    """A .txt file from the end of the corpus (~4k chars, ~20 blocks of 64), disjoint from ``text_file``."""
    path = tmp_path_factory.mktemp("data") / "eval.txt"
    path.write_text(_take_chars(corpus_texts[::-1], EVAL_CHARS), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bpe_tokenizer(corpus_texts: list[str]):
    """A byte-level BPE tokenizer (1024 tokens) trained on the corpus; the tiny Llama uses it."""
    from engine.io.tokenizer import train_tokenizer

    return train_tokenizer(corpus_texts, vocab_size=TOKENIZER_VOCAB, kind="bpe")


@pytest.fixture(scope="session")
def wordpiece_tokenizer(corpus_texts: list[str]):
    """A lowercase WordPiece tokenizer (1024 tokens) trained on the corpus; the tiny BERT uses it."""
    from engine.io.tokenizer import train_tokenizer

    return train_tokenizer(corpus_texts, vocab_size=TOKENIZER_VOCAB, kind="wordpiece")


def save_llama(path: Path, tokenizer, seed: int = 0, **config) -> Path:
    """Save a randomly initialised LlamaForCausalLM (default: hidden 64, 2 layers, 4 heads / 2 kv heads;
    ``config`` overrides) with ``tokenizer``: safetensors weights, seeded, the same every run."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**settings, **config})).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def make_llama():
    """:func:`save_llama`, for tests that need a Llama of another shape."""
    return save_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer) -> Path:
    """A saved, randomly initialised LlamaForCausalLM (hidden 64, 2 layers, 4 heads / 2 kv heads) and
    the BPE tokenizer."""
    return save_llama(tmp_path_factory.mktemp("models") / "tiny-llama", bpe_tokenizer)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer) -> Path:
    """A saved, randomly initialised BertModel encoder (hidden 64, 2 layers, 4 heads, intermediate 128).

    safetensors weights plus the WordPiece tokenizer; seeded.
    """
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(wordpiece_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=wordpiece_tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = BertModel(config).eval()
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    model.save_pretrained(path, safe_serialization=True)
    wordpiece_tokenizer.save_pretrained(path)
    return path
