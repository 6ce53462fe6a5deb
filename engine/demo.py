"""The built-in demo: a small Llama-style model trained by this project on text
that ships with Python itself (the standard library's pydoc topics).

``python -m engine.demo train`` rebuilds ``resources/demo-model`` from scratch
(tokenizer, model, card); ``demo_data()`` writes the corpus to a cache folder at
run time (it is read from the Python installation, never copied into the repo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Tuple

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL_DIR = REPO_ROOT / "resources" / "demo-model"

# The demo shows the point of the studio: this scheme loses visibly under PTQ
# and QAD recovers most of it.
DEMO_SCHEME = "W2A16-INT2"
DEMO_SEQ_LEN = 128

MODEL_CONFIG = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
                    rms_norm_eps=1e-5)
VOCAB = 2048
EVAL_EVERY_NTH = 10  # every 10th pydoc topic is held out for evaluation


def cache_dir() -> Path:
    root = os.environ.get("LOWBIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lowbit-studio")
    return Path(root)


def split_corpus() -> Tuple[list, list]:
    from .io.corpus import python_docs_corpus

    texts = python_docs_corpus()
    train = [t for i, t in enumerate(texts) if i % EVAL_EVERY_NTH != EVAL_EVERY_NTH - 1]
    evals = [t for i, t in enumerate(texts) if i % EVAL_EVERY_NTH == EVAL_EVERY_NTH - 1]
    return train, evals


def demo_data() -> Tuple[Path, Path]:
    """(train.txt, eval.txt) of the demo corpus, written once into the cache folder."""
    folder = cache_dir() / "demo-data"
    train_path, eval_path = folder / "python-docs-train.txt", folder / "python-docs-eval.txt"
    if not (train_path.exists() and eval_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        train, evals = split_corpus()
        for path, texts in ((train_path, train), (eval_path, evals)):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("\n\n".join(t.strip() for t in texts) + "\n", encoding="utf-8")
            os.replace(tmp, path)
    return train_path, eval_path


def resolve_model_path(path):
    """``demo`` names the built-in demo model; anything else is returned as is."""
    return DEMO_MODEL_DIR if str(path).strip().lower() == "demo" else path


def resolve_data_paths(recipe) -> Tuple[Optional[str], Optional[str]]:
    """(data.path, data.eval_path), with the demo corpus filled in for the demo model without data."""
    d = recipe.data
    if d.path is None and str(recipe.model.path).strip().lower() == "demo":
        train, evals = demo_data()
        return str(train), d.eval_path or str(evals)
    return d.path, d.eval_path


def demo_available() -> bool:
    return (DEMO_MODEL_DIR / "config.json").exists()


def demo_recipe_dict(mode: str = "qad") -> dict:
    return {
        "model": {"path": "demo"},
        "data": {"seq_len": DEMO_SEQ_LEN, "batch_size": 8,
                 "calib_batches": 8, "eval_batches": 16},
        "quant": {"scheme": DEMO_SCHEME},
        "mode": mode,
        "train": {"steps": 120, "lr": 5e-4, "warmup_steps": 10, "eval_every": 40, "checkpoint_every": 0},
        "device": "auto",
    }


def train_demo_model(out_dir: Path, steps: int = 1200, batch_size: int = 16, seq_len: int = DEMO_SEQ_LEN,
                     lr: float = 3e-3, seed: int = 0, log=print) -> dict:
    """Train the demo model from scratch and save it (float16 safetensors, tokenizer, card)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .io.data import tokenize_blocks
    from .io.tokenizer import train_tokenizer
    from .train.loop import BlockStream, TrainSettings, lr_factor

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
