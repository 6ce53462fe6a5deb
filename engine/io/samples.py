"""Sample-per-line data for encoders, and padded batches with attention masks.

Sentence encoders are used one sentence at a time: ``[CLS] tokens [SEP]``,
padded to the longest sentence of the batch, with an attention mask. Training
and evaluating them on packed windows of running text (no special tokens, no
mask) is off the distribution they serve, so encoders get this data path:

* :func:`load_samples` reads one sample per non-blank line of a text file (or of
  every text file of a folder), or one per JSON lines record;
* :func:`encode_samples` encodes them with the tokenizer's own special tokens,
  truncated to ``max_len``, into a :class:`Samples` set;
* indexing a :class:`Samples` set (a slice, or a tensor of row indices) gives
  a batch trimmed to the longest sample in it: padded per batch.

:func:`model_inputs` turns either kind of batch (a packed ``[B, T]`` id tensor,
or a :class:`Samples` batch) into the keyword arguments of a forward call, so
every consumer -- calibration, training, evaluation -- passes the attention
mask the same way. Losses and metrics weight tokens by :func:`token_mask`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch

from engine.errors import DataError

from .batch import Batch, Samples, model_inputs, pad_id, token_mask  # noqa: F401  (the data path's names)
from .data import DataSplits, load_texts, make_splits


# --------------------------------------------------------------------------- reading and encoding


def load_samples(path: Union[str, Path], text_field: str = "text") -> list[str]:
    """One sample per non-blank line of text files (a file or a folder), or one per JSON lines record.

    Raises:
        DataError: as :func:`engine.io.data.load_texts`.
    """
    source = Path(path).expanduser()
    docs = load_texts(source, text_field)
    if source.is_file() and source.suffix.lower() in (".jsonl", ".jsonlines", ".json"):
        return [d.strip() for d in docs if d.strip()]
    lines = [line.strip() for doc in docs for line in doc.split("\n")]
    return [line for line in lines if line]


def encode_samples(tokenizer: Any, texts: list[str], max_len: int) -> Samples:
    """Encode each text as one sample with the tokenizer's special tokens, truncated to ``max_len`` tokens.

    Raises:
        DataError: no texts, or ``max_len`` too small to hold the special tokens and one token.
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise DataError(f"seq_len must be a positive integer, got {max_len!r}.")
    if not texts:
        raise DataError("There are no samples: the data has no non-blank lines. Add text, one sample per line.")
    n_special = len(tokenizer("a", add_special_tokens=True)["input_ids"]) - len(
        tokenizer("a", add_special_tokens=False)["input_ids"])
    if max_len <= n_special:
        raise DataError(f"seq_len={max_len} leaves no room for text next to the tokenizer's {n_special} special "
                        f"tokens; use a seq_len of at least {n_special + 8}.")
    enc = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_len, verbose=False)
    rows = [ids for ids in enc["input_ids"] if len(ids) > n_special]
    if not rows:
        raise DataError("Every sample is empty after tokenization. Check that the data holds text.")
    pad = pad_id(tokenizer)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return Samples(ids, mask)


def make_sample_splits(tokenizer: Any, path: Union[str, Path], max_len: int,
                       eval_path: Union[str, Path, None] = None, text_field: str = "text",
                       eval_fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """Calibration / training / evaluation samples (one per line or record), like :func:`make_splits`.

    The samples of ``path`` are shuffled with the seed; without ``eval_path`` the first
    ``eval_fraction`` of them are held out, with it every sample of ``path`` trains.
    """
    samples = encode_samples(tokenizer, load_samples(path, text_field), max_len)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(int(seed)))
    samples = Samples(samples.input_ids[order], samples.attention_mask[order])
    if eval_path is not None:
        evals, pool = encode_samples(tokenizer, load_samples(eval_path, text_field), max_len), samples
    else:
        if not 0.0 < float(eval_fraction) < 1.0:
            raise DataError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction!r}.")
        n = len(samples)
        if n < 2:
            raise DataError(f"{Path(path).name} gives only {n} sample; at least 2 are needed to hold one out for "
                            "evaluation. Add lines of text or give a separate evaluation file.")
        n_eval = min(n - 1, max(1, round(n * float(eval_fraction))))
        evals = Samples(samples.input_ids[:n_eval], samples.attention_mask[:n_eval])
        pool = Samples(samples.input_ids[n_eval:], samples.attention_mask[n_eval:])
    return DataSplits(calib=pool, train=pool, eval=evals, n_tokens=pool.numel(), n_eval_tokens=evals.numel(),
                      seq_len=max_len, seed=int(seed))


def sample_mode(samples: str, kind: str) -> str:
    """``data.samples`` resolved for a model kind: ``auto`` = lines for encoders, packed blocks otherwise."""
    return samples if samples != "auto" else ("lines" if kind == "encoder" else "packed")


def splits_for(tokenizer: Any, kind: str, path: Union[str, Path], seq_len: int, samples: str = "auto",
               eval_path: Union[str, Path, None] = None, text_field: str = "text", eval_fraction: float = 0.1,
               seed: int = 0) -> DataSplits:
    """The splits a run of this model kind trains and evaluates on: sentences for encoders (special
    tokens, padding, attention mask), packed blocks for causal LMs, as ``data.samples`` says.

    Every part of the engine that re-reads a recipe's data (the run, exports of a finished run, sweeps,
    analysis) goes through here, so none of them feeds an encoder packed text by accident."""
    split = make_sample_splits if sample_mode(samples, kind) == "lines" else make_splits
    return split(tokenizer, path, seq_len, eval_path=eval_path, text_field=text_field,
                 eval_fraction=eval_fraction, seed=seed)
