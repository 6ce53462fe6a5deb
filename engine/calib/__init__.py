"""Calibration: set the quantizers' scales from data (activations) and from the weights.

Algorithms are plain functions of ``(model, forward_loop)``: the caller owns the
data and runs it through the model inside ``forward_loop(model)``.

- ``max``: the largest finite magnitude seen;
- ``percentile``: that percentile of the magnitudes seen (activations), which
  ignores rare outliers; weights use max;
- ``mse``: for weights, a search over clipping ratios r in [mse_min_ratio, 1]
  of each scale group's amax, keeping per group the r that minimises the
  squared quantization error; activations use max.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..quant.select import quant_layers
from .clip import best_clip

METHODS = ("max", "percentile", "mse")

# calibration.algorithm: the PTQ algorithm run before the scales are set, with a one-line explanation
ALGORITHMS = {
    "rtn": "Round to nearest: each weight to its closest grid value (fast, the baseline).",
    "gptq": "GPTQ: rounds weights column by column, the next columns absorbing the error (best at 2-4 bits).",
    "awq": "AWQ: scales up the weight channels that meet large activations, folded into the norms.",
    "smoothquant": "SmoothQuant: moves activation outliers into the weights, for W8A8 / W4A4.",
    "awq+gptq": "AWQ scales first, then GPTQ rounding.",
    "smoothquant+gptq": "SmoothQuant first, then GPTQ rounding of the smoothed weights.",
}


@torch.no_grad()
def calibrate_weights(model: nn.Module, method: str = "max", mse_grid: int = 20, mse_min_ratio: float = 0.5,
                      progress: Optional[Callable[[str], None]] = None) -> None:
    """Freeze each calibratable weight quantizer's amax (dynamic block formats keep theirs)."""
    for name, layer in quant_layers(model):
        q = layer.weight_quantizer
        if q.fmt is None or not q.fmt.calibratable:
            continue
        w = layer.weight.detach()
        amax = q.fmt.amax_of(w)
        if method == "mse":
            amax = mse_amax(q.fmt, w, amax, mse_grid, mse_min_ratio)
        q.set_amax(amax)
        if progress:
            progress(name)


@torch.no_grad()
def mse_amax(fmt, w: torch.Tensor, amax: torch.Tensor, grid: int = 20, min_ratio: float = 0.5) -> torch.Tensor:
    """Per scale group, the clipped amax r * amax that minimises the squared error of fake_quant(w)."""
    def error_of(cand: torch.Tensor) -> torch.Tensor:
        err = fmt.group_view((fmt.fake_quant(w, cand) - w).float().pow(2)).sum(-1)
        return err.sum() if amax.dim() == 0 else err.reshape(amax.shape)

    return best_clip(amax, torch.linspace(min_ratio, 1.0, grid, device=w.device), error_of)


def calibrate_activations(model: nn.Module, forward_loop: Callable[[nn.Module], None], method: str = "max",
                          percentile: float = 99.99, reduce: Optional[Callable[[list], None]] = None) -> int:
    """Record the inputs of static activation quantizers over ``forward_loop``; returns how many.

    ``reduce(quantizers)``, when given, runs after the loop and before the statistics become
    scales: a distributed run merges the ranks' statistics there (engine.parallel.sync.sync_calibration).
    """
    static = [layer.input_quantizer for _, layer in quant_layers(model)
              if layer.input_quantizer.fmt is not None and layer.input_quantizer.fmt.calibratable
              and layer.input_quantizer.fmt.has_tensor_scale]
    act_method = "percentile" if method == "percentile" else "max"
    for q in static:
        q.start_calibration(act_method, percentile)
    try:
        with torch.no_grad():
            forward_loop(model)
        if reduce is not None:
            reduce(static)
    finally:
        for q in static:
            q.finish_calibration()
    return len(static)


def calibrate(model: nn.Module, forward_loop: Callable[[nn.Module], None], method: str = "max",
              percentile: float = 99.99, mse_grid: int = 20, mse_min_ratio: float = 0.5) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    calibrate_weights(model, method, mse_grid, mse_min_ratio)
    calibrate_activations(model, forward_loop, method, percentile)
