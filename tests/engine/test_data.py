"""engine.io.data on real files and the real tokenizers of the tiny fixture models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import DataError
from engine.io.data import DataSplits, _pieces, batches, count_tokens, load_texts, make_splits, tokenize_blocks

SEQ = 64


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def block_set(blocks: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(row) for row in blocks.tolist()}


# --------------------------------------------------------------------------- load_texts


def test_text_file_is_one_document(text_file: Path) -> None:
    texts = load_texts(text_file)
    assert texts == [text_file.read_text(encoding="utf-8")]


def test_text_file_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "windows.txt"
    path.write_bytes("\ufeffline one\r\nline two\r\n".encode("utf-8"))
    assert load_texts(path) == ["line one\nline two\n"]


def test_folder_is_read_recursively_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "b.txt").write_text("B")
    (root / "a" / "c.txt").write_text("A/C")
    (root / "a.txt").write_text("A")
    (root / "empty.txt").write_text("  \n")
    (root / "notes.csv").write_text("x,y")
    (root / ".hidden" / "secret.txt").write_text("hidden")
    (root / "z.md").write_text("Z")
    assert load_texts(root) == ["A", "A/C", "B", "Z"]


def test_jsonl_records(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"text": "first", "id": 1}), "", "   ", json.dumps({"text": "second"}), json.dumps({"text": ""})]
    path.write_text("\n".join(lines) + "\n")
    assert load_texts(path) == ["first", "second"]

    other = tmp_path / "content.jsonlines"
    other.write_text(json.dumps({"content": "x y"}) + "\n")
    assert load_texts(other, text_field="content") == ["x y"]


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"text": "one"}, "two", {"text": ""}]))
    assert load_texts(path) == ["one", "two"]
    path.write_text(json.dumps({"text": "as json lines"}) + "\n" + json.dumps({"text": "2"}))
    assert load_texts(path) == ["as json lines", "2"]


def test_jsonl_bad_line_reports_line_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken\n{"text": "ok"}\n')
    with pytest.raises(DataError, match=r"Line 3 of bad\.jsonl is not valid JSON"):
        load_texts(path)


def test_jsonl_missing_field_reports_line_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "fields.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text here", "id": 7}\n')
    with pytest.raises(DataError) as info:
        load_texts(path)
    message = str(info.value)
    assert "Line 2 of fields.jsonl has no 'text' field" in message and "body, id" in message


def test_jsonl_wrong_record_types(tmp_path: Path) -> None:
    path = tmp_path / "types.jsonl"
    path.write_text('{"text": "ok"}\n["a", "list"]\n')
    with pytest.raises(DataError, match="Line 2 of types.jsonl is a JSON list, not an object"):
        load_texts(path)
    path.write_text('{"text": 42}\n')
    with pytest.raises(DataError, match="Line 1 of types.jsonl: field 'text' is a int, not a string"):
        load_texts(path)


def test_jsonl_without_text(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(DataError, match="no non-empty 'text' values"):
        load_texts(path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Data not found: .*nothing.txt"):
        load_texts(tmp_path / "nothing.txt")


@pytest.mark.parametrize("content", ["", "   \n\n\t"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(DataError, match="empty.txt is empty"):
        load_texts(path)
    jsonl = tmp_path / "empty.jsonl"
    jsonl.write_text(content)
    with pytest.raises(DataError, match="empty"):
        load_texts(jsonl)


def test_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="No text files in folder"):
        load_texts(tmp_path)
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("\n")
    with pytest.raises(DataError, match="All 2 text file"):
        load_texts(tmp_path)


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.txt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="looks binary .*NUL bytes"):
        load_texts(path)
    # A binary file hiding in a folder is named.
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "good.txt").write_text("fine")
    (folder / "junk.txt").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="junk.txt looks binary"):
        load_texts(folder)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nsecond line caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_texts(path)
    message = str(info.value)
    assert "not UTF-8 text" in message and "0xe9" in message and "line 2" in message and "Re-save" in message

    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("hello".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16 text. Re-save it as UTF-8"):
        load_texts(utf16)


@pytest.mark.parametrize("name", ["data.csv", "model.bin", "README"])
def test_wrong_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("text")
    with pytest.raises(DataError, match="Unsupported data file type"):
        load_texts(path)


# --------------------------------------------------------------------------- tokenize_blocks


def test_tokenize_blocks_concatenates_with_eos(bpe_tokenizer) -> None:
    docs = ["The quick brown fox. " * 20, "Jumps over the lazy dog. " * 20, "def f(x):\n    return x\n" * 10]
    blocks = tokenize_blocks(bpe_tokenizer, docs, 16)
    eos = bpe_tokenizer.eos_token_id
    stream = encode(bpe_tokenizer, docs[0]) + [eos] + encode(bpe_tokenizer, docs[1]) + [eos] + encode(bpe_tokenizer, docs[2])
    n = len(stream) // 16
    assert blocks.dtype == torch.long and blocks.shape == (n, 16)
    assert blocks.flatten().tolist() == stream[: n * 16]  # remainder dropped
    assert count_tokens(bpe_tokenizer, docs) == len(stream)
    assert (blocks == eos).sum() == 2


def test_tokenize_blocks_uses_sep_without_eos(wordpiece_tokenizer) -> None:
    assert wordpiece_tokenizer.eos_token_id is None
    blocks = tokenize_blocks(wordpiece_tokenizer, ["alpha beta gamma"] * 4, 4)
    flat = blocks.flatten().tolist()
    assert flat.count(wordpiece_tokenizer.sep_token_id) >= 2
    assert wordpiece_tokenizer.cls_token_id not in flat  # documents are encoded without special tokens


def test_tokenize_blocks_on_the_fixture_text(bpe_tokenizer, text_file: Path) -> None:
    blocks = tokenize_blocks(bpe_tokenizer, load_texts(text_file), SEQ)
    assert 40 <= blocks.shape[0] <= 100, "text_file should give about 50-60 blocks of 64 tokens"
    assert int(blocks.max()) < len(bpe_tokenizer)


def test_text_shorter_than_one_block(bpe_tokenizer) -> None:
    n = len(encode(bpe_tokenizer, "Just a few words."))
    with pytest.raises(DataError) as info:
        tokenize_blocks(bpe_tokenizer, ["Just a few words."], 64)
    message = str(info.value)
    assert f"only {n} tokens" in message and "seq_len=64" in message and "smaller seq_len" in message


@pytest.mark.parametrize("seq_len", [0, -3])
def test_bad_seq_len(bpe_tokenizer, seq_len: int) -> None:
    with pytest.raises(DataError, match="seq_len must be a positive integer"):
        tokenize_blocks(bpe_tokenizer, ["text"], seq_len)


def test_long_documents_are_cut_at_line_ends() -> None:
    text = "".join(f"line {i} " + "x" * (i % 50) + "\n" for i in range(5000))
    pieces = _pieces(text, size=1000)
    assert "".join(pieces) == text
    assert len(pieces) > 50
    assert all(p.endswith("\n") for p in pieces)
    assert all(len(p) <= 1000 for p in pieces)
    assert _pieces("short") == ["short"]
    assert "".join(_pieces("y" * 2500, size=1000)) == "y" * 2500  # no newline: hard cuts


# --------------------------------------------------------------------------- make_splits


def test_make_splits_holds_out_eval(bpe_tokenizer, text_file: Path) -> None:
    all_blocks = tokenize_blocks(bpe_tokenizer, load_texts(text_file), SEQ)
    n = all_blocks.shape[0]
    splits = make_splits(bpe_tokenizer, text_file, SEQ)
    assert isinstance(splits, DataSplits)
    assert splits.calib is splits.train
    assert splits.eval.shape == (round(n * 0.1), SEQ)
    assert splits.train.shape == (n - round(n * 0.1), SEQ)
    assert splits.n_tokens == splits.train.numel() and splits.n_eval_tokens == splits.eval.numel()
    assert (splits.seq_len, splits.seed) == (SEQ, 0)
    # A partition of the same blocks, shuffled.
    assert block_set(splits.train).isdisjoint(block_set(splits.eval))
    assert block_set(splits.train) | block_set(splits.eval) == block_set(all_blocks)
    assert not torch.equal(torch.cat([splits.eval, splits.train]), all_blocks)


def test_make_splits_is_deterministic(bpe_tokenizer, text_file: Path) -> None:
    first = make_splits(bpe_tokenizer, text_file, SEQ, seed=7)
    again = make_splits(bpe_tokenizer, text_file, SEQ, seed=7)
    other = make_splits(bpe_tokenizer, text_file, SEQ, seed=8)
    assert torch.equal(first.train, again.train) and torch.equal(first.eval, again.eval)
    assert not torch.equal(first.train, other.train)
    assert block_set(first.eval) != block_set(other.eval)


def test_make_splits_with_eval_file(bpe_tokenizer, text_file: Path, eval_text_file: Path) -> None:
    splits = make_splits(bpe_tokenizer, text_file, SEQ, eval_path=eval_text_file, seed=3)
    main_blocks = tokenize_blocks(bpe_tokenizer, load_texts(text_file), SEQ)
    eval_blocks = tokenize_blocks(bpe_tokenizer, load_texts(eval_text_file), SEQ)
    assert torch.equal(splits.eval, eval_blocks)
    assert splits.train.shape == main_blocks.shape
    assert block_set(splits.train) == block_set(main_blocks)
    assert splits.n_tokens == main_blocks.numel() and splits.n_eval_tokens == eval_blocks.numel()
    assert block_set(splits.train).isdisjoint(block_set(splits.eval))


def test_make_splits_eval_fraction(bpe_tokenizer, text_file: Path) -> None:
    n = tokenize_blocks(bpe_tokenizer, load_texts(text_file), SEQ).shape[0]
    assert make_splits(bpe_tokenizer, text_file, SEQ, eval_fraction=0.25).eval.shape[0] == round(n * 0.25)
    assert make_splits(bpe_tokenizer, text_file, SEQ, eval_fraction=0.001).eval.shape[0] == 1  # at least one
    for bad in (0.0, 1.0, -0.5, 2):
        with pytest.raises(DataError, match="eval_fraction must be between 0 and 1"):
            make_splits(bpe_tokenizer, text_file, SEQ, eval_fraction=bad)


def test_make_splits_needs_two_blocks(bpe_tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    text = "word " * 40
    path.write_text(text)
    seq = len(encode(bpe_tokenizer, text))  # exactly one block
    with pytest.raises(DataError, match="only 1 block .*at least 2"):
        make_splits(bpe_tokenizer, path, seq)
    # With a separate eval file one block is enough.
    splits = make_splits(bpe_tokenizer, path, seq, eval_path=path)
    assert splits.train.shape == (1, seq) and splits.eval.shape == (1, seq)


def test_make_splits_jsonl_field(bpe_tokenizer, tmp_path: Path, corpus_texts: list[str]) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in corpus_texts[:5]))
    splits = make_splits(bpe_tokenizer, path, 32, text_field="body")
    assert splits.train.shape[1] == 32 and splits.eval.shape[0] >= 1
    with pytest.raises(DataError, match="Line 1 of docs.jsonl has no 'text' field"):
        make_splits(bpe_tokenizer, path, 32)


# --------------------------------------------------------------------------- batches


def test_batches() -> None:
    blocks = torch.arange(10 * 3).view(10, 3)
    out = batches(blocks, 4)
    assert [b.shape[0] for b in out] == [4, 4]  # the partial batch of 2 is dropped
    assert torch.equal(torch.cat(out), blocks[:8])
    assert [b.shape[0] for b in batches(blocks, 5)] == [5, 5]
    assert len(batches(blocks, 2, n_batches=3)) == 3
    assert len(batches(blocks, 2, n_batches=100)) == 5
    only = batches(blocks[:3], 8)  # fewer blocks than one batch: kept as the only batch
    assert len(only) == 1 and torch.equal(only[0], blocks[:3])


def test_batches_errors() -> None:
    blocks = torch.zeros(4, 2, dtype=torch.long)
    with pytest.raises(DataError, match="batch_size"):
        batches(blocks, 0)
    with pytest.raises(DataError, match="n_batches"):
        batches(blocks, 2, n_batches=0)
    with pytest.raises(DataError, match="no data blocks"):
        batches(blocks[:0], 2)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), n_batches=st.one_of(st.none(), st.integers(1, 10)))
def test_batches_properties(n: int, batch_size: int, n_batches: int | None) -> None:
    blocks = torch.arange(n).view(n, 1)
    out = batches(blocks, batch_size, n_batches)
    flat = torch.cat(out).flatten().tolist()
    assert flat == list(range(len(flat)))  # in order, no gaps, no repeats
    if n >= batch_size:
        assert all(b.shape[0] == batch_size for b in out)
        expected = n // batch_size
    else:
        assert len(out) == 1 and out[0].shape[0] == n
        expected = 1
    assert len(out) == (expected if n_batches is None else min(expected, n_batches))
