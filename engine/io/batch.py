"""One batch of token ids, packed or padded, and how it is handed to a model.

A packed batch is a ``[B, T]`` id tensor where every position is a real token. A padded
batch is a :class:`Samples` set: right-padded ids with their attention mask. Consumers
call :func:`model_inputs` to get the forward call's keyword arguments, so the attention
mask travels wherever the ids go, and weight tokens by :func:`token_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import torch


@dataclass
class Samples:
    """Right-padded token ids and their attention mask (1 = real token, 0 = padding).

    Behaves like the ``[N, T]`` block tensors of the packed path where the
    pipeline needs it: ``shape``, ``len``, ``numel`` (real tokens only) and
    indexing, which returns a ``Samples`` trimmed to its longest row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self):
        if self.input_ids.shape != self.attention_mask.shape or self.input_ids.dim() != 2:
            raise ValueError("input_ids and attention_mask must be [N, T] tensors of the same shape")

    @property
    def shape(self) -> torch.Size:
        return self.input_ids.shape

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def numel(self) -> int:
        return int(self.attention_mask.sum())

    def __getitem__(self, index) -> "Samples":
        if isinstance(index, int):
            index = slice(index, index + 1)
        ids, mask = self.input_ids[index], self.attention_mask[index]
        width = int(mask.sum(1).max()) if mask.shape[0] else 0
        return Samples(ids[:, :max(width, 1)].contiguous(), mask[:, :max(width, 1)].contiguous())

    def to(self, device) -> "Samples":
        return Samples(self.input_ids.to(device), self.attention_mask.to(device))

    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)


Batch = Union[torch.Tensor, Samples]


def model_inputs(batch: Batch, device: Optional[torch.device] = None) -> Dict[str, torch.Tensor]:
    """Forward-call keyword arguments for ``batch``: ``input_ids`` and, for padded batches, ``attention_mask``."""
    if isinstance(batch, Samples):
        out = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    elif isinstance(batch, dict):
        out = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    else:
        out = {"input_ids": batch}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


def token_mask(inputs: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """The float ``[B, T]`` mask of real tokens, or None when every position is real."""
    mask = inputs.get("attention_mask")
    if mask is None or bool(mask.all()):
        return None
    return mask.to(torch.float32)


def pad_id(tokenizer: Any) -> int:
    """The id padding uses: the pad token, else eos, else 0 (padded positions are masked anyway)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0
