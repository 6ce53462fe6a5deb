"""Which device a run uses: ``auto`` picks CUDA when this machine has it."""

from __future__ import annotations

import torch

from .errors import LowbitError


def resolve_device(name: str) -> torch.device:
    """The torch device for a recipe's ``device`` value (auto, cpu, cuda, cuda:N); a clear error when absent."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LowbitError(f"device {name!r} was asked for, but this machine has no usable CUDA device; "
                          "choose device 'cpu' or 'auto'")
    return dev
