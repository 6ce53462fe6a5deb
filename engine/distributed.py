"""Runs across several processes under ``torchrun``: FSDP2 / DDP, sharded checkpoints.

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

Single-process runs never touch this module's collectives: the runner and the trainer
take ``dist=None`` and keep their own code paths.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as tdist
from torch import nn

from .errors import LowbitError

STRATEGIES = ("fsdp2", "ddp")
TEACHER_MODES = ("replicate", "shard")
DEFAULT_STRATEGY = "fsdp2"
DEFAULT_TEACHER = "replicate"
CHECKPOINT_FORMAT = "dcp"
_QUANTILE_MAX = 1 << 24  # torch.quantile's input limit


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
            raise LowbitError(f"the training loss became {value} at step {step} on "
                              f"{'this' if bad else 'another'} rank; lower the learning rate (train.lr) "
                              "or enable gradient clipping")

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
        from .events import Log, RunFailed

        if isinstance(event, Log) and event.level != "info":
            print(f"[rank {self.rank}] {event.level}: {event.message}", file=sys.stderr, flush=True)
        elif isinstance(event, RunFailed) and event.kind != "cancelled":
            print(f"[rank {self.rank}] error: {event.error}", file=sys.stderr, flush=True)


def main_only(sink, d: Optional[Dist]):
    """``sink`` on rank 0 (and in a single process); a stderr printer of warnings and errors elsewhere."""
    if d is None or not d.active or d.is_main:
        return sink
    return _RankConsole(d.rank)


# -- calibration ----------------------------------------------------------------------------


@torch.no_grad()
def sync_calibration(static_quantizers: Sequence[nn.Module], d: Dist) -> None:
    """Merge the activation statistics the ranks recorded, before they become scales.

    Running max: all-reduce MAX (a rank that saw no batch contributes nothing).
    Percentile: every rank gets the union of all ranks' recorded samples.
    """
    if not d.active or not static_quantizers:
        return
    qs = list(static_quantizers)
    maxes = [(-1.0 if q._calib_max is None else float(q._calib_max)) for q in qs]
    t = torch.tensor(maxes, dtype=torch.float32, device=d.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    for q, m in zip(qs, t.tolist()):
        if m < 0:
            q._calib_max = None
        else:
            ref = q._calib_max
            dev = ref.device if ref is not None else d.device
            q._calib_max = torch.tensor(m, dtype=torch.float32, device=dev)
    if any(q.calib_method == "percentile" for q in qs):
        for q in qs:
            if q.calib_method != "percentile":
                continue
            local = torch.cat(q._calib_samples) if q._calib_samples else torch.zeros(0)
            union = _all_gather_varlen(local.float(), d)
            if union.numel() > _QUANTILE_MAX:  # the same sub-sample on every rank: the same scale
                g = torch.Generator().manual_seed(1234)
                union = union[torch.randperm(union.numel(), generator=g)[:_QUANTILE_MAX]]
            q._calib_samples = [union] if union.numel() else []
            q._n_samples = union.numel()


def _all_gather_varlen(x: torch.Tensor, d: Dist) -> torch.Tensor:
    n = torch.tensor([x.numel()], dtype=torch.int64, device=d.device)
    sizes = [torch.zeros_like(n) for _ in range(d.world_size)]
    tdist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    if longest == 0:
        return torch.zeros(0)
    buf = torch.zeros(longest, dtype=torch.float32, device=d.device)
    buf[:x.numel()] = x.to(d.device)
    parts = [torch.empty_like(buf) for _ in range(d.world_size)]
    tdist.all_gather(parts, buf)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu()


@torch.no_grad()
def sync_amax(model: nn.Module, d: Dist) -> int:
    """All-reduce (MAX) every quantizer's ``amax`` so all ranks hold the same scales; returns how many.

    Weight scales are computed from identical weights on every rank (a no-op); activation
    scales are already merged by :func:`sync_calibration`. This is the guarantee the
    wrapped model relies on: buffers are not synchronised by FSDP2 or (here) DDP.
    """
    from .quant.select import quantizers

    if not d.active:
        return 0
    qs = [q for q in quantizers(model)]
    present = [q.amax is not None for q in qs]
    if len(set(map(tuple, d.all_gather_object(present)))) != 1:
        raise LowbitError("the ranks disagree on which quantizers have a calibrated scale; every rank must "
                          "run the same recipe on the same model")
    with_amax = [q for q in qs if q.amax is not None]
    if not with_amax:
        return 0
    flat = torch.cat([q.amax.detach().reshape(-1).float().to(d.device) for q in with_amax])
    tdist.all_reduce(flat, op=tdist.ReduceOp.MAX)
    offset = 0
    for q in with_amax:
        n = q.amax.numel()
        q.amax.copy_(flat[offset:offset + n].reshape(q.amax.shape).to(q.amax.device, q.amax.dtype))
        offset += n
    return len(with_amax)


# -- wrapping ---------------------------------------------------------------------------------


def _blocks(model: nn.Module) -> List[nn.Module]:
    """The repeated blocks to shard one by one: the model's ``_no_split_modules`` classes
    (transformers names its decoder / encoder layers there), else the longest ModuleList's items."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if m is not model and type(m).__name__ in names]
    if blocks:
        return blocks
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def _fully_shard(model: nn.Module, d: Dist) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    mesh = d.mesh()
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def wrap_student(model: nn.Module, d: Dist) -> nn.Module:
    """The module the trainer steps: the model itself sharded in place (FSDP2), or a DDP wrapper."""
    if not d.active:
        return model
    if d.strategy == "fsdp2":
        return _fully_shard(model, d)
    from torch.nn.parallel import DistributedDataParallel as DDP

    # buffers (the scales) are identical after sync_amax and never change: no broadcast per forward,
    # which also keeps forwards free of collectives (evaluation deals batches out unevenly)
    return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
               broadcast_buffers=False, find_unused_parameters=True)


def wrap_teacher(teacher: nn.Module, d: Dist) -> nn.Module:
    """The frozen QAD teacher: kept whole on every rank (replicate) or sharded with FSDP2 (shard)."""
    if not d.active or d.teacher == "replicate":
        return teacher
    return _fully_shard(teacher, d)


def unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def is_sharded(module: Optional[nn.Module]) -> bool:
    if module is None:
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def full_state_dict(model: nn.Module, d: Dist) -> Dict[str, torch.Tensor]:
    """The whole model state on rank 0 (CPU tensors); an empty dict on the other ranks. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = unwrap(model)
    if not is_sharded(model):
        if not d.is_main:
            return {}
        from .train.loop import cpu_state_dict

        return cpu_state_dict(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        return {}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


# -- checkpoints ------------------------------------------------------------------------------


def is_sharded_checkpoint(path: os.PathLike) -> bool:
    return (Path(path) / ".metadata").exists()


def _dcp_state(trainer) -> Dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(trainer.student, trainer.optimizer)
    return {"model": msd, "optim": osd}


def save_checkpoint(trainer, d: Dist) -> Path:
    """checkpoints/step-N as a DCP folder plus trainer.pt; written to a temporary folder, renamed by rank 0."""
    import torch.distributed.checkpoint as dcp

    from .fsutil import fsync_tree, write_text_atomic

    root = Path(trainer.checkpoint_dir)
    final = root / f"step-{trainer.step:06d}"
    if d.broadcast_object(final.exists() if d.is_main else None):
        return final
    tmp = root / f".tmp-step-{trainer.step:06d}"
    if d.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    d.barrier()
    dcp.save(_dcp_state(trainer), checkpoint_id=str(tmp))
    rng = d.all_gather_object({"cpu": torch.get_rng_state(),
                               "cuda": torch.cuda.get_rng_state() if d.device.type == "cuda" else None})
    if d.is_main:
        torch.save({
            "format": CHECKPOINT_FORMAT,
            "world_size": d.world_size,
            "strategy": d.strategy,
            "step": trainer.step,
            "scheduler": trainer.scheduler.state_dict(),
            "rng_cpu": [r["cpu"] for r in rng],
            "rng_cuda": [r["cuda"] for r in rng if r["cuda"] is not None],
            "history": trainer.history,
            "evals": trainer.evals,
        }, tmp / "trainer.pt")
        fsync_tree(tmp)
        os.replace(tmp, final)
        write_text_atomic(root / "latest", final.name)
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    d.barrier()
    return final


def load_checkpoint(trainer, path: os.PathLike, d: Optional[Dist] = None) -> None:
    """Continue ``trainer`` from a checkpoint of any world size.

    A DCP checkpoint is re-sharded onto this run's layout (FSDP2, DDP or a plain module in
    one process); a single-process checkpoint (safetensors + trainer.pt) is loaded as a
    full state dict and sharded by every rank.
    """
    d = d or Dist.single()
    path = Path(path)
    try:
        meta = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        if is_sharded_checkpoint(path):
            _load_dcp(trainer, path)
        else:
            _load_full(trainer, path, meta)
    except LowbitError:
        raise
    except Exception as exc:
        raise LowbitError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                          "delete it to resume from the one before") from None
    trainer.scheduler.load_state_dict(meta["scheduler"])
    rng = meta.get("rng_cpu")
    if isinstance(rng, list):  # one per rank: ours when the world size is the same, else rank 0's
        rng = rng[d.rank] if len(rng) == d.world_size else rng[0]
    if rng is not None:
        torch.set_rng_state(rng)
    cuda = meta.get("rng_cuda") or []
    if cuda and torch.cuda.is_available():
        if d.active and d.device.type == "cuda":
            torch.cuda.set_rng_state(cuda[d.rank] if len(cuda) == d.world_size else cuda[0])
        elif not d.active and not isinstance(meta.get("rng_cpu"), list):
            torch.cuda.set_rng_state_all(cuda)
    trainer.step = int(meta["step"])
    trainer.history = list(meta.get("history", []))
    trainer.evals = list(meta.get("evals", []))


def _load_dcp(trainer, path: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _dcp_state(trainer)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*load in a single process.*")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(trainer.student, trainer.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])


def _load_full(trainer, path: Path, meta: Dict[str, Any]) -> None:
    """A single-process checkpoint into a (possibly sharded) student and its optimizer."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    weights = load_file(str(path / "student.safetensors"))
    model = unwrap(trainer.student)
    from .quant.select import restore_amax

    restore_amax(model, weights)
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    fqns = [names[id(p)] for p in params]
    osd = meta["optimizer"]
    optim = {"state": {fqns[i]: s for i, s in osd["state"].items()},
             "param_groups": [{**g, "params": [fqns[i] for i in g["params"]]} for g in osd["param_groups"]]}
    missing = [n for n in names.values() if n not in weights and not n.endswith("lm_head.weight")]
    if missing:
        raise LowbitError(f"checkpoint {path} does not match this model (missing {missing[:3]}); "
                          "was the recipe changed since?")
    set_state_dict(trainer.student, trainer.optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(full_state_dict=True, strict=False))


# -- export from a sharded run ----------------------------------------------------------------


def rebuild_student(ctx, state: Dict[str, torch.Tensor]):
    """A plain (unsharded) copy of the run's student from a full state dict: LoadedModel with the same
    tokenizer and path, for the single-process exporters."""
    from .runner import build_student

    loaded = build_student(ctx.recipe, ctx.report["plan"], state, ctx.device)
    return replace(ctx.loaded, model=loaded.model)


def export_on_main(ctx) -> None:
    """Rank 0 rebuilds the student from ``student.safetensors`` and runs the export stage; the others wait."""
    from safetensors.torch import load_file

    from .export import export_stage
    from .runner import STUDENT_FILE

    d: Dist = ctx.dist
    if d.is_main:
        state = load_file(str(Path(ctx.run_dir) / STUDENT_FILE))
        sharded = ctx.loaded
        ctx.loaded = rebuild_student(ctx, state)
        try:
            export_stage(ctx)
        finally:
            ctx.loaded = sharded
    d.barrier()


# -- the command a cluster runs ---------------------------------------------------------------


def torchrun_command(recipe_path: os.PathLike, out: os.PathLike, nproc_per_node: int = 1, nnodes: int = 1,
                     node_rank: Optional[int] = None, master_addr: Optional[str] = None, master_port: int = 29500,
                     strategy: Optional[str] = None, teacher: Optional[str] = None, resume: bool = False,
                     python: Optional[str] = None) -> str:
    """The exact shell command to run a recipe under torchrun (what the studio shows to copy).

    One node: ``--standalone``. Several nodes: run the same command on each, with its
    ``--node-rank`` (or let the c10d rendezvous assign ranks: node_rank None).
    """
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError("nproc_per_node and nnodes must be at least 1")
    args = ["torchrun" if python is None else f"{python} -m torch.distributed.run"]
    if nnodes == 1:
        args += ["--standalone", f"--nproc-per-node={nproc_per_node}"]
    else:
        args += [f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}"]
        if node_rank is not None:
            args += [f"--node-rank={node_rank}", f"--master-addr={master_addr or 'MASTER_HOST'}",
                     f"--master-port={master_port}"]
        else:
            args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={master_addr or 'MASTER_HOST'}:{master_port}",
                     "--rdzv-id=lowbit"]
    args += ["-m", "engine.run", shlex.quote(str(recipe_path)), "--out", shlex.quote(str(out))]
    if resume:
        args.append("--resume")
    if strategy:
        args += ["--strategy", strategy]
    if teacher:
        args += ["--teacher", teacher]
    return " ".join(args)
