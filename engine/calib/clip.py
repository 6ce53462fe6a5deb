"""The clipping search shared by MSE weight calibration and GPTQ's group scales."""

from __future__ import annotations

from typing import Callable, Iterable

import torch


def best_clip(amax: torch.Tensor, ratios: Iterable[float], error_of: Callable[[torch.Tensor], torch.Tensor]
              ) -> torch.Tensor:
    """Per group, the candidate ``r * amax`` (r from ``ratios``, in order) with the least ``error_of``.

    ``error_of(candidate)`` returns one error per group, shaped like ``amax``. A later
    ratio replaces an earlier one only when strictly better, so the order of ``ratios``
    decides ties.
    """
    best = best_err = None
    for r in ratios:
        cand = amax * r
        err = error_of(cand)
        if best_err is None:
            best, best_err = cand, err
            continue
        better = err < best_err
        best = torch.where(better, cand, best)
        best_err = torch.where(better, err, best_err)
    return best
