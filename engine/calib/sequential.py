"""Calibrating a model larger than the device: one transformer block on the device at a time.

The weights stay where they were loaded (the CPU); the parts outside the block stack
(embeddings, rotary tables, final norm) move to the device, the calibration batches run
up to the first block there (``capture_block_inputs``), and then each block in turn is
moved to the device, run on the previous block's outputs with its quantizers recording,
its scales fixed, and moved back. Device memory: the parts outside the blocks, one block,
and the hidden states of the calibration batches; the same pipeline llm-compressor
calls sequential.

The statistics are those of a whole-model forward (each block sees exactly what it
would), so the scales equal those of :func:`engine.calib.calibrate_activations`.
Quantizers outside the block stack (a quantized LM head) are not calibrated here and are
returned by name.
"""

from __future__ import annotations

from typing import Callable, List

import torch
from torch import nn

from ..errors import LowbitError
from ..quant.select import quant_layers
from .blocks import capture_block_inputs, find_blocks, move_own, outside_of, run_block, to_device


def _static(module: nn.Module) -> list:
    return [layer.input_quantizer for _, layer in quant_layers(module)
            if layer.input_quantizer.fmt is not None and layer.input_quantizer.fmt.calibratable
            and layer.input_quantizer.fmt.has_tensor_scale]


def left_outside(model: nn.Module) -> List[str]:
    """The layers with static activation quantizers outside the block stack (a quantized LM head), which
    sequential calibration does not reach; every one when the model has no block stack."""
    _, blocks = find_blocks(model)
    in_blocks = {id(q) for b in (blocks or []) for q in _static(b)}
    return [name for name, layer in quant_layers(model)
            if id(layer.input_quantizer) not in in_blocks and layer.input_quantizer in _static(model)]


@torch.no_grad()
def calibrate_activations_sequential(model: nn.Module, forward_loop: Callable[[nn.Module], None],
                                     device: torch.device | str, method: str = "max", percentile: float = 99.99,
                                     progress: Callable[[str], None] | None = None) -> List[str]:
    """Static activation scales, one block on ``device`` at a time; returns the quantizers left out.

    ``forward_loop(model)`` calls the model on the calibration batches, with the inputs on
    ``device`` (as for a model that lives there)."""
    device = torch.device(device)
    _, blocks = find_blocks(model)
    if blocks is None:
        raise LowbitError("sequential calibration needs a stack of transformer blocks with quantized layers; "
                          "this model has none, so calibrate it whole")
    home = next(model.parameters()).device
    left_out = left_outside(model)
    act_method = "percentile" if method == "percentile" else "max"
    outside = outside_of(model, blocks)
    move_own(outside, device)  # embeddings, rotary tables, final norm, head: the parts around the blocks
    try:
        inputs = to_device(capture_block_inputs(model, blocks[0], forward_loop), device)
        for i, block in enumerate(blocks):
            block.to(device)
            qs = _static(block)
            for q in qs:
                q.start_calibration(act_method, percentile)
            try:
                inputs = run_block(block, inputs)
            finally:
                for q in qs:
                    q.finish_calibration()  # while the statistics are still on the device
                block.to(home)
            if progress:
                progress(f"block {i + 1} of {len(blocks)}")
    finally:
        move_own(outside, home)
    return left_out
