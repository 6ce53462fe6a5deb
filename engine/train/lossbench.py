"""Peak memory and time of the vocabulary losses, chunked against the unchunked formulas.

Each variant runs in a fresh process (``python -m engine.train.lossbench --one VARIANT``)
so one does not inherit another's allocator state: the student's final hidden states
and LM head and the teacher's are built first, then the high-water mark is reset and the
forward + backward of CE + KD is measured (resident set on CPU, the allocator's peak on CUDA).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from .. import memory
from .vocab_loss import Teacher, shifted_targets, vocab_losses

VARIANTS = ("unchunked", "chunked")


def _unchunked(h, w, th, tw, ids, temperature):
    z = F.linear(h, w)
    with torch.no_grad():
        zt = F.linear(th, tw)
    batch, length = ids.shape
    ce = F.cross_entropy(z.reshape(batch, length, -1)[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    s = F.log_softmax(z.float() / temperature, -1)
    p = F.log_softmax(zt.float() / temperature, -1)
    kd = F.kl_div(s, p, log_target=True, reduction="batchmean") * temperature ** 2
    return ce, kd


def measure_one(variant: str, tokens: int, vocab: int, hidden: int, device: str, dtype: str,
                batch: int = 4, temperature: float = 1.0) -> Dict:
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    length = tokens // batch
    h = torch.randn(batch * length, hidden, generator=g).to(dev, dt).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).to(dev, dt).requires_grad_(True)
    th = (h.detach() + 0.1).contiguous()
    tw = (w.detach() * 1.01).contiguous()
    ids = torch.randint(0, vocab, (batch, length), generator=g).to(dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        memory.peak_rss_reset()
        base = memory.rss()
    t0 = time.perf_counter()
    if variant == "unchunked":
        ce, kd = _unchunked(h, w, th, tw, ids, temperature)
    else:
        ce, kd = vocab_losses(h, w, targets=shifted_targets(ids), teacher=Teacher(hidden=th, weight=tw),
                              temperature=temperature)
    (0.5 * ce + 0.5 * kd).backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = memory.peak_rss()
    seconds = time.perf_counter() - t0
    # the gradients of h and w are the result, not the loss's working memory
    kept = h.grad.numel() * h.grad.element_size() + w.grad.numel() * w.grad.element_size()
    return {"variant": variant, "tokens": batch * length, "vocab": vocab, "hidden": hidden, "device": device,
            "dtype": dtype, "loss_peak_bytes": int(peak - base), "grads_bytes": int(kept),
            "working_bytes": int(peak - base - kept), "seconds": round(seconds, 3),
            "ce": float(ce), "kd": float(kd)}


def run(tokens: int = 2048, vocab: int = 151_936, hidden: int = 896, device: str = "cpu", dtype: str = "float32",
        variants=VARIANTS) -> List[Dict]:
    rows = []
    for v in variants:
        cmd = [sys.executable, "-m", "engine.train.lossbench", "--one", v, "--tokens", str(tokens),
               "--vocab", str(vocab), "--hidden", str(hidden), "--device", device, "--dtype", dtype]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"loss benchmark {v} failed: {out.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def report(rows: List[Dict]) -> str:
    lines = [f"vocabulary loss (CE + KD, forward + backward): {rows[0]['tokens']} tokens, vocabulary "
             f"{rows[0]['vocab']}, hidden {rows[0]['hidden']}, {rows[0]['dtype']} on {rows[0]['device']}"]
    for r in rows:
        lines.append(f"  {r['variant']:10s} peak {memory.fmt_bytes(r['loss_peak_bytes']):>10s} "
                     f"(of which gradients of h and W {memory.fmt_bytes(r['grads_bytes'])}, working "
                     f"{memory.fmt_bytes(r['working_bytes'])})  {r['seconds']:.2f} s  loss CE {r['ce']:.6f} KD {r['kd']:.6f}")
    by = {r["variant"]: r for r in rows}
    if "chunked" in by and "unchunked" in by:
        ratio = by["chunked"]["loss_peak_bytes"] / max(1, by["unchunked"]["loss_peak_bytes"])
        lines.append(f"  chunked / unchunked peak: {ratio:.3f} (goal at most 0.25): "
                     f"{'holds' if ratio <= 0.25 else 'MISSED'}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", choices=VARIANTS)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(measure_one(a.one, a.tokens, a.vocab, a.hidden, a.device, a.dtype)))
        return 0
    rows = run(a.tokens, a.vocab, a.hidden, a.device, a.dtype)
    print(json.dumps(rows, indent=2) if a.json else report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
