"""Train small tokenizers locally, without the Hugging Face hub.

The demo model and the test fixtures need a tokenizer that matches their own
vocabulary. :func:`train_tokenizer` builds one from a list of texts with the
``tokenizers`` library and wraps it as a ``transformers`` fast tokenizer, so it
can be saved next to a model with ``save_pretrained`` and loaded back with
``AutoTokenizer``.

Two kinds are offered:

* ``"bpe"``: byte-level BPE (GPT-2 / Llama style) for causal language models.
  Any byte sequence can be encoded, so ``<unk>`` is never produced in practice;
  it exists so ``unk_token`` is defined. Special tokens: ``<s>`` (bos),
  ``</s>`` (eos), ``<unk>``, ``<pad>``. Encoding does not add bos/eos on its
  own; callers that want them (e.g. :func:`engine.io.data.tokenize_blocks`)
  insert them explicitly.
* ``"wordpiece"``: BERT-style lowercase WordPiece for encoders, with
  ``[PAD] [UNK] [CLS] [SEP] [MASK]``; encoding wraps inputs as
  ``[CLS] ... [SEP]``.

Training is deterministic for the same texts and settings: the result does not
depend on thread count or on the process (checked by the tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TokenizerKind = Literal["bpe", "wordpiece"]

BPE_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
WORDPIECE_SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}

# Byte-level BPE needs the 256 byte symbols plus the special tokens before it
# can learn a single merge.
_MIN_BPE_VOCAB = 256 + len(BPE_SPECIAL_TOKENS)
_MIN_WORDPIECE_VOCAB = 64


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    kind: TokenizerKind = "bpe",
    model_max_length: int = 2048,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts`` and return it as a ``transformers`` fast tokenizer.

    Args:
        texts: the training documents (any iterable of strings; it is read once).
        vocab_size: the target vocabulary size including the special tokens. The
            result can be smaller when the texts are too small to learn that many
            merges.
        kind: ``"bpe"`` (byte-level BPE, causal LMs) or ``"wordpiece"`` (BERT-like
            encoders).
        model_max_length: recorded on the tokenizer as its maximum sequence length.

    Returns:
        A ``PreTrainedTokenizerFast`` with its special tokens set (pad included).

    Raises:
        ValueError: for an unknown ``kind``, a too small ``vocab_size`` or no text.
    """
    docs: Sequence[str] = [t for t in texts if t]
    if not docs:
        raise ValueError("train_tokenizer needs at least one non-empty text.")
    if kind == "bpe":
        if vocab_size < _MIN_BPE_VOCAB:
            raise ValueError(f"vocab_size for a byte-level BPE tokenizer must be at least {_MIN_BPE_VOCAB}.")
        backend = _train_bpe(docs, vocab_size)
        specials = BPE_SPECIAL_TOKENS
    elif kind == "wordpiece":
        if vocab_size < _MIN_WORDPIECE_VOCAB:
            raise ValueError(f"vocab_size for a WordPiece tokenizer must be at least {_MIN_WORDPIECE_VOCAB}.")
        backend = _train_wordpiece(docs, vocab_size)
        specials = WORDPIECE_SPECIAL_TOKENS
    else:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; use 'bpe' or 'wordpiece'.")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=model_max_length,
        padding_side="right",
        **specials,
    )
    return tokenizer


def _train_bpe(docs: Sequence[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE: every byte is in the alphabet, so nothing is ever unknown."""
    tok = Tokenizer(models.BPE(unk_token=BPE_SPECIAL_TOKENS["unk_token"], byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets covering the leading space of a word.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(BPE_SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def _train_wordpiece(docs: Sequence[str], vocab_size: int) -> Tokenizer:
    """BERT-style uncased WordPiece with ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` templates."""
    unk = WORDPIECE_SPECIAL_TOKENS["unk_token"]
    tok = Tokenizer(models.WordPiece(unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    special = list(WORDPIECE_SPECIAL_TOKENS.values())
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    # The WordPiece trainer learns the same token set on every run, but numbers
    # the single-character continuation pieces ("##a", ...) in hash-map order,
    # which changes from process to process. Renumber canonically so the same
    # texts always give the same ids: specials first, then by length and text.
    learned = tok.get_vocab()
    rest = sorted((t for t in learned if t not in special), key=lambda t: (len(t.removeprefix("##")), t))
    vocab = {t: i for i, t in enumerate(special + rest)}
    tok.model = models.WordPiece(vocab=vocab, unk_token=unk, max_input_chars_per_word=100)
    cls_id = tok.token_to_id(WORDPIECE_SPECIAL_TOKENS["cls_token"])
    sep_id = tok.token_to_id(WORDPIECE_SPECIAL_TOKENS["sep_token"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok
