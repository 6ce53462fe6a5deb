"""Model state as plain CPU tensors, and writing it as safetensors (student files, checkpoints)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from safetensors.torch import save_file
from torch import nn


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
