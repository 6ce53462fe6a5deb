"""The built-in demo corpus: the Python documentation topics shipped with Python.

``pydoc_data.topics`` is part of the standard library (it backs ``help()`` on
keywords and topics), so it is present on every install and needs no download.
The texts are read at run time and never copied into the repository.
"""

from __future__ import annotations


def python_docs_corpus() -> list[str]:
    """Return the texts of ``pydoc_data.topics.topics``, sorted by topic key.

    About 80 documents and roughly 450 kB of English technical prose with code
    snippets; enough to train a small tokenizer and a tiny language model.

    Raises:
        engine.errors.DataError: if this Python was installed without
            ``pydoc_data`` (some minimal distributions strip it).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # pragma: no cover - depends on the Python build
        from engine.errors import DataError

        raise DataError(
            "The built-in demo corpus (Python's pydoc_data.topics) is missing from this Python "
            "installation. Choose a text file or folder as the data source instead."
        ) from exc
    return [topics[key] for key in sorted(topics)]
