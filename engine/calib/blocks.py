"""Running a model one transformer block at a time, on the block's own inputs.

Layer-wise algorithms (GPTQ) need each block's input on the calibration data, as
the blocks before it (already quantized) produce it. ``capture_block_inputs``
records what the first block receives for every batch of the caller's
``forward_loop`` and stops each forward there; ``run_block`` then feeds a block
those inputs and returns the inputs of the next one. Peak memory is the model,
one block's statistics and the hidden states of the calibration batches.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import nn

from ..errors import LowbitError
from ..quant.linear import QuantLinear

# keyword arguments a block must not receive when it runs alone (a KV cache would grow on every call)
_CACHE_KWARGS = ("past_key_value", "past_key_values", "layer_past")


class _StopForward(Exception):
    """Raised by the capture hook: the rest of the model is not needed."""


def find_blocks(model: nn.Module, layer_type: type = QuantLinear) -> Tuple[str, Optional[nn.ModuleList]]:
    """The stack of transformer blocks: the ModuleList of same-type modules holding the most QuantLinears
    (``layer_type``: nn.Linear for a model not yet quantized, such as one on the meta device)."""
    best, best_name, best_count = None, "", 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        count = sum(isinstance(m, layer_type) for m in mod.modules())
        if count > best_count:
            best, best_name, best_count = mod, name, count
    return best_name, best


def _detach(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach()
    if isinstance(v, tuple):
        return tuple(_detach(x) for x in v)
    if isinstance(v, list):
        return [_detach(x) for x in v]
    return v


@torch.no_grad()
def capture_block_inputs(model: nn.Module, block: nn.Module,
                         forward_loop: Callable[[nn.Module], None]) -> List[Tuple[tuple, dict]]:
    """(args, kwargs) that ``block`` receives for each batch of ``forward_loop``.

    The forward of each batch stops at the block (the model returns None there), so
    ``forward_loop`` must only call the model, not use what it returns.
    """
    captured: List[Tuple[tuple, dict]] = []

    def hook(_mod, args, kwargs):
        kw = {k: (None if k in _CACHE_KWARGS else _detach(v)) for k, v in kwargs.items()}
        if "use_cache" in kw:
            kw["use_cache"] = False
        captured.append((_detach(args), kw))
        raise _StopForward

    original = model.forward

    def stopping_forward(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except _StopForward:
            return None

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    model.forward = stopping_forward
    try:
        forward_loop(model)
    finally:
        handle.remove()
        del model.forward  # back to the class's method
    if not captured:
        raise LowbitError("calibration ran no batch through the model: give calibration data "
                          "(data.calib_batches of at least 1)")
    return captured


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> Tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    kw = dict(kwargs)
    kw["hidden_states"] = hidden
    return args, kw


@torch.no_grad()
def run_block(block: nn.Module, inputs: List[Tuple[tuple, dict]]) -> List[Tuple[tuple, dict]]:
    """Run ``block`` on each captured input; returns the next block's inputs (same other arguments)."""
    out = []
    for args, kwargs in inputs:
        y = block(*args, **kwargs)
        hidden = y[0] if isinstance(y, (tuple, list)) else y
        out.append(_with_hidden(args, kwargs, hidden))
    return out


def block_hidden(inputs: List[Tuple[tuple, dict]]) -> List[torch.Tensor]:
    return [_hidden_of(a, k) for a, k in inputs]


def to_device(inputs: List[Tuple[tuple, dict]], device) -> List[Tuple[tuple, dict]]:
    """Captured block inputs with every tensor in them on ``device``."""
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if isinstance(v, tuple):
            return tuple(move(x) for x in v)
        if isinstance(v, list):
            return [move(x) for x in v]
        return v

    return [(move(a), {k: move(v) for k, v in kw.items()}) for a, kw in inputs]


def move_own(modules, device) -> None:
    """Move each module's own parameters and buffers (not its children's); shared ones move once."""
    for m in modules:
        for p in m.parameters(recurse=False):
            if p.device != torch.device(device):
                p.data = p.data.to(device)
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None:
                m._buffers[name] = b.to(device)


def outside_of(model: nn.Module, blocks: nn.ModuleList) -> List[nn.Module]:
    """The modules of ``model`` not inside the block stack (embeddings, rotary tables, final norm, head)."""
    inside = {id(m) for b in blocks for m in b.modules()}
    return [m for m in model.modules() if id(m) not in inside]


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings (else of its first parameter)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) else next(model.parameters()).device
