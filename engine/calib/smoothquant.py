"""SmoothQuant: move activation outliers into the weights before W8A8 / W4A4 quantization.

Per input channel j of a group of layers reading one input,
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
(W_j: column j over all the group's weights); activations become X / s, weights W * s. A
larger alpha moves more of the range into the weights. ``alpha`` fixed, or searched per
group over ``alphas``: the alpha whose fake-quantized outputs (weights and activations in the
layers' own formats) are closest to full precision on the calibration samples; "no
smoothing" is a candidate too. The 1/s folds exactly into the producer (see ``scaling``).

Run it before calibration: the static activation and weight scales must be measured on the
smoothed model.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from ..errors import LowbitError
from ..events import CancelToken
from ..quant.linear import QuantLinear
from . import scaling
from .scaling import ScalingResult

DEFAULT_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEFAULTS = {"alpha": None, "alphas": list(DEFAULT_ALPHAS), "max_samples": 2048}


def _loss(layers, x, refs, s) -> float:
    total = 0.0
    for layer, ref in zip(layers, refs):
        w = layer.weight.detach().float()
        xs, ws = (x, w) if s is None else (x / s, w * s)
        out = scaling.input_fake_quant(layer, xs) @ scaling.weight_fake_quant(layer, ws).T
        total += float(((out - ref) ** 2).mean())
    return total


def _scales(absmax: torch.Tensor, wmax: torch.Tensor, alpha: float) -> torch.Tensor:
    s = absmax.clamp(min=1e-5).pow(alpha) / wmax.clamp(min=1e-5).pow(1.0 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def smoothquant(model: nn.Module, forward_loop: Callable[[nn.Module], None], alpha: Optional[float] = None,
                alphas: Sequence[float] = DEFAULT_ALPHAS, max_samples: int = 2048,
                progress: Optional[Callable[[int, int, Dict], None]] = None,
                cancel: Optional[CancelToken] = None) -> ScalingResult:
    """Smooth every input-sharing group of quantized layers; ``alpha`` None searches ``alphas``."""
    candidates = [alpha] if alpha is not None else list(alphas)
    if not candidates or any(not (0.0 <= float(a) <= 1.0) for a in candidates):
        raise LowbitError(f"smoothquant alpha must lie in [0, 1], got {alpha if alpha is not None else list(alphas)}")
    t0 = time.perf_counter()
    result = ScalingResult("smoothquant")
    for gi, n_groups, grp, modules in scaling.each_group(model, forward_loop, max_samples, cancel):
        layers = [modules[c] for c in grp.consumers if isinstance(modules[c], QuantLinear)]
        entry = grp.describe()
        if not grp.foldable:
            entry.update(folded=False, alpha=None)
            result.groups.append(entry)
            continue
        x = grp.samples.to(layers[0].weight.device)
        refs = [x @ layer.weight.detach().float().T for layer in layers]
        wmax = torch.stack([modules[c].weight.detach().float().abs().amax(0) for c in grp.consumers]).amax(0)
        amax = grp.absmax.to(x.device)
        base = _loss(layers, x, refs, None)
        best_a, best_loss, best_s = None, base, None
        for a in candidates:
            s = _scales(amax, wmax, float(a))
            loss = _loss(layers, x, refs, s)
            if alpha is not None or loss < best_loss:
                best_a, best_loss, best_s = float(a), loss, s
        scaling.finish_group(result, entry, modules, grp, layers, refs, x, best_s, _loss, "smoothquant_error",
                             {"alpha": best_a}, {"alpha": best_a, "loss_before": base, "loss_after": best_loss})
        if progress is not None:
            progress(gi + 1, n_groups, {"group": grp.consumers[0]})
    return result.timed(t0)
