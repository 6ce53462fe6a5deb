"""AWQ: activation-aware per-input-channel weight scaling, searched on calibration data.

Input channels that carry large activations matter most to the output; scaling their weight
columns up by s (and the activations down by 1/s) gives them a finer share of the weight
grid. For each group of layers reading one input, AWQ tries s = mean|x|^r for r on a grid in
[0, 1] (normalised so that sqrt(max(s) * min(s)) = 1), rounds the scaled weights with each
layer's own format, and keeps the r whose outputs on the calibration samples are closest to
the full-precision ones (r = 0 is "no scaling", so the result is never worse than RTN on the
samples). The chosen 1/s is folded exactly into the producer (see ``scaling``). Groups with
no exact fold (BERT's FFN down projection reads GELU's output; its post-LN norms also feed
the residual) follow ``unfoldable``: "skip" leaves them unscaled (and reports them);
"explicit" searches them the same way and keeps 1/s as each layer's own input multiplier
(``QuantLinear.pre_quant_scale``), which the dense export folds back into the weight, the
ModelOpt export writes as the layer's ``pre_quant_scale`` in its AWQ layouts (W4A16_AWQ,
NVFP4_AWQ), and compressed-tensors refuses (its loaders know no such tensor).
``resolve_unfoldable`` turns the recipe's "auto" into one of the two from the export target.

Run it before the weights are calibrated: the weights change, so any static weight amax
measured earlier is measured again here.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..errors import LowbitError
from ..events import CancelToken
from ..quant.linear import QuantLinear
from . import scaling
from .scaling import ScalingResult

DEFAULTS = {"grid": 20, "max_samples": 2048, "unfoldable": "skip"}
UNFOLDABLE = ("skip", "explicit")
# export targets that can carry an explicit input multiplier (dense folds it into the weight)
EXPLICIT_EXPORTS = (None, "dense")


def resolve_unfoldable(setting: str, export_format: Optional[str], carried: Optional[bool] = None) -> str:
    """calibration.awq_unfoldable: "auto" is "explicit" where the export can carry the layers' input
    multipliers, else "skip". ``carried``: the export's own answer for this model
    (engine.export.carries_input_multipliers: dense for weight-only layers, modelopt for its AWQ
    pairings); without it, by target alone: no export or dense carries them, packed layouts not."""
    if setting != "auto":
        return setting
    if carried is not None:
        return "explicit" if carried else "skip"
    fmt = str(export_format).strip().lower() if export_format else None
    return "explicit" if fmt in EXPLICIT_EXPORTS else "skip"


def _loss(layers: List[QuantLinear], x: torch.Tensor, refs: List[torch.Tensor], s: Optional[torch.Tensor]) -> float:
    total = 0.0
    for layer, ref in zip(layers, refs):
        w = layer.weight.detach().float()
        if s is None:
            wq = scaling.weight_fake_quant(layer, w)
        else:
            wq = scaling.weight_fake_quant(layer, w * s) / s
        total += float(((x @ wq.T - ref) ** 2).mean())
    return total


@torch.no_grad()
def awq(model: nn.Module, forward_loop: Callable[[nn.Module], None], grid: int = 20, max_samples: int = 2048,
        progress: Optional[Callable[[int, int, Dict], None]] = None,
        cancel: Optional[CancelToken] = None, unfoldable: str = "skip") -> ScalingResult:
    """Search and fold AWQ scales for every input-sharing group of quantized layers; groups with no
    exact fold are left as they are (``unfoldable="skip"``) or get explicit input scales ("explicit")."""
    if grid < 2:
        raise LowbitError(f"awq grid must be at least 2 (ratios from 0 to 1), not {grid}")
    if unfoldable not in UNFOLDABLE:
        raise LowbitError(f"awq unfoldable must be one of {', '.join(UNFOLDABLE)}, not {unfoldable!r}")
    t0 = time.perf_counter()
    result = ScalingResult("awq")
    for gi, n_groups, grp, modules in scaling.each_group(model, forward_loop, max_samples, cancel):
        layers = [modules[c] for c in grp.consumers
                  if isinstance(modules[c], QuantLinear) and modules[c].weight_quantizer.enabled
                  and modules[c].weight_quantizer.fmt is not None]
        entry = grp.describe()
        explicit = not grp.foldable and unfoldable == "explicit"
        if not layers or not (grp.foldable or explicit):
            entry.update(folded=False, explicit=False, ratio=None)
            result.groups.append(entry)
            continue
        x = grp.samples.to(layers[0].weight.device)
        refs = [x @ layer.weight.detach().float().T for layer in layers]
        base = _loss(layers, x, refs, None)
        mean = grp.absmean.to(x.device).clamp(min=1e-8)
        best_r, best_loss, best_s = 0.0, base, None
        for i in range(1, grid):
            r = i / (grid - 1)
            s = mean.pow(r).clamp(min=1e-4)
            s = s / torch.sqrt(s.max() * s.min())
            loss = _loss(layers, x, refs, s)
            if loss < best_loss:
                best_r, best_loss, best_s = r, loss, s
        scaling.finish_group(result, entry, modules, grp, layers, refs, x, best_s, _loss, "awq_error",
                             {"ratio": best_r}, {"ratio": best_r, "loss_before": base, "loss_after": best_loss},
                             explicit=explicit)
        if progress is not None:
            progress(gi + 1, n_groups, {"group": grp.consumers[0]})
    return result.timed(t0)
