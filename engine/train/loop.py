"""One training loop for QAT and QAD; the two differ only in their loss.

- QAT: the task loss (next-token cross-entropy) of the fake-quantized student.
- QAD: distillation from the original model, frozen in full precision:
  KL(teacher || student) of the temperature-softened next-token distributions,
  scaled by T^2, mixed with the task loss by ``kd_alpha`` and optionally with the
  MSE of the hidden states. Encoders (no LM head) distill their hidden states.

Determinism: the order of training blocks is a function of (seed, position)
only, and a checkpoint holds the student, quantizer scales, optimizer,
scheduler, RNG states and the step, so a resumed run reaches the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LowbitError, out_of_memory_error
from ..memory import give_back_free_memory
from ..events import CancelToken, Metric, Progress, Sink
from ..fsutil import fsync_tree, write_text_atomic
from ..quant.select import restore_amax
from ..parallel import Dist
from ..parallel.checkpoint import is_sharded_checkpoint, load_checkpoint as load_sharded_checkpoint
from ..parallel.checkpoint import save_checkpoint as save_sharded_checkpoint
from ..statefile import DEFAULT_SHARD_MB, cpu_state_dict, load_state, save_state_sharded
from ..io.batch import model_inputs, token_mask
from .losses import LossComposer, set_student_mode, student_randomness
from .precision import MasterWeights
from .vocab_loss import HeadOutput, forward_without_logits


@dataclass
class TrainSettings:
    mode: str  # "qat" | "qad"
    steps: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "cosine"
    batch_size: int = 4
    grad_accum: int = 1
    grad_clip: float = 1.0
    eval_every: int = 50
    checkpoint_every: int = 100
    kd_temperature: float = 1.0
    kd_alpha: float = 1.0
    kd_hidden_weight: float = 0.0
    gradient_checkpointing: bool = False
    early_stop_perplexity: Optional[float] = None
    seed: int = 0
    # issue 13: the full QAD loss and distillation semantics (engine/train/losses.py)
    kd_alpha_final: Optional[float] = None  # anneal kd_alpha to this over the run; None = constant
    kd_anneal: str = "linear"
    kd_hidden_layers: tuple = ()  # blocks aligned by the hidden loss, from 1; () = all
    scale_penalty: float = 0.0  # weight of the penalty on learned scales growing above calibration
    dropout: str = "auto"  # train-only randomness of the student: auto (off in QAD and QAT), on, off
    early_stop_patience: int = 0  # stop after this many evaluations worse than PTQ; 0 = off
    kd_embedding_weight: float = 0.0  # encoders: weight of 1 - cos of the mean-pooled sentence embeddings
    # issue 16: a bf16 / fp16 student's optimizer updates fp32 master copies (engine/train/precision.py)
    master_weights: bool = True
    # causal LMs in one process: the vocabulary loss a chunk of tokens at a time (engine.train.vocab_loss)
    chunked_vocab_loss: bool = True
    # checkpoints' student.safetensors is written in shards of at most this many MB (engine.statefile)
    checkpoint_shard_mb: float = DEFAULT_SHARD_MB


def lr_factor(step: int, s: TrainSettings) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): linear warmup, then the schedule."""
    if s.warmup_steps and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return 1.0
    span = max(1, s.steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    if s.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class BlockStream:
    """Training batches in an order that depends only on (seed, position).

    Each epoch is a seeded permutation of the blocks; micro-batch i takes the
    blocks at stream positions i*B .. i*B+B-1.
    """

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int):
        if blocks.shape[0] == 0:
            raise LowbitError("there are no training blocks: give more text or a shorter sequence length")
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self._perms: Dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        p = self._perms.get(epoch)
        if p is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            p = torch.randperm(self.blocks.shape[0], generator=g)
            self._perms = {epoch: p}
        return p

    def batch(self, index: int) -> torch.Tensor:
        n = self.blocks.shape[0]
        rows = []
        for pos in range(index * self.batch_size, (index + 1) * self.batch_size):
            rows.append(self._perm(pos // n)[pos % n])
        return self.blocks[torch.stack(rows)]


class _Outputs:
    """A model output's tensors moved to another device (the teacher may live elsewhere)."""

    def __init__(self, out, device):
        for name in ("logits", "last_hidden_state"):
            value = getattr(out, name, None)
            setattr(self, name, value.to(device) if value is not None else None)
        hidden = getattr(out, "hidden_states", None)
        self.hidden_states = tuple(h.to(device) for h in hidden) if hidden is not None else None


def _on_device(out, device):
    if isinstance(out, HeadOutput):  # the teacher's head stays where it is (engine.train.vocab_loss)
        return out.to(device)
    return _Outputs(out, device)


def _snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A CPU copy of the model's state that later training does not change (cpu_state_dict of a CPU model
    shares its storage)."""
    return {k: v.clone() for k, v in cpu_state_dict(model).items()}


class Trainer:
    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], kind: str, blocks: torch.Tensor,
                 settings: TrainSettings, device: torch.device, sink: Sink, cancel: CancelToken,
                 checkpoint_dir: Optional[Path] = None,
                 evaluate: Optional[Callable[[int], Dict[str, float]]] = None, dist=None,
                 ptq: Optional[Dict[str, float]] = None):
        self.student, self.teacher, self.kind = student, teacher, kind
        # engine.parallel.Dist: rows of each global batch per rank, losses averaged over ranks,
        # DCP checkpoints under torchrun; a single process is the world of size 1 (Dist.single()).
        self.dist = dist if dist is not None else Dist.single()
        self.s, self.device, self.sink, self.cancel = settings, device, sink, cancel
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.evaluate = evaluate
        self.stream = BlockStream(blocks, settings.batch_size, settings.seed)
        if settings.mode == "qad" and teacher is None:
            raise LowbitError("QAD needs the original model as teacher")
        if kind != "causal-lm" and settings.mode == "qat":
            raise LowbitError("QAT needs a task loss, and this encoder has no task head; choose QAD, which "
                              "distills the original model's hidden states")
        params = [p for p in student.parameters() if p.requires_grad]
        if not params:
            raise LowbitError("the model has no trainable parameters")
        # a bf16 / fp16 student: AdamW updates fp32 master copies (engine.train.precision); sharded
        # (distributed) students keep their own parameters, which the DCP checkpoints address
        self.master = MasterWeights(params, enabled=settings.master_weights and not self.dist.active)
        self.optimizer = torch.optim.AdamW(self.master.optim_params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, settings))
        self.step = 0
        self.history: List[Dict[str, float]] = []
        self.evals: List[Dict[str, float]] = []
        self.autocast = device.type == "cuda"
        if settings.gradient_checkpointing and hasattr(student, "gradient_checkpointing_enable"):
            student.gradient_checkpointing_enable()
        self.losses = LossComposer(settings, kind, student)
        self.randomness = student_randomness(settings.dropout, settings.mode)
        self.ptq = dict(ptq or {})  # the PTQ metrics: the early stop's yardstick
        self._worse_evals = 0
        self._best = None  # (score, CPU state) of the best evaluation, kept when early stop is on

    # -- loss ----------------------------------------------------------------------
    def loss(self, batch) -> tuple:
        """(total, parts) of one micro-batch: a packed [B, T] id tensor or a padded Samples batch.

        The terms and their weights are engine.train.losses.LossComposer's; padded positions
        never count."""
        inputs = model_inputs(batch, self.device)
        mask = token_mask(inputs)
        need_hidden = self.losses.needs_hidden_states
        # causal LMs: the final hidden states and the head, which the chunked vocabulary loss applies
        # a chunk of tokens at a time (engine.train.vocab_loss), instead of all logits at once
        chunked = self.kind == "causal-lm" and self.s.chunked_vocab_loss and not self.dist.active
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = forward_without_logits(self.student, inputs, need_hidden) if chunked else None
            if out is None:
                out = self.student(**inputs, output_hidden_states=need_hidden)
        teacher_out = None
        if self.s.mode == "qad":
            with torch.no_grad():
                t_dev = next(self.teacher.parameters()).device
                t_inputs = {k: v.to(t_dev) for k, v in inputs.items()}
                raw = forward_without_logits(self.teacher, t_inputs, need_hidden) if chunked else None
                if raw is None:
                    raw = self.teacher(**t_inputs, output_hidden_states=need_hidden)
            teacher_out = _on_device(raw, self.device)
        return self.losses(self.step, inputs, out, teacher_out, mask)

    # -- one optimiser step --------------------------------------------------------
    def train_step(self) -> Dict[str, float]:
        s = self.s
        set_student_mode(self.student, self.randomness)
        self.optimizer.zero_grad(set_to_none=True)
        self.master.zero_grad()
        sums: Dict[str, float] = {}
        for a in range(s.grad_accum):
            ids = self.stream.batch(self.step * s.grad_accum + a)
            ids = self.dist.shard_rows(ids)
            ids = ids.to(self.device)
            try:
                total, parts = self.loss(ids)
                self.dist.check_finite(total, self.step + 1)
                (total / s.grad_accum).backward()
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)  # give the gradients' memory back first
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise out_of_memory_error(f"at training step {self.step + 1} ({s.mode.upper()}, a micro-batch "
                                          f"of {ids.shape[0]} x {ids.shape[1]} tokens)") from None
            sums["loss"] = sums.get("loss", 0.0) + total.item() / s.grad_accum
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.item() / s.grad_accum
        sums = self.dist.mean_over_ranks(sums)  # the mean of the ranks' means: the global batch's mean
        self.master.grads_to_master()
        if s.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.master.optim_params if p.grad is not None], s.grad_clip)
            sums["grad_norm"] = float(norm)
        sums["lr"] = self.optimizer.param_groups[0]["lr"]
        if s.mode == "qad" and s.kd_alpha_final is not None:
            sums["kd_alpha"] = self.losses.alpha(self.step)  # the annealed weight, a curve of its own
        self.optimizer.step()
        self.master.master_to_model()
        self.scheduler.step()
        self.step += 1
        return sums

    # -- loop ----------------------------------------------------------------------
    def fit(self) -> Dict[str, object]:
        s = self.s
        tokens_per_step = s.batch_size * s.grad_accum * self.stream.blocks.shape[1]
        start_step, t_start = self.step, time.monotonic()
        stopped_early = False
        name, higher = self.headline()
        if s.early_stop_patience and self.ptq.get(name) is not None and self._best is None and not self.dist.active:
            self._best = (self.ptq[name] if higher else -self.ptq[name], self.step, _snapshot(self.student))
        while self.step < s.steps:
            self.cancel.check()
            t0 = time.monotonic()
            row = self.train_step()
            dt = time.monotonic() - t0
            row["tokens_per_s"] = tokens_per_step / max(dt, 1e-9)
            row["step"] = self.step
            self.history.append(row)
            for k, v in row.items():
                if k != "step":
                    self.sink(Metric("train", k, v, self.step))
            done = self.step - start_step
            eta = (time.monotonic() - t_start) / done * (s.steps - self.step)
            self.sink(Progress("train", self.step, s.steps, eta, f"loss {row['loss']:.4f}"))
            if self.evaluate and s.eval_every and self.step % s.eval_every == 0 and self.step < s.steps:
                if self._run_eval():
                    stopped_early = True
                    break
            if self.checkpoint_dir and s.checkpoint_every and self.step % s.checkpoint_every == 0:
                self.save_checkpoint()
        if self.checkpoint_dir and s.checkpoint_every:
            self.save_checkpoint()
        seconds = time.monotonic() - t_start
        summary_note = {"early_stop": self.early_stop_note} if getattr(self, "early_stop_note", None) else {}
        return {**summary_note, "steps": self.step, "seconds": round(seconds, 3), "stopped_early": stopped_early,
                "tokens_per_s": tokens_per_step * (self.step - start_step) / max(seconds, 1e-9)}

    def release(self) -> None:
        """Free the optimizer's moments, the fp32 master weights and the gradients once training is
        over: the final evaluation needs none of them (the memory plan counts on this)."""
        self.optimizer.state.clear()
        for group in self.optimizer.param_groups:
            group["params"] = []
        self.master = MasterWeights([])
        for p in self.student.parameters():
            p.grad = None
        give_back_free_memory()

    def _run_eval(self) -> bool:
        metrics = self.evaluate(self.step)
        self.evals.append({"step": self.step, **metrics})
        for k, v in metrics.items():
            self.sink(Metric("eval", k, v, self.step))
        target = self.s.early_stop_perplexity
        if target is not None and metrics.get("perplexity", math.inf) <= target:
            return True
        return self._diverged(metrics)

    # -- early stop when the student gets worse than PTQ ------------------------------
    def headline(self) -> tuple:
        """(metric name, higher is better) that decides 'better' and 'worse' for this model kind."""
        return ("perplexity", False) if self.kind == "causal-lm" else ("embedding_cosine", True)

    def _diverged(self, metrics: Dict[str, float]) -> bool:
        """Count evaluations worse than PTQ (eval metric, or the recent training loss above the
        first step's); after ``early_stop_patience`` in a row, restore the best state and stop."""
        patience = self.s.early_stop_patience
        if not patience:
            return False
        name, higher = self.headline()
        value, ptq = metrics.get(name), self.ptq.get(name)
        worse = False
        if value is not None and ptq is not None:
            worse = value < ptq if higher else value > ptq
        recent = [r["loss"] for r in self.history[-max(1, self.s.eval_every):]]
        if self.history and recent and sum(recent) / len(recent) > self.history[0]["loss"]:
            worse = True
        if value is not None and not self.dist.active:
            score = value if higher else -value
            if self._best is None or score > self._best[0]:
                self._best = (score, self.step, _snapshot(self.student))
        self._worse_evals = self._worse_evals + 1 if worse else 0
        if self._worse_evals < patience:
            return False
        note = f"the student did worse than PTQ in {self._worse_evals} evaluations in a row; stopped at step {self.step}"
        if self._best is not None and self._best[1] != self.step:
            self.student.load_state_dict(self._best[2], strict=False)
            note += f" and restored the weights of step {self._best[1]}"
        self.early_stop_note = note
        self.sink(Metric("train", "early_stop", float(self.step), self.step))
        return True

    # -- checkpoints ---------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write checkpoints/step-N atomically (temporary folder, then rename); keep the last two."""
        if self.dist.active:  # several processes: one sharded (DCP) checkpoint
            return save_sharded_checkpoint(self, self.dist)
        root = self.checkpoint_dir
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{self.step:06d}"
        if final.exists():
            return final
        tmp = root / f".tmp-step-{self.step:06d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            # shard by shard straight from the model: one shard beside it, never a second full copy
            save_state_sharded(self.student.state_dict().items(), tmp / "student.safetensors",
                               self.s.checkpoint_shard_mb)
            torch.save({
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "master_weights": self.master.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "history": self.history,
                "evals": self.evals,
            }, tmp / "trainer.pt")
            fsync_tree(tmp)
            os.replace(tmp, final)
        except (OSError, RuntimeError) as exc:  # disk full, read-only folder (torch.save raises RuntimeError)
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
            previous = latest_checkpoint(root)
            kept = (f"the previous checkpoint {previous.name} is intact, so the run can resume from it"
                    if previous is not None else "no earlier checkpoint exists")
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
            raise LowbitError(f"could not write checkpoint {final.name} in {root}: {reason}; {kept}. Free disk "
                              "space or make the folder writable, then resume the run (--resume).") from exc
        write_text_atomic(root / "latest", final.name)
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):  # left by a process killed while writing a checkpoint
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path) -> None:
        path = Path(path)
        if self.dist.active or is_sharded_checkpoint(path):  # any world size -> this one
            return load_sharded_checkpoint(self, path, self.dist)
        try:
            weights = load_state(path / "student.safetensors")  # one file, or shards with an index
            state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LowbitError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                              "delete it to resume from the one before") from None
        restore_amax(self.student, weights)
        missing, unexpected = self.student.load_state_dict(weights, strict=False)
        missing = [m for m in missing if not m.endswith("lm_head.weight")]
        if missing or unexpected:
            raise LowbitError(f"checkpoint {path} does not match this model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); was the recipe changed since?")
        self.optimizer.load_state_dict(state["optimizer"])
        self.master.load_state_dict(state.get("master_weights"))
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.evals = list(state.get("evals", []))


def latest_checkpoint(root: Path) -> Optional[Path]:
    root = Path(root)
    marker = root / "latest"
    if marker.exists():
        p = root / marker.read_text().strip()
        if p.is_dir():
            return p
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    return steps[-1] if steps else None
