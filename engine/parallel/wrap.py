"""Sharding (FSDP2) or replicating (DDP) the student and the teacher, and gathering a full state."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from ..statefile import cpu_state_dict
from . import Dist


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
        return cpu_state_dict(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        return {}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}
