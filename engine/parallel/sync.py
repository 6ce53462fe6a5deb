"""Calibration across processes: merge the ranks' activation statistics, then every scale (MAX)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as tdist
from torch import nn

from ..errors import LowbitError
from ..quant.select import quantizers
from . import Dist

_QUANTILE_MAX = 1 << 24  # torch.quantile's input limit


@torch.no_grad()
def sync_calibration(static_quantizers: Sequence[nn.Module], d: Dist) -> None:
    """Merge the activation statistics the ranks recorded, before they become scales.

    Running max: all-reduce MAX (a rank that saw no batch contributes nothing).
    Percentile: every rank gets the union of all ranks' recorded samples.
    """
    if not d.active or not static_quantizers:
        return
    qs = list(static_quantizers)
    maxes = [(-1.0 if q._calib_max is None else float(q._calib_max)) for q in qs]
    t = torch.tensor(maxes, dtype=torch.float32, device=d.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    for q, m in zip(qs, t.tolist()):
        if m < 0:
            q._calib_max = None
        else:
            ref = q._calib_max
            dev = ref.device if ref is not None else d.device
            q._calib_max = torch.tensor(m, dtype=torch.float32, device=dev)
    if any(q.calib_method == "percentile" for q in qs):
        for q in qs:
            if q.calib_method != "percentile":
                continue
            local = torch.cat(q._calib_samples) if q._calib_samples else torch.zeros(0)
            union = _all_gather_varlen(local.float(), d)
            if union.numel() > _QUANTILE_MAX:  # the same sub-sample on every rank: the same scale
                g = torch.Generator().manual_seed(1234)
                union = union[torch.randperm(union.numel(), generator=g)[:_QUANTILE_MAX]]
            q._calib_samples = [union] if union.numel() else []
            q._n_samples = union.numel()


def _all_gather_varlen(x: torch.Tensor, d: Dist) -> torch.Tensor:
    n = torch.tensor([x.numel()], dtype=torch.int64, device=d.device)
    sizes = [torch.zeros_like(n) for _ in range(d.world_size)]
    tdist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    if longest == 0:
        return torch.zeros(0)
    buf = torch.zeros(longest, dtype=torch.float32, device=d.device)
    buf[:x.numel()] = x.to(d.device)
    parts = [torch.empty_like(buf) for _ in range(d.world_size)]
    tdist.all_gather(parts, buf)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu()


@torch.no_grad()
def sync_amax(model: nn.Module, d: Dist) -> int:
    """All-reduce (MAX) every quantizer's ``amax`` so all ranks hold the same scales; returns how many.

    Weight scales are computed from identical weights on every rank (a no-op); activation
    scales are already merged by :func:`sync_calibration`. This is the guarantee the
    wrapped model relies on: buffers are not synchronised by FSDP2 or (here) DDP.
    """
    if not d.active:
        return 0
    qs = [q for q in quantizers(model)]
    present = [q.amax is not None for q in qs]
    if len(set(map(tuple, d.all_gather_object(present)))) != 1:
        raise LowbitError("the ranks disagree on which quantizers have a calibrated scale; every rank must "
                          "run the same recipe on the same model")
    with_amax = [q for q in qs if q.amax is not None]
    if not with_amax:
        return 0
    flat = torch.cat([q.amax.detach().reshape(-1).float().to(d.device) for q in with_amax])
    tdist.all_reduce(flat, op=tdist.ReduceOp.MAX)
    offset = 0
    for q in with_amax:
        n = q.amax.numel()
        q.amax.copy_(flat[offset:offset + n].reshape(q.amax.shape).to(q.amax.device, q.amax.dtype))
        offset += n
    return len(with_amax)
