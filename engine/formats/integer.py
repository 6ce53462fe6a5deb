"""Integer formats of 2 to 8 bits: symmetric (scale = amax / qmax) or asymmetric."""

from __future__ import annotations

import torch

from .base import Format
from .numerics import finite_abs, round_int, split_scale


class IntFormat(Format):
    """Symmetric signed integers on the narrow grid [-qmax, qmax], qmax = 2**(bits-1) - 1.

    The grid is symmetric so that 2 bits give the ternary {-1, 0, 1}.
    """

    def __init__(self, name: str, bits: int, granularity: str, block=None):
        if not 2 <= bits <= 8:
            raise ValueError(f"integer formats take 2 to 8 bits, not {bits}")
        self.name, self.bits, self.granularity, self.block = name, bits, granularity, block
        self.qmax = float(2 ** (bits - 1) - 1)
        self.lsq_divisor = self.qmax
        self.scale_type = "fp32"
        self.description = f"signed {bits}-bit integers, symmetric, scale = amax / {int(self.qmax)}"

    def _scale(self, xg, amax):
        """(amax, divisor, multiplier, ok) of each group; see ``split_scale``."""
        a = finite_abs(xg).amax(-1, keepdim=True) if amax is None else amax
        return (a,) + split_scale(a / self.qmax)

    def _grouped_fake_quant(self, xg, amax, need_mask):
        a, s, s_out, ok = self._scale(xg, amax)
        out = round_int(xg / s, -self.qmax, self.qmax) * s_out
        # clipped <=> |x| > amax: the exact form of |x / s| > qmax for s = amax / qmax.
        # Comparing x / s in float32 would drop the gradient of the very element that
        # set a dynamic scale whenever the rounding of amax / qmax lands just below.
        return out, ((xg.abs() <= a) & (ok | (xg == 0)) if need_mask else None)

    def _grouped_quantize(self, xg, amax):
        _, s, _, ok = self._scale(xg, amax)
        codes = round_int(xg / s, -self.qmax, self.qmax) * ok.float()
        return {"codes": torch.nan_to_num(codes).to(torch.int8), "scale": s}

    def _decode(self, q):
        return q.codes.float()

    def _dequant_scale(self, q):
        return q.scale

    def group_params(self, xg, amax=None):
        a, s, s_out, _ = self._scale(xg, amax)
        return {"amax": a, "s": s, "s_out": s_out}

    def quantize_fixed(self, x, params, pin=None):
        return round_int(x / params["s"], -self.qmax, self.qmax) * params["s_out"]


class AsymIntFormat(Format):
    """Unsigned codes 0 .. 2**bits - 1 with a per-group zero point.

    The range always includes zero, so zero stays exact:
    lo = min(x, 0), hi = max(x, 0), scale = (hi - lo) / (2**bits - 1),
    zero_point = round(-lo / scale), x_hat = (clamp(round(x / scale) + zp) - zp) * scale.
    Rounding is half to even on x / scale (before the zero point is added).
    """

    calibratable = False

    def __init__(self, name: str, bits: int, granularity: str, block=None):
        if not 2 <= bits <= 8:
            raise ValueError(f"integer formats take 2 to 8 bits, not {bits}")
        self.name, self.bits, self.granularity, self.block = name, bits, granularity, block
        self.levels = float(2 ** bits - 1)
        self.scale_type = "fp32 + zero point"
        self.description = f"unsigned {bits}-bit integers with a zero point (asymmetric)"

    def _extra_bits(self, row):
        # the zero point is stored in `bits` bits per group
        if self.granularity == "block":
            return self.bits / self.block
        return self.bits / row if self.granularity == "channel" else 0.0

    def _params(self, xg):
        fin = torch.isfinite(xg)
        lo = torch.where(fin, xg, 0.0).amin(-1, keepdim=True).clamp(max=0.0)
        hi = torch.where(fin, xg, 0.0).amax(-1, keepdim=True).clamp(min=0.0)
        s, s_out, ok = split_scale((hi - lo) / self.levels)
        zp = round_int(-lo / s, 0.0, self.levels)
        return s, s_out, ok, zp

    def _grouped_fake_quant(self, xg, amax, need_mask):
        s, s_out, ok, zp = self._params(xg)
        y = torch.round(xg / s) + zp
        out = (y.clamp(0.0, self.levels) - zp) * s_out
        return out, ((y >= 0) & (y <= self.levels) & (ok | (xg == 0)) if need_mask else None)

    def _grouped_quantize(self, xg, amax):
        s, _, ok, zp = self._params(xg)
        codes = (torch.round(xg / s) + zp).clamp(0.0, self.levels)
        # codes hold no NaN: NaN (and every element of a zero-scale group) gets the code of 0
        codes = torch.where(ok & ~torch.isnan(xg), codes, zp)
        return {"codes": torch.nan_to_num(codes).to(torch.uint8), "scale": s, "zero_point": zp.to(torch.uint8)}

    def _decode(self, q):
        return q.codes.float()

    fixed_scale_store = "none"

    def group_params(self, xg, amax=None):
        s, s_out, ok, zp = self._params(xg)
        return {"s": s, "s_out": s_out, "zp": zp}

    def quantize_fixed(self, x, params, pin=None):
        s, s_out, zp = params["s"], params["s_out"], params["zp"]
        code = (torch.round(x / s) + zp).clamp(0.0, self.levels)
        if pin is not None:
            code = torch.where(pin > 0, self.levels, torch.where(pin < 0, 0.0, code))
        return (code - zp) * s_out

    def pin_positions(self, xg, params):
        # the largest element keeps the top code (when the range reaches above zero) and the
        # smallest the bottom code (when it reaches below), so min / max re-derive scale and zero point
        zp = params["zp"]
        top = self._pin_argmax(torch.where(torch.isfinite(xg), xg, -float("inf"))) * (zp < self.levels)
        bottom = self._pin_argmax(torch.where(torch.isfinite(xg), -xg, -float("inf"))) * (zp > 0)
        return torch.where(bottom > 0, -1, top).to(torch.int8)

    def dequantize(self, q, dtype=None):
        if q.format != self.name:
            raise ValueError(f"cannot dequantize a {q.format} tensor with format {self.name}")
        with torch.no_grad():
            vg = self.group_view(q.codes.float())
            shape = vg.shape[:-1] + (1,)
            s = q.scale.float().reshape(shape)
            zp = q.zero_point.float().reshape(shape)
            y = self.ungroup((vg - zp) * s, q.codes)
        return y.to(dtype or q.dtype)
