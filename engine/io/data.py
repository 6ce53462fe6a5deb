"""Text data for calibration, training and evaluation.

The pipeline is ``load_texts`` (files -> documents) -> ``tokenize_blocks``
(documents -> fixed-length token blocks) -> ``make_splits`` (blocks -> calib /
train / eval) -> ``batches``.

Accepted sources (:func:`load_texts`):

* a plain text file (``.txt``, ``.text``, ``.md``): the whole file is one
  document. Splitting on blank lines would change nothing downstream, because
  documents are concatenated and cut into blocks anyway; very long documents are
  encoded in pieces internally, so big files are fine.
* a folder: every plain text file under it (recursive, sorted by relative path,
  hidden files and folders skipped), one document per file; empty files are
  skipped.
* JSON lines (``.jsonl``, ``.jsonlines``, or ``.json`` holding one object per
  line): one document per non-blank line, taken from ``text_field``. A ``.json``
  file holding a single JSON array of such objects (or of strings) works too.

Text must be UTF-8 (a byte-order mark is accepted); Windows line ends are
normalised to ``\\n``. Every problem raises :class:`~engine.errors.DataError`
naming the file (and line, for JSON lines) and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import DataError

from .batch import Samples, pad_id

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonlines", ".json")
# Long documents are handed to the tokenizer in pieces of about this many
# characters, cut at line ends: fast tokenizers encode a batch in parallel and
# never see one giant string.
_PIECE_CHARS = 64_000


# --------------------------------------------------------------------------- reading text


def load_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Read documents from a text file, a folder of text files, or a JSON lines file.

    Args:
        path: a ``.txt``/``.text``/``.md`` file, a folder, or a ``.jsonl``/``.jsonlines``/``.json`` file.
        text_field: the field holding the text in each JSON record.

    Returns:
        The non-empty documents, in file order.

    Raises:
        DataError: missing path, wrong extension, empty data, binary or non-UTF-8
            content, malformed JSON lines (with the line number), missing field.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise DataError(f"Data not found: {source}. Check the path of the text file or folder.")
    if source.is_dir():
        return _load_folder(source)
    suffix = source.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text = _read_text(source)
        if not text.strip():
            raise DataError(f"{source} is empty. Choose a file with text in it.")
        return [text]
    if suffix in JSONL_SUFFIXES:
        return _load_json_records(source, text_field)
    raise DataError(
        f"Unsupported data file type '{source.suffix or '(no extension)'}' for {source.name}. Use a plain "
        f"text file ({', '.join(TEXT_SUFFIXES)}), JSON lines ({', '.join(JSONL_SUFFIXES)}) or a folder of "
        "text files."
    )


def _load_folder(folder: Path) -> list[str]:
    files = sorted(
        (
            p
            for p in folder.rglob("*")
            if p.is_file()
            and p.suffix.lower() in TEXT_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise DataError(
            f"No text files in folder {folder}. Put {'/'.join(TEXT_SUFFIXES)} files in it, "
            "or choose a text or JSON lines file directly."
        )
    texts = [text for text in (_read_text(f) for f in files) if text.strip()]
    if not texts:
        raise DataError(f"All {len(files)} text file(s) in {folder} are empty. Add some text.")
    return texts


def _read_text(file: Path) -> str:
    """Read a UTF-8 (optionally BOM-prefixed) text file, refusing binary content."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read {file}: {exc.strerror or exc}. Check the file permissions.") from exc
    if b"\x00" in data:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DataError(f"{file} is UTF-16 text. Re-save it as UTF-8.")
        raise DataError(
            f"{file} looks binary (it contains NUL bytes), not text. Choose a plain text or JSON lines file."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{file} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}) "
            f"cannot be decoded ({exc.reason}). Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _load_json_records(file: Path, text_field: str) -> list[str]:
    text = _read_text(file)
    if not text.strip():
        raise DataError(f"{file} is empty. Choose a file with at least one record.")
    if file.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return _load_json_array(file, text, text_field)
    texts: list[str] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"Line {lineno} of {file.name} is not valid JSON ({exc.msg}, column {exc.colno}). Each line must "
                f'be one JSON object such as {{"{text_field}": "..."}}; fix or remove that line.'
            ) from exc
        value = _record_text(record, text_field, f"Line {lineno} of {file.name}")
        if value.strip():
            texts.append(value)
    if not texts:
        raise DataError(f"{file} has no non-empty '{text_field}' values. Add some text.")
    return texts


def _load_json_array(file: Path, text: str, text_field: str) -> list[str]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{file.name} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). Fix the file "
            "or save it as JSON lines (one object per line)."
        ) from exc
    texts: list[str] = []
    for index, record in enumerate(records):
        value = record if isinstance(record, str) else _record_text(record, text_field, f"Item {index} of {file.name}")
        if value.strip():
            texts.append(value)
    if not texts:
        raise DataError(f"{file} has no non-empty texts. Add some text.")
    return texts


def _record_text(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(
            f'{where} is a JSON {type(record).__name__}, not an object. Use {{"{text_field}": "..."}} records.'
        )
    if text_field not in record:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise DataError(
            f"{where} has no '{text_field}' field (its fields: {fields}). Set the text field to the one "
            "holding the text."
        )
    value = record[text_field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{text_field}' is a {type(value).__name__}, not a string.")
    return value


# --------------------------------------------------------------------------- tokenizing


def _pieces(text: str, size: int = _PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of roughly ``size`` characters, each ending at a line end when possible."""
    if len(text) <= size:
        return [text]
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            newline = text.rfind("\n", start, end)
            if newline > start:
                end = newline + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def _separator_id(tokenizer: Any) -> int | None:
    """The token placed between documents: eos, else sep (BERT-like), else none."""
    for attr in ("eos_token_id", "sep_token_id"):
        token_id = getattr(tokenizer, attr, None)
        if isinstance(token_id, int):
            return token_id
    return None


def count_tokens(tokenizer: Any, texts: list[str]) -> int:
    """Number of tokens in ``texts`` joined as :func:`tokenize_blocks` joins them."""
    return len(_token_stream(tokenizer, texts))


def document_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer itself puts before a text: its BOS when it adds one (Llama-style), else none.

    Packed blocks start each document the way the tokenizer would start it alone, so a model
    trained with a BOS at document starts sees one there; tokenizers that add no BOS (GPT-2
    style, this project's byte-level BPE) get nothing."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if not isinstance(bos, int):
        return []
    try:
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    except Exception:  # a tokenizer that cannot encode a probe adds nothing we can see
        return []
    return [bos] if with_special[:1] == [bos] and plain[:1] != [bos] else []


def _token_stream(tokenizer: Any, texts: list[str]) -> list[int]:
    sep = _separator_id(tokenizer)
    prefix = document_prefix(tokenizer)
    stream: list[int] = []
    for index, text in enumerate(texts):
        if index and sep is not None:
            stream.append(sep)
        stream.extend(prefix)
        pieces = _pieces(text)
        encoded = tokenizer(pieces, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            stream.extend(ids)
    return stream


def tokenize_blocks(tokenizer: Any, texts: list[str], seq_len: int) -> torch.Tensor:
    """Tokenize documents into non-overlapping blocks of ``seq_len`` tokens.

    Documents are encoded without special tokens and joined with the eos token
    between them (the sep token for tokenizers without eos, nothing if neither
    exists). The stream is cut into ``seq_len`` blocks; the incomplete tail is
    dropped.

    Returns:
        A ``torch.long`` tensor of shape ``[n_blocks, seq_len]``.

    Raises:
        DataError: ``seq_len`` < 1, or fewer tokens than one block.
    """
    if not isinstance(seq_len, int) or seq_len < 1:
        raise DataError(f"seq_len must be a positive integer, got {seq_len!r}.")
    stream = _token_stream(tokenizer, texts)
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise DataError(
            f"The text has only {len(stream)} tokens, fewer than one block of seq_len={seq_len}. "
            f"Use more text or a smaller seq_len (at most {max(len(stream), 1)})."
        )
    return torch.tensor(stream[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


# --------------------------------------------------------------------------- splits and batches


@dataclass
class DataSplits:
    """Token blocks for one run.

    Attributes:
        calib: calibration blocks (the same tensor as ``train``; take the first N).
        train: training pool for QAT / QAD.
        eval: held-out blocks for evaluation.
        n_tokens: tokens in ``train`` (== ``calib``).
        n_eval_tokens: tokens in ``eval``.
        seq_len: the block length.
        seed: the shuffle seed.
    """

    calib: torch.Tensor
    train: torch.Tensor
    eval: torch.Tensor
    n_tokens: int
    n_eval_tokens: int
    seq_len: int
    seed: int


def make_splits(
    tokenizer: Any,
    path: str | Path,
    seq_len: int,
    eval_path: str | Path | None = None,
    text_field: str = "text",
    eval_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplits:
    """Build calibration / training / evaluation blocks from text data.

    The blocks of ``path`` are shuffled with ``torch.Generator().manual_seed(seed)``
    (same seed, same split). Without ``eval_path``, the first
    ``max(1, round(n_blocks * eval_fraction))`` shuffled blocks are held out for
    evaluation and the rest form the calibration and training pool. With
    ``eval_path``, evaluation uses all blocks of that data (in file order) and
    every block of ``path`` goes to the pool.

    Raises:
        DataError: unreadable data, too little text, or a bad ``eval_fraction``.
    """
    blocks = tokenize_blocks(tokenizer, load_texts(path, text_field), seq_len)
    generator = torch.Generator().manual_seed(int(seed))
    blocks = blocks[torch.randperm(blocks.shape[0], generator=generator)]

    if eval_path is not None:
        eval_blocks = _eval_blocks(tokenizer, load_texts(eval_path, text_field), seq_len)
        pool = blocks
    else:
        if not 0.0 < float(eval_fraction) < 1.0:
            raise DataError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction!r}.")
        n = blocks.shape[0]
        if n < 2:
            raise DataError(
                f"{Path(path).name} gives only {n} block of {seq_len} tokens; at least 2 are needed to hold one "
                "out for evaluation. Add text, use a smaller seq_len, or give a separate evaluation file."
            )
        n_eval = min(n - 1, max(1, round(n * float(eval_fraction))))
        eval_blocks, pool = blocks[:n_eval], blocks[n_eval:]

    return DataSplits(
        calib=pool,
        train=pool,
        eval=eval_blocks,
        n_tokens=int(pool.numel()),
        n_eval_tokens=int(eval_blocks.numel()),
        seq_len=seq_len,
        seed=int(seed),
    )


def _eval_blocks(tokenizer: Any, texts: list[str], seq_len: int):
    """Blocks of the evaluation data; data shorter than one block becomes one right-padded block
    with an attention mask (a Samples set), so no token attends to, or is scored on, padding."""
    stream = _token_stream(tokenizer, texts)
    if len(stream) >= seq_len or not stream:
        return tokenize_blocks(tokenizer, texts, seq_len)
    ids = torch.full((1, seq_len), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((1, seq_len), dtype=torch.long)
    ids[0, :len(stream)] = torch.tensor(stream, dtype=torch.long)
    mask[0, :len(stream)] = 1
    return Samples(ids, mask)


def batches(blocks: torch.Tensor, batch_size: int, n_batches: int | None = None) -> list[torch.Tensor]:
    """Split blocks into batches in order.

    The last partial batch is dropped, unless it is the only batch (fewer blocks
    than ``batch_size``). ``n_batches`` keeps only the first that many batches.

    Raises:
        DataError: no blocks, ``batch_size`` < 1 or ``n_batches`` < 1.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}.")
    if n_batches is not None and n_batches < 1:
        raise DataError(f"n_batches must be at least 1, got {n_batches}.")
    n = int(blocks.shape[0])
    if n == 0:
        raise DataError("There are no data blocks to batch. Use more text or a smaller seq_len.")
    if n < batch_size:
        out = [blocks]
    else:
        out = [blocks[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return out if n_batches is None else out[:n_batches]
