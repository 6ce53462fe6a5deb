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
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import LowbitError, out_of_memory_error
from ..events import CancelToken, Metric, Progress, Sink
from ..fsutil import fsync_tree, write_text_atomic
from ..quant.select import restore_amax


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


def _kd_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    t = temperature
    s = F.log_softmax(student_logits.float() / t, -1).flatten(0, -2)
    p = F.log_softmax(teacher_logits.float() / t, -1).flatten(0, -2)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)


def _hidden_mse(student_hidden, teacher_hidden) -> torch.Tensor:
    losses = [F.mse_loss(s.float(), t.float()) for s, t in zip(student_hidden, teacher_hidden)]
    return torch.stack(losses).mean()


class Trainer:
    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], kind: str, blocks: torch.Tensor,
                 settings: TrainSettings, device: torch.device, sink: Sink, cancel: CancelToken,
                 checkpoint_dir: Optional[Path] = None,
                 evaluate: Optional[Callable[[int], Dict[str, float]]] = None, dist=None):
        self.student, self.teacher, self.kind = student, teacher, kind
        # [distributed] engine.distributed.Dist under torchrun: rows of each global batch per rank,
        # losses averaged over ranks, DCP checkpoints. None (or inactive) = the single-process loop.
        self.dist = dist if dist is not None and getattr(dist, "active", False) else None
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
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, settings))
        self.step = 0
        self.history: List[Dict[str, float]] = []
        self.evals: List[Dict[str, float]] = []
        self.autocast = device.type == "cuda"
        if settings.gradient_checkpointing and hasattr(student, "gradient_checkpointing_enable"):
            student.gradient_checkpointing_enable()

    # -- loss ----------------------------------------------------------------------
    def loss(self, ids: torch.Tensor) -> tuple:
        s = self.s
        need_hidden = s.kd_hidden_weight > 0 or self.kind != "causal-lm"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.student(input_ids=ids, output_hidden_states=need_hidden)
        parts: Dict[str, torch.Tensor] = {}
        if self.kind == "causal-lm":
            logits = out.logits
            if s.mode == "qat" or s.kd_alpha < 1.0:
                parts["task_loss"] = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        teacher_out = None
        if s.mode == "qad":
            with torch.no_grad():
                t_dev = next(self.teacher.parameters()).device
                teacher_out = self.teacher(input_ids=ids.to(t_dev), output_hidden_states=need_hidden)
            if self.kind == "causal-lm":
                parts["kd_loss"] = _kd_loss(out.logits, teacher_out.logits.to(self.device), s.kd_temperature)
            else:
                parts["kd_loss"] = F.mse_loss(out.last_hidden_state.float(),
                                              teacher_out.last_hidden_state.to(self.device).float())
            if s.kd_hidden_weight > 0:
                parts["hidden_loss"] = _hidden_mse(out.hidden_states,
                                                   [h.to(self.device) for h in teacher_out.hidden_states])
        if s.mode == "qat":
            total = parts["task_loss"]
        elif self.kind == "causal-lm":
            total = s.kd_alpha * parts["kd_loss"]
            if s.kd_alpha < 1.0:
                total = total + (1.0 - s.kd_alpha) * parts["task_loss"]
        else:
            total = parts["kd_loss"]
        if "hidden_loss" in parts:
            total = total + s.kd_hidden_weight * parts["hidden_loss"]
        return total, parts

    # -- one optimiser step --------------------------------------------------------
    def train_step(self) -> Dict[str, float]:
        s = self.s
        self.student.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        for a in range(s.grad_accum):
            ids = self.stream.batch(self.step * s.grad_accum + a)
            if self.dist is not None:
                ids = self.dist.shard_rows(ids)
            ids = ids.to(self.device)
            try:
                total, parts = self.loss(ids)
                if self.dist is not None:
                    self.dist.check_finite(total, self.step + 1)
                elif not torch.isfinite(total):
                    raise LowbitError(f"the training loss became {total.item()} at step {self.step + 1}; "
                                      "lower the learning rate (train.lr) or enable gradient clipping")
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
        if self.dist is not None:  # the mean of the ranks' means: the global batch's mean
            sums = self.dist.mean_over_ranks(sums)
        if s.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.student.parameters() if p.grad is not None], s.grad_clip)
            sums["grad_norm"] = float(norm)
        sums["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return sums

    # -- loop ----------------------------------------------------------------------
    def fit(self) -> Dict[str, object]:
        s = self.s
        tokens_per_step = s.batch_size * s.grad_accum * self.stream.blocks.shape[1]
        start_step, t_start = self.step, time.monotonic()
        stopped_early = False
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
        return {"steps": self.step, "seconds": round(seconds, 3), "stopped_early": stopped_early,
                "tokens_per_s": tokens_per_step * (self.step - start_step) / max(seconds, 1e-9)}

    def _run_eval(self) -> bool:
        metrics = self.evaluate(self.step)
        self.evals.append({"step": self.step, **metrics})
        for k, v in metrics.items():
            self.sink(Metric("eval", k, v, self.step))
        target = self.s.early_stop_perplexity
        return target is not None and metrics.get("perplexity", math.inf) <= target

    # -- checkpoints ---------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write checkpoints/step-N atomically (temporary folder, then rename); keep the last two."""
        if self.dist is not None:  # [distributed] sharded (DCP) checkpoint
            from ..distributed import save_checkpoint

            return save_checkpoint(self, self.dist)
        root = self.checkpoint_dir
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{self.step:06d}"
        if final.exists():
            return final
        tmp = root / f".tmp-step-{self.step:06d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            save_state(cpu_state_dict(self.student), tmp / "student.safetensors")
            torch.save({
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
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
        if self.dist is not None or (path / ".metadata").exists():  # [distributed] any world size -> this one
            from ..distributed import load_checkpoint

            return load_checkpoint(self, path, self.dist)
        try:
            weights = load_file(str(path / "student.safetensors"))
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


def cpu_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict (quantizer scales included) as contiguous CPU tensors."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_state(state: Dict[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write a state dict as safetensors; tensors sharing storage (tied embeddings) get their own copy,
    which safetensors requires."""
    seen = set()
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    save_file(out, str(path), metadata=metadata)


