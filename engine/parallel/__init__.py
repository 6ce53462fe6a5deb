"""Runs across several processes under ``torchrun``: FSDP2 / DDP, sharded checkpoints.

This package: the process group and its collectives (here), merging calibration
statistics (:mod:`.sync`), sharding and gathering models (:mod:`.wrap`) and sharded
checkpoints (:mod:`.checkpoint`).

One process per device (``torchrun --nproc-per-node N -m engine.run RECIPE --out DIR``).
Every rank loads the model, quantizes and calibrates it; then:

- **data**: calibration and evaluation batches are dealt out whole, batch ``i`` to rank
  ``i % W`` (every batch keeps the shape it has in a single-process run); a training
  step takes the same global batch as a single process would and rank ``r`` keeps its
  rows ``r::W``, so the mean gradient over the global batch is the same;
- **calibration**: each static activation quantizer's running max is all-reduced (MAX)
  before the scales are frozen, then every ``amax`` of the model is all-reduced (MAX), so
  all ranks hold identical scales before the model is wrapped; for ``percentile`` the
  recorded |x| samples of all ranks are all-gathered and the percentile is taken over
  their union (the same value as one process when no rank had to sub-sample);
- **wrapping** (after calibration; QuantLinear swaps classes in place, scales are
  buffers and stay replicated): the student is sharded with FSDP2 (``fully_shard`` on
  every transformer block, then the root) or replicated with DDP; the QAD teacher is
  replicated (a frozen copy per rank) or sharded with ``fully_shard`` (no optimizer);
- **metrics**: evaluation sums (tokens, NLL, KL, agreement, ...) are all-reduced; the
  training loss reported is the mean over ranks of the per-rank means (= the global mean);
- **events, report, student file**: rank 0 only (:func:`main_only`);
- **checkpoints**: ``torch.distributed.checkpoint`` (DCP) of the model and optimizer
  state dicts (one ``.distcp`` file per rank plus ``.metadata``), and rank 0's
  ``trainer.pt`` (step, scheduler, per-rank RNG, history). DCP re-shards on load, so a
  run resumes on the same or another world size, including a single process
  (``lowbit run --resume``); a single-process checkpoint also resumes under torchrun;
- **save / export**: a full state dict is gathered to rank 0 (``full_state_dict``,
  ``cpu_offload``); rank 0 writes ``student.safetensors`` and exports from a model
  rebuilt from it, so the exporters are the single-process ones.

A single process is the one-rank case of the same interface: :meth:`Dist.single` answers
every collective as the identity, so the stages read the same for one process or many.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as tdist

from ..errors import LowbitError
from ..events import Log, RunFailed

STRATEGIES = ("fsdp2", "ddp")
TEACHER_MODES = ("replicate", "shard")
DEFAULT_STRATEGY = "fsdp2"
DEFAULT_TEACHER = "replicate"
CHECKPOINT_FORMAT = "dcp"


# -- settings -------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def recipe_settings(recipe, strategy: Optional[str] = None, teacher: Optional[str] = None) -> Tuple[str, str]:
    """(strategy, teacher mode): the flags when given, else the recipe's ``distributed`` section, else defaults.

    The recipe section (``distributed: {strategy: fsdp2|ddp, teacher: replicate|shard}``) is
    read with defaults, so recipes without it keep working.
    """
    sec = getattr(recipe, "distributed", None)
    if isinstance(sec, dict):
        get = sec.get
    else:
        def get(key, default=None):
            return getattr(sec, key, default)
    strategy = strategy or get("strategy", None) or DEFAULT_STRATEGY
    teacher = teacher or get("teacher", None) or DEFAULT_TEACHER
    if strategy not in STRATEGIES:
        raise LowbitError(f"distributed strategy {strategy!r} is not known; choose one of {', '.join(STRATEGIES)}")
    if teacher not in TEACHER_MODES:
        raise LowbitError(f"distributed teacher {teacher!r} is not known; choose one of {', '.join(TEACHER_MODES)}")
    return strategy, teacher


# -- the process group ------------------------------------------------------------------


@dataclass
class Dist:
    """This process's place in a distributed run, and the collectives the engine uses.

    ``active`` is False for the single-process stand-in :meth:`single` (every method is then
    the identity), True once :func:`init_from_env` has joined the process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = ""
    strategy: str = DEFAULT_STRATEGY
    teacher: str = DEFAULT_TEACHER
    owns_group: bool = False
    _mesh: Any = None

    @classmethod
    def single(cls) -> "Dist":
        return cls()

    @property
    def active(self) -> bool:
        return bool(self.backend) and tdist.is_available() and tdist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> Dict[str, Any]:
        return {"world_size": self.world_size, "strategy": self.strategy, "teacher": self.teacher,
                "backend": self.backend, "device_type": self.device.type}

    # -- collectives (identity when inactive) -----------------------------------------
    def barrier(self) -> None:
        if self.active:
            if self.backend == "nccl":
                tdist.barrier(device_ids=[self.device.index or 0])
            else:
                tdist.barrier()

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> List[float]:
        """Element-wise sum / max / min / mean of a list of numbers over the ranks (float64)."""
        if not self.active or not values:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        rop = {"sum": tdist.ReduceOp.SUM, "mean": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX,
               "min": tdist.ReduceOp.MIN}[op]
        tdist.all_reduce(t, op=rop)
        if op == "mean":
            t /= self.world_size
        return t.tolist()

    def mean_over_ranks(self, values: Dict[str, float]) -> Dict[str, float]:
        keys = list(values)
        return dict(zip(keys, self.all_reduce([values[k] for k in keys], "mean")))

    def any_rank(self, flag: bool) -> bool:
        return bool(self.all_reduce([1.0 if flag else 0.0], "max")[0] > 0)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> List[Any]:
        if not self.active:
            return [obj]
        out: List[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    # -- data ----------------------------------------------------------------------------
    def shard_batches(self, batches: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """This rank's whole batches: ``batches[rank::W]``."""
        batches = list(batches)
        return batches if not self.active else batches[self.rank::self.world_size]

    def eval_plan(self, batches: Iterable[torch.Tensor], lockstep: bool) -> List[Tuple[torch.Tensor, bool]]:
        """(batch, counts) pairs for this rank; with ``lockstep`` (a sharded model: every forward is a
        collective) the ranks with fewer batches repeat their first one without counting it."""
        batches = list(batches)
        if not self.active:
            return [(b, True) for b in batches]
        mine = [(b, True) for b in batches[self.rank::self.world_size]]
        if lockstep and batches:
            n = math.ceil(len(batches) / self.world_size)
            mine += [(batches[0], False)] * (n - len(mine))
        return mine

    def shard_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``rank::W`` of one global micro-batch."""
        if not self.active:
            return ids
        if ids.shape[0] % self.world_size:
            raise LowbitError(f"a training batch of {ids.shape[0]} cannot be split evenly over {self.world_size} "
                              f"processes; make train.batch_size (or data.batch_size) a multiple of "
                              f"{self.world_size}")
        return ids[self.rank::self.world_size]

    def reduce_stats(self, stats: Any) -> Any:
        """Sum every numeric attribute of a metrics accumulator (LMStats, EncoderStats) over the ranks."""
        if not self.active:
            return stats
        keys = [k for k, v in vars(stats).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        totals = self.all_reduce([getattr(stats, k) for k in keys], "sum")
        for k, v in zip(keys, totals):
            setattr(stats, k, int(round(v)) if isinstance(getattr(stats, k), int) else v)
        return stats

    def check_finite(self, loss: torch.Tensor, step: int) -> None:
        """Raise the same error on every rank when any rank's loss is not finite."""
        bad = not bool(torch.isfinite(loss))
        if self.any_rank(bad):
            value = loss.item() if bad else float("nan")
            where = f" on {'this' if bad else 'another'} rank" if self.active else ""
            raise LowbitError(f"the training loss became {value} at step {step}{where}; lower the learning rate "
                              "(train.lr) or enable gradient clipping")

    def mesh(self):
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._mesh = init_device_mesh(self.device.type, (self.world_size,))
        return self._mesh


def _pick_device(recipe_device: str, local_rank: int) -> torch.device:
    name = recipe_device or "auto"
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LowbitError(f"device {name!r} was asked for, but this machine has no usable CUDA device; "
                              "choose device 'cpu' or 'auto'")
        # one process per GPU: LOCAL_RANK picks it; an explicit index is taken as the first of the node's
        return torch.device("cuda", (dev.index or 0) + local_rank)
    return dev


def init_from_env(recipe_device: str = "auto", strategy: str = DEFAULT_STRATEGY, teacher: str = DEFAULT_TEACHER,
                  timeout_min: Optional[float] = None) -> Dist:
    """Join the process group torchrun describes in the environment (nccl on CUDA, gloo on CPU)."""
    if not launched_by_torchrun():
        raise LowbitError("this process was not started by torchrun (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR "
                          "are not set); launch it with `torchrun --nproc-per-node N -m engine.run ...`")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = _pick_device(recipe_device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(minutes=float(timeout_min or os.environ.get("LOWBIT_DIST_TIMEOUT_MIN", 60)))
    owns = False
    if not tdist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        tdist.init_process_group(backend, timeout=timeout, **kwargs)
        owns = True
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend,
                strategy=strategy, teacher=teacher, owns_group=owns)


def teardown(d: Optional[Dist]) -> None:
    if d is not None and d.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


def check_recipe(recipe, d: Dist) -> None:
    """Refuse, before the long stages, what cannot run on this world size / strategy."""
    if not d.active:  # one process: nothing to split or shard
        return
    if recipe.mode in ("qat", "qad"):
        bs = recipe.train.batch_size or recipe.data.batch_size
        if bs % d.world_size:
            raise LowbitError(f"the global training batch ({bs}) cannot be split evenly over {d.world_size} "
                              f"processes; make train.batch_size a multiple of {d.world_size}")
        if recipe.train.learnable_scales and d.strategy == "fsdp2":
            raise LowbitError("train.learnable_scales makes the per-tensor scales scalar parameters, which FSDP2 "
                              "cannot shard; use the ddp strategy (--strategy ddp / distributed.strategy: ddp) "
                              "or turn learnable scales off")


# -- events -------------------------------------------------------------------------------


class _RankConsole:
    """What a rank other than 0 keeps of the event stream: warnings and failures, on stderr."""

    def __init__(self, rank: int):
        self.rank = rank

    def __call__(self, event) -> None:
        if isinstance(event, Log) and event.level != "info":
            print(f"[rank {self.rank}] {event.level}: {event.message}", file=sys.stderr, flush=True)
        elif isinstance(event, RunFailed) and event.kind != "cancelled":
            print(f"[rank {self.rank}] error: {event.error}", file=sys.stderr, flush=True)


def main_only(sink, d: Optional[Dist]):
    """``sink`` on rank 0 (and in a single process); a stderr printer of warnings and errors elsewhere."""
    if d is None or not d.active or d.is_main:
        return sink
    return _RankConsole(d.rank)
