"""Sharded training checkpoints (torch.distributed.checkpoint) that resume on any world size."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import LowbitError
from ..fsutil import fsync_tree, write_text_atomic
from ..quant.select import restore_amax
from ..statefile import load_state
from . import CHECKPOINT_FORMAT, Dist
from .wrap import unwrap


def is_sharded_checkpoint(path: os.PathLike) -> bool:
    return (Path(path) / ".metadata").exists()


def _dcp_state(trainer) -> Dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(trainer.student, trainer.optimizer)
    return {"model": msd, "optim": osd}


def save_checkpoint(trainer, d: Dist) -> Path:
    """checkpoints/step-N as a DCP folder plus trainer.pt; written to a temporary folder, renamed by rank 0."""
    import torch.distributed.checkpoint as dcp

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
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    weights = load_state(path / "student.safetensors")  # one file, or shards with an index
    model = unwrap(trainer.student)
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
