"""FP8 E4M3 (max 448, no inf) and E5M2 (max 57344) with one fp32 scale per group."""

from __future__ import annotations

import torch

from .base import Format
from .numerics import finite_abs, round_minifloat, split_scale

# element name -> (mantissa bits, smallest normal exponent, largest magnitude, torch dtype)
FP8_ELEMENTS = {
    "e4m3": (3, -6, 448.0, torch.float8_e4m3fn),
    "e5m2": (2, -14, 57344.0, torch.float8_e5m2),
}


class FP8Format(Format):
    def __init__(self, name: str, element: str, granularity: str, block=None):
        self.name, self.granularity, self.block = name, granularity, block
        self.element = element
        self.mbits, self.emin, self.maxval, self.torch_dtype = FP8_ELEMENTS[element]
        self.lsq_divisor = self.maxval
        self.bits = 8
        self.scale_type = "fp32"
        self.description = f"FP8 {element.upper()} (max {self.maxval:g}), scale = amax / {self.maxval:g}, saturating"

    def _scale(self, xg, amax):
        """(amax, divisor, multiplier, ok) of each group; see ``split_scale``."""
        a = finite_abs(xg).amax(-1, keepdim=True) if amax is None else amax
        return (a,) + split_scale(a / self.maxval)

    def _grouped_fake_quant(self, xg, amax, need_mask):
        a, s, s_out, ok = self._scale(xg, amax)
        out = round_minifloat(xg / s, self.mbits, self.emin, self.maxval) * s_out
        # clipped <=> |x| > amax, the exact form of |x / s| > maxval (see IntFormat)
        return out, ((xg.abs() <= a) & (ok | (xg == 0)) if need_mask else None)

    def _grouped_quantize(self, xg, amax):
        _, s, _, ok = self._scale(xg, amax)
        q = round_minifloat(xg / s, self.mbits, self.emin, self.maxval) * ok.float()
        return {"codes": q.to(self.torch_dtype), "scale": s}

    def _decode(self, q):
        return q.codes.float()

    def _dequant_scale(self, q):
        return q.scale

    def group_params(self, xg, amax=None):
        a, s, s_out, _ = self._scale(xg, amax)
        return {"amax": a, "s": s, "s_out": s_out}

    def quantize_fixed(self, x, params, pin=None):
        return round_minifloat(x / params["s"], self.mbits, self.emin, self.maxval) * params["s_out"]
