"""The built-in demo: a small Llama-style model trained by this project on text
that ships with Python itself (the standard library's pydoc topics).

``python -m engine.demo train`` rebuilds ``resources/demo-model`` from scratch
(tokenizer, model, card); ``python -m engine.demo train-encoder`` rebuilds the demo
encoder ``resources/demo-encoder`` (a BERT-style masked-LM encoder, dropout 0.1). Where the demo's files live, its corpus and its recipe are
in :mod:`engine.io.demo`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from .io.data import tokenize_blocks
from .io.demo import (DEMO_ENCODER_DIR, DEMO_MODEL_DIR, DEMO_SCHEME, DEMO_SEQ_LEN, ENCODER_CONFIG,
                      ENCODER_EVAL_EVERY_NTH, ENCODER_SEQ_LEN, ENCODER_VOCAB, EVAL_EVERY_NTH, MODEL_CONFIG, VOCAB,
                      split_corpus, split_sentences)
from .io.samples import encode_samples
from .io.tokenizer import train_tokenizer
from .train.loop import BlockStream, TrainSettings, lr_factor


def train_demo_model(out_dir: Path, steps: int = 1200, batch_size: int = 16, seq_len: int = DEMO_SEQ_LEN,
                     lr: float = 3e-3, seed: int = 0, log=print) -> dict:
    """Train the demo model from scratch and save it (float16 safetensors, tokenizer, card)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    train_texts, eval_texts = split_corpus()
    tok = train_tokenizer(train_texts, vocab_size=VOCAB, kind="bpe")
    blocks = tokenize_blocks(tok, train_texts, seq_len)
    eval_blocks = tokenize_blocks(tok, eval_texts, seq_len)
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **MODEL_CONFIG)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{n_params:,} parameters, {blocks.shape[0]} training blocks of {seq_len}, {eval_blocks.shape[0]} eval blocks")
    settings = TrainSettings(mode="qat", steps=steps, lr=lr, warmup_steps=max(1, steps // 20), batch_size=batch_size,
                             weight_decay=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, settings))
    stream = BlockStream(blocks, batch_size, seed)
    t0 = time.time()
    model.train()
    for step in range(steps):
        ids = stream.batch(step)
        loss = model(input_ids=ids, labels=ids).loss
        _optimizer_step(loss, model, opt, sched)
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")
    model.eval()
    with torch.no_grad():
        nll = [model(input_ids=eval_blocks[i:i + 8], labels=eval_blocks[i:i + 8]).loss.item()
               for i in range(0, eval_blocks.shape[0], 8)]
    ppl = math.exp(sum(nll) / len(nll))
    log(f"eval perplexity {ppl:.2f}")
    stats = {"parameters": n_params, "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr,
             "seed": seed, "eval_perplexity": round(ppl, 3), "train_blocks": int(blocks.shape[0]),
             "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    return _save_demo(model, tok, Path(out_dir), stats, _card(stats))


def _optimizer_step(loss, model, opt, sched) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()


def _save_demo(model, tok, out_dir: Path, stats: dict, card: str) -> dict:
    """Write a trained demo (float16 safetensors, tokenizer, training.json, card) into a temporary
    folder beside ``out_dir``, then put it in place of the old one."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    (tmp / "README.md").write_text(card)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return stats


def _card(stats: dict) -> str:
    c = MODEL_CONFIG
    return f"""# lowbit-demo: a tiny Llama for Lowbit Studio's demo

A {stats['parameters'] / 1e6:.1f}M-parameter Llama-style causal language model
({c['num_hidden_layers']} layers, hidden {c['hidden_size']}, MLP {c['intermediate_size']},
{c['num_attention_heads']} heads, tied embeddings, byte-level BPE of {VOCAB} tokens), trained from
scratch by `python -m engine.demo train` on the pydoc topics that ship with Python
(`pydoc_data.topics`, every {EVAL_EVERY_NTH}th topic held out for evaluation).

- Training: {stats['steps']} steps of {stats['batch_size']} x {stats['seq_len']} tokens, AdamW
  (lr {stats['lr']}, weight decay 0.1, warmup + cosine), seed {stats['seed']}, on CPU
  ({stats['train_seconds']} s, torch {stats['torch']}).
- Held-out perplexity: {stats['eval_perplexity']}.
- Stored in float16 safetensors.

It is a demonstration model: it knows a little about Python's documentation and
nothing else. Its purpose is to show what quantization does: {DEMO_SCHEME} (ternary
weights) loses visibly under PTQ and recovers under QAD.
"""


def _mask_tokens(ids: torch.Tensor, attn: torch.Tensor, tok, gen: torch.Generator, p: float = 0.15):
    """BERT's masking: p of the real, non-special tokens are targets; 80% -> [MASK], 10% random, 10% kept."""
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in tok.all_special_ids:
        special |= ids == sid
    candidates = attn.bool() & ~special
    chosen = (torch.rand(ids.shape, generator=gen) < p) & candidates
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[chosen & (r < 0.8)] = tok.mask_token_id
    rand_pos = chosen & (r >= 0.8) & (r < 0.9)
    inputs[rand_pos] = torch.randint(len(tok.all_special_ids), len(tok), (int(rand_pos.sum()),), generator=gen)
    return inputs, labels


def _mlm_loss(model, inputs, attention_mask, labels) -> torch.Tensor:
    """Masked-LM cross-entropy, with the vocabulary head run on the target positions only."""
    hidden = model.bert(input_ids=inputs, attention_mask=attention_mask).last_hidden_state
    at = labels != -100
    logits = model.cls(hidden[at])
    return torch.nn.functional.cross_entropy(logits.float(), labels[at])


def train_demo_encoder(out_dir: Path = DEMO_ENCODER_DIR, steps: int = 1500, batch_size: int = 32,
                       lr: float = 1e-3, seed: int = 0, log=print) -> dict:
    """Train the demo encoder from scratch (masked LM) and save its encoder (float16 safetensors, tokenizer, card)."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    train_s, eval_s = split_sentences()
    tok = train_tokenizer(train_s, vocab_size=ENCODER_VOCAB, kind="wordpiece", model_max_length=ENCODER_CONFIG[
        "max_position_embeddings"])
    data = encode_samples(tok, train_s, ENCODER_SEQ_LEN)
    evals = encode_samples(tok, eval_s, ENCODER_SEQ_LEN)
    config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **ENCODER_CONFIG)
    model = BertForMaskedLM(config)
    n_params = sum(p.numel() for p in model.bert.parameters())
    log(f"{n_params:,} encoder parameters, {len(data)} training sentences, {len(evals)} held out")
    settings = TrainSettings(mode="qat", steps=steps, lr=lr, warmup_steps=max(1, steps // 20), batch_size=batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, settings))
    stream = BlockStream(data, batch_size, seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    model.train()
    for step in range(steps):
        b = stream.batch(step)
        inputs, labels = _mask_tokens(b.input_ids, b.attention_mask, tok, gen)
        loss = _mlm_loss(model, inputs, b.attention_mask, labels)
        _optimizer_step(loss, model, opt, sched)
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step:5d}  mlm loss {loss.item():.3f}  {time.time() - t0:.0f}s")
    model.eval()
    egen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        nll = []
        for i in range(0, len(evals), 64):
            b = evals[i:i + 64]
            inputs, labels = _mask_tokens(b.input_ids, b.attention_mask, tok, egen)
            nll.append(_mlm_loss(model, inputs, b.attention_mask, labels).item())
    ppl = math.exp(sum(nll) / len(nll))
    log(f"held-out masked-LM perplexity {ppl:.2f}")
    encoder = BertModel(config)  # with a pooler, as sentence-embedding checkpoints ship
    missing, unexpected = encoder.load_state_dict(model.bert.state_dict(), strict=False)
    assert not unexpected and all(m.startswith("pooler.") for m in missing), (missing, unexpected)
    stats = {"parameters": n_params, "steps": steps, "batch_size": batch_size, "seq_len": ENCODER_SEQ_LEN,
             "lr": lr, "seed": seed, "eval_mlm_perplexity": round(ppl, 3), "train_sentences": len(data),
             "eval_sentences": len(evals), "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    return _save_demo(encoder, tok, Path(out_dir), stats, _encoder_card(stats))


def _encoder_card(stats: dict) -> str:
    c = ENCODER_CONFIG
    return f"""# lowbit-demo-encoder: a tiny BERT-style encoder for Lowbit Studio's demo

A {stats['parameters'] / 1e6:.2f}M-parameter BERT-style encoder ({c['num_hidden_layers']} layers,
hidden {c['hidden_size']}, MLP {c['intermediate_size']}, {c['num_attention_heads']} heads, lowercase
WordPiece of {ENCODER_VOCAB} tokens, `[CLS] ... [SEP]` inputs, dropout {c['hidden_dropout_prob']} on
hidden states and attention as real BERT checkpoints ship), trained from scratch by
`python -m engine.demo train-encoder` with masked-language-model training (15% of tokens,
80/10/10 mask/random/keep) on the sentences of the pydoc topics that ship with Python
(`pydoc_data.topics`, one sentence per sample, at most {stats['seq_len']} tokens; every
{ENCODER_EVAL_EVERY_NTH}th topic held out).

- Training: {stats['steps']} steps of {stats['batch_size']} sentences, AdamW (lr {stats['lr']},
  weight decay 0.01, warm-up + cosine), seed {stats['seed']}, on CPU ({stats['train_seconds']} s,
  torch {stats['torch']}); {stats['train_sentences']} training sentences.
- Held-out masked-LM perplexity: {stats['eval_mlm_perplexity']} on {stats['eval_sentences']} sentences.
- Stored as a `BertModel` (encoder and pooler; the masked-LM head is not shipped) in float16
  safetensors. Use it like a sentence-embedding model: mean-pool the last hidden states over
  the attention mask.

It is a demonstration model and the test fixture of encoder QAD: it knows a little about
Python's documentation and nothing else.
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.demo")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the demo model from scratch")
    t.add_argument("--out", default=str(DEMO_MODEL_DIR))
    t.add_argument("--steps", type=int, default=1200)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    e = sub.add_parser("train-encoder", help="train the demo encoder (masked LM) from scratch")
    e.add_argument("--out", default=str(DEMO_ENCODER_DIR))
    e.add_argument("--steps", type=int, default=1500)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--lr", type=float, default=1e-3)
    e.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 reproduces the shipped model's float rounding order)")
    args = p.parse_args(argv)
    if args.cmd == "train-encoder":
        torch.set_num_threads(args.threads)
        train_demo_encoder(Path(args.out), args.steps, args.batch_size, lr=args.lr)
        return 0
    train_demo_model(Path(args.out), args.steps, args.batch_size, lr=args.lr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
