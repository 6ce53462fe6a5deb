"""Issue 13: the sentence data path (special tokens, padding, masks), BOS at document starts,
masked losses and metrics, the new recipe keys. Real tokenizers and tiny real models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from tokenizers import processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from engine.analysis.embedding import EmbeddingStats, mean_pool
from engine.analysis.metrics import evaluate
from engine.errors import DataError, RecipeError
from engine.io.batch import Samples, model_inputs, token_mask
from engine.io.data import document_prefix, make_splits, tokenize_blocks
from engine.io.samples import encode_samples, load_samples, make_sample_splits
from engine.recipe import Recipe
from engine.train.losses import hidden_alignment, hidden_mse, kd_alpha_at, set_student_mode

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A class may define a method.",
             "Functions return values to their caller when they finish running their body of code."]


def tiny_bert(tok, dropout=0.1):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(cfg).eval()


def test_one_sample_per_line_with_special_tokens_and_per_batch_padding(wordpiece_tokenizer, tmp_path: Path):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(SENTENCES[:2]) + "\n\n  \n" + SENTENCES[2] + "\n")
    texts = load_samples(path)
    assert texts == SENTENCES
    s = encode_samples(wordpiece_tokenizer, texts, 64)
    tok = wordpiece_tokenizer
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    assert s.lengths().tolist() == lengths and s.shape == (3, max(lengths))
    for i, n in enumerate(lengths):
        row = s.input_ids[i].tolist()
        assert row[0] == tok.cls_token_id and row[n - 1] == tok.sep_token_id
        assert row[n:] == [tok.pad_token_id] * (s.shape[1] - n)
        assert s.attention_mask[i].tolist() == [1] * n + [0] * (s.shape[1] - n)
    # a batch is padded only to its own longest row
    b = s[1:2]
    assert b.shape[1] == lengths[1] < s.shape[1]
    assert s.numel() == sum(lengths)
    # truncation keeps [SEP] at the end
    short = encode_samples(tok, [SENTENCES[2]], 6)
    assert short.shape == (1, 6) and short.input_ids[0, -1] == tok.sep_token_id


def test_jsonl_records_are_samples_even_with_line_breaks(wordpiece_tokenizer, tmp_path: Path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"text": "first line\nsecond line"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    assert load_samples(path) == ["first line\nsecond line", "two"]


def test_sample_errors_are_clear(wordpiece_tokenizer, tmp_path: Path):
    with pytest.raises(DataError, match="no non-blank lines"):
        encode_samples(wordpiece_tokenizer, [], 32)
    with pytest.raises(DataError, match="seq_len=2 leaves no room"):
        encode_samples(wordpiece_tokenizer, ["hello"], 2)
    one = tmp_path / "one.txt"
    one.write_text("only one line here\n")
    with pytest.raises(DataError, match="only 1 sample"):
        make_sample_splits(wordpiece_tokenizer, one, 32)


def test_padding_changes_nothing_for_a_sentence(wordpiece_tokenizer):
    """The mask reaches the model, the metric and the losses: a sentence scores the same alone or padded."""
    tok = wordpiece_tokenizer
    model = tiny_bert(tok)
    quant = copy.deepcopy(model)
    with torch.no_grad():
        for p in quant.parameters():
            p.add_(0.01 * torch.randn_like(p))
    s = encode_samples(tok, SENTENCES, 64)
    short = 1  # the shortest sentence, padded in the full batch
    assert s.lengths()[short] < s.shape[1]
    alone = s[short:short + 1]
    with torch.no_grad():
        h_pad = model(**model_inputs(s)).last_hidden_state[short]
        h_alone = model(**model_inputs(alone)).last_hidden_state[0]
    n = int(alone.shape[1])
    torch.testing.assert_close(h_pad[:n], h_alone, atol=1e-5, rtol=1e-5)
    both, single = EmbeddingStats(), EmbeddingStats()
    with torch.no_grad():
        i_all, i_one = model_inputs(s), model_inputs(alone)
        both.add(None, model(**i_all).last_hidden_state[short:short + 1],
                 quant(**i_all).last_hidden_state[short:short + 1], i_all["attention_mask"][short:short + 1])
        single.add(None, model(**i_one).last_hidden_state, quant(**i_one).last_hidden_state, i_one["attention_mask"])
    a, b = both.quantized(), single.quantized()
    assert a["tokens"] == b["tokens"] == n
    for k in ("embedding_cosine", "cls_embedding_cosine", "cosine", "mse"):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    # a masked loss over the padded batch weighs only real tokens
    with torch.no_grad():
        hp, hq = model(**i_all).last_hidden_state, quant(**i_all).last_hidden_state
    mask = token_mask(i_all)
    manual = sum(((hp[i, :L] - hq[i, :L]) ** 2).mean(-1).sum() for i, L in enumerate(s.lengths().tolist()))
    assert float(hidden_mse(hq, hp, mask)) == pytest.approx(float(manual / s.numel()), rel=1e-5)
    # mean pooling ignores padded positions
    pooled = mean_pool(hp, mask)
    torch.testing.assert_close(pooled[short], hp[short, :n].mean(0))


def test_evaluate_on_padded_sentences_uses_the_mask(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    model, quant = tiny_bert(tok), tiny_bert(tok)
    with torch.no_grad():
        for p in quant.parameters():
            p.add_(0.02 * torch.randn_like(p))
    s = encode_samples(tok, SENTENCES, 64)
    res = evaluate(quant, [s], "encoder", torch.device("cpu"), reference=model)["quantized"]
    assert res["tokens"] == s.numel()
    assert 0.5 < res["embedding_cosine"] < 1.0 and 0.5 < res["cls_embedding_cosine"] < 1.0


def _bos_tokenizer(bpe_tokenizer):
    """The fixture's byte-level BPE, adding BOS like a Llama tokenizer does."""
    tok = copy.deepcopy(bpe_tokenizer)
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return tok


def test_packed_blocks_start_documents_with_bos_where_the_tokenizer_adds_it(bpe_tokenizer):
    docs = ["alpha beta gamma delta " * 10, "one two three four " * 10]
    assert document_prefix(bpe_tokenizer) == []  # this tokenizer adds no BOS: blocks as before
    tok = _bos_tokenizer(bpe_tokenizer)
    assert document_prefix(tok) == [tok.bos_token_id]
    blocks = tokenize_blocks(tok, docs, 8)
    flat = blocks.flatten().tolist()
    enc = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    expected = [tok.bos_token_id] + enc[0] + [tok.eos_token_id, tok.bos_token_id] + enc[1]
    assert flat == expected[: len(flat)]
    assert flat.count(tok.bos_token_id) == 2


def test_a_short_eval_file_is_one_padded_block_that_nothing_attends_across(bpe_tokenizer, text_file, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Just a few words of evaluation text.")
    splits = make_splits(bpe_tokenizer, text_file, 64, eval_path=short)
    ev = splits.eval
    n = len(bpe_tokenizer("Just a few words of evaluation text.", add_special_tokens=False)["input_ids"])
    assert isinstance(ev, Samples) and ev.input_ids.shape == (1, 64) and int(ev.attention_mask.sum()) == n
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(bpe_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    res = evaluate(model, [ev], "causal-lm", torch.device("cpu"), compare=False)["baseline"]
    assert res["tokens"] == n - 1  # only real next tokens are scored
    with torch.no_grad():  # the real tokens' logits are those of the unpadded text
        ids = ev.input_ids[:, :n]
        torch.testing.assert_close(model(**model_inputs(ev)).logits[:, :n], model(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)


def test_loss_weights_anneal_and_hidden_alignment_is_relative():
    assert kd_alpha_at(1.0, None, 50, 100) == 1.0
    assert kd_alpha_at(1.0, 0.5, 0, 101) == 1.0 and kd_alpha_at(1.0, 0.5, 100, 101) == pytest.approx(0.5)
    assert kd_alpha_at(1.0, 0.0, 50, 101, "linear") == pytest.approx(0.5)
    assert kd_alpha_at(1.0, 0.0, 25, 101, "cosine") > kd_alpha_at(1.0, 0.0, 25, 101, "linear")
    t = [torch.randn(2, 5, 8) * scale for scale in (1.0, 1.0, 100.0)]
    s = [x * 1.1 for x in t]
    # each layer's error is relative to its own power: a layer 100x larger weighs the same
    assert float(hidden_alignment(s, t, None, (1,))) == pytest.approx(float(hidden_alignment(s, t, None, (2,))), rel=1e-4)
    assert float(hidden_alignment(s, t, None, ())) == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ValueError, match="kd_hidden_layers names layer 5"):
        hidden_alignment(s, t, None, (5,))


def test_deterministic_student_keeps_gradient_checkpointing(wordpiece_tokenizer):
    model = tiny_bert(wordpiece_tokenizer)
    model.gradient_checkpointing_enable()
    set_student_mode(model, False)
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    assert layers and all(m.training for m in layers)
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.Dropout))
    ids = encode_samples(wordpiece_tokenizer, SENTENCES, 32)
    a = model(**model_inputs(ids)).last_hidden_state
    b = model(**model_inputs(ids)).last_hidden_state
    torch.testing.assert_close(a, b)  # no dropout noise
    set_student_mode(model, True)
    assert all(m.training for m in model.modules())


NEW_KEYS = {"data.samples": "lines", "train.lr": "auto", "train.lr_candidates": [1e-4, 1e-3],
            "train.lr_probe_steps": 5, "train.kd_alpha_final": 0.5, "train.kd_anneal": "cosine",
            "train.kd_hidden_layers": [1, -1], "train.scale_penalty": 0.1, "train.dropout": "on",
            "train.early_stop_patience": 2, "train.kd_embedding_weight": 1.5}


def test_new_recipe_keys_round_trip_through_yaml(tmp_path: Path):
    r = Recipe.from_dict({"model": {"path": "demo-encoder"}}).with_updates(NEW_KEYS)
    path = tmp_path / "r.yaml"
    r.save(path)
    back = Recipe.load(path)
    assert back == r
    assert back.train.lr == "auto" and back.train.kd_hidden_layers == (1, -1) and back.data.samples == "lines"


@pytest.mark.parametrize("key,value,message", [
    ("data.samples", "line", "did you mean 'lines'"),
    ("train.lr", "fast", "expected a number > 0 or 'auto'"),
    ("train.lr_candidates", [], "non-empty list"),
    ("train.kd_alpha_final", 1.5, "out of range"),
    ("train.kd_anneal", "exp", "one of 'linear', 'cosine'"),
    ("train.kd_hidden_layers", "all", "list of integers"),
    ("train.scale_penalty", -1, "out of range"),
    ("train.dropout", True, "one of 'auto', 'on', 'off'"),
    ("train.early_stop_patience", -2, "out of range"),
    ("train.kd_embedding_weight", "big", "expected a number >= 0"),
])
def test_new_recipe_keys_are_validated_with_a_clear_error(key, value, message):
    with pytest.raises(RecipeError, match=message) as info:
        Recipe.from_dict({"model": {"path": "x"}}).with_updates({key: value})
    assert key in str(info.value) and "\n" not in str(info.value)


def test_causal_lm_qad_loss_is_the_classic_formula_on_packed_blocks(bpe_tokenizer):
    """Packed causal-LM batches (no mask) keep the loss the demo Llama's figures were measured with:
    alpha * KL(teacher || student) * T^2 (batchmean over positions) + (1 - alpha) * next-token CE."""
    import torch.nn.functional as F

    from engine.events import CancelToken
    from engine.train.loop import Trainer, TrainSettings

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(bpe_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    teacher = LlamaForCausalLM(cfg).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, len(bpe_tokenizer), (4, 16))
    s = TrainSettings(mode="qad", steps=10, lr=1e-4, kd_alpha=0.7, kd_temperature=2.0, batch_size=4)
    trainer = Trainer(student, teacher, "causal-lm", ids, s, torch.device("cpu"), lambda e: None, CancelToken())
    total, parts = trainer.loss(ids)
    with torch.no_grad():
        zs, zt = student(input_ids=ids).logits.float(), teacher(input_ids=ids).logits.float()
    kd = F.kl_div(F.log_softmax(zs / 2, -1).flatten(0, 1), F.log_softmax(zt / 2, -1).flatten(0, 1),
                  log_target=True, reduction="batchmean") * 4
    ce = F.cross_entropy(zs[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert float(parts["kd_loss"]) == pytest.approx(float(kd), rel=1e-5)
    assert float(parts["task_loss"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(total) == pytest.approx(float(0.7 * kd + 0.3 * ce), rel=1e-5)
