"""Step time of QAT and QAD next to plain fine-tuning of the same model, in one run.

Each configuration trains the same model (a fresh copy) on the same batches;
the first steps warm up (allocation, compilation) and are not timed. Timed steps
alternate with steps of the plain fine-tuning trainer (plain, configuration, plain,
...), so a change in the machine's load hits both sides of a ratio alike: each ratio
is the configuration's median step time over the median of the plain steps taken
between its own. Two trainers (and a QAD teacher) are alive at a time.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import calib
from ..events import CancelToken
from ..quant import schemes
from ..quant.select import apply_plan, plan_layers
from ..train import frozen_original
from ..train.loop import Trainer, TrainSettings


def _bench_model(hidden: int = 256, layers: int = 4, vocab: int = 2048):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 64), max_position_embeddings=1024)
    return LlamaForCausalLM(cfg)


def _timed_step(trainer: Trainer, sync) -> float:
    t0 = time.perf_counter()
    trainer.train_step()
    sync()
    return time.perf_counter() - t0


def _time_interleaved(plain: Trainer, other: Trainer, warmup: int, steps: int, sync) -> tuple:
    """(plain step times, other's step times), the timed steps taken in turns."""
    for _ in range(warmup):
        _timed_step(other, sync)
    plain_times, times = [], []
    for _ in range(steps):
        plain_times.append(_timed_step(plain, sync))
        times.append(_timed_step(other, sync))
    return plain_times, times


# issue 16's step-time goals over plain fine-tuning: QAD (teacher + student), QAT with
# quantized activations, QAT with weights alone
GOALS = {"qad": 1.6, "qat_activations": 1.2, "qat_weights": 1.1}


def goal_for(mode: str, scheme: str) -> float:
    """The step-time ratio a configuration should stay within."""
    if mode == "qad":
        return GOALS["qad"]
    return GOALS["qat_activations"] if schemes.get(scheme).activation else GOALS["qat_weights"]


def bench_train(model=None, scheme_names: Sequence[str] = ("W4A16-INT4", "W4A16-NVFP4", "W4A4-NVFP4"),
                device: str = "cpu", batch_size: int = 8, seq_len: int = 128, steps: int = 8, warmup: int = 6,
                on_result: Optional[Callable[[Dict], None]] = None) -> List[Dict]:
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    base = (model if model is not None else _bench_model()).to(dev).float()
    vocab = base.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, vocab, (batch_size * (warmup + steps) * 2, seq_len), generator=gen)

    def trainer(mode, scheme):
        student = copy.deepcopy(base)
        teacher = None
        if scheme is not None:
            apply_plan(student, plan_layers(student, schemes.get(scheme))[0])
            calib.calibrate(student, lambda m: m(input_ids=blocks[:batch_size].to(dev)))
            teacher = frozen_original(student) if mode == "qad" else None
        s = TrainSettings(mode=mode, steps=10 ** 6, lr=1e-5, warmup_steps=0, batch_size=batch_size,
                          eval_every=0, checkpoint_every=0)
        return Trainer(student, teacher, "causal-lm", blocks, s, dev, lambda e: None, CancelToken())

    plain_trainer = trainer("qat", None)
    plain_times = [_timed_step(plain_trainer, sync) for _ in range(warmup + steps)][warmup:]
    row = {"config": "plain fine-tuning", "mode": "finetune", "scheme": None,
           "step_ms": round(statistics.median(plain_times) * 1e3, 2), "ratio": 1.0}
    rows: List[Dict] = [row]
    if on_result:
        on_result(row)
    for scheme in scheme_names:
        for mode in ("qat", "qad"):
            beside, times = _time_interleaved(plain_trainer, trainer(mode, scheme), warmup, steps, sync)
            plain_times += beside
            t, plain = statistics.median(times), statistics.median(beside)
            goal = goal_for(mode, scheme)
            row = {"config": f"{mode.upper()} {scheme}", "mode": mode, "scheme": scheme,
                   "step_ms": round(t * 1e3, 2), "ratio": round(t / plain, 3),
                   "plain_step_ms": round(plain * 1e3, 2), "goal": goal, "holds": bool(t / plain <= goal)}
            rows.append(row)
            if on_result:
                on_result(row)
    rows[0]["step_ms"] = round(statistics.median(plain_times) * 1e3, 2)  # over every plain step taken
    return rows
