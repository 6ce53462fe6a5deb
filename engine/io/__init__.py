"""Safe loading of checkpoints and text data.

* :mod:`engine.io.model` -- ``load_model``, ``LoadedModel``, ``linear_layers``,
  ``describe_model``, ``load_tokenizer``
* :mod:`engine.io.data` -- ``load_texts``, ``tokenize_blocks``, ``make_splits``,
  ``DataSplits``, ``batches``
* :mod:`engine.io.tokenizer` -- ``train_tokenizer``
* :mod:`engine.io.corpus` -- ``python_docs_corpus``

Names are imported lazily, so ``import engine.io`` does not pull in transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoadedModel": "model",
    "load_model": "model",
    "detect_kind": "model",
    "linear_layers": "model",
    "describe_model": "model",
    "load_tokenizer": "model",
    "DataSplits": "data",
    "load_texts": "data",
    "tokenize_blocks": "data",
    "make_splits": "data",
    "batches": "data",
    "train_tokenizer": "tokenizer",
    "python_docs_corpus": "corpus",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.io' has no attribute {name!r}")
    return getattr(importlib.import_module(f"engine.io.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
