"""The built-in demo: a small Llama-style model trained by this project on text
that ships with Python itself (the standard library's pydoc topics).

``python -m engine.demo train`` rebuilds ``resources/demo-model`` from scratch
(tokenizer, model, card). Where the demo's files live, its corpus and its recipe are
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
from .io.demo import DEMO_MODEL_DIR, DEMO_SCHEME, DEMO_SEQ_LEN, EVAL_EVERY_NTH, MODEL_CONFIG, VOCAB, split_corpus
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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")
    model.eval()
    with torch.no_grad():
        nll = [model(input_ids=eval_blocks[i:i + 8], labels=eval_blocks[i:i + 8]).loss.item()
               for i in range(0, eval_blocks.shape[0], 8)]
    ppl = math.exp(sum(nll) / len(nll))
    log(f"eval perplexity {ppl:.2f}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    stats = {"parameters": n_params, "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr,
             "seed": seed, "eval_perplexity": round(ppl, 3), "train_blocks": int(blocks.shape[0]),
             "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    (tmp / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    (tmp / "README.md").write_text(_card(stats))
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.demo")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the demo model from scratch")
    t.add_argument("--out", default=str(DEMO_MODEL_DIR))
    t.add_argument("--steps", type=int, default=1200)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    train_demo_model(Path(args.out), args.steps, args.batch_size, lr=args.lr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
