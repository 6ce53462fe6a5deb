"""Block-scaled floating-point formats: NVFP4 and the OCP MX v1.0 family.

NVFP4: E2M1 elements in blocks of 16, each block scale an FP8 E4M3 number, under
one fp32 per-tensor scale s2 = amax / (6 * 448):
    s_b = e4m3(clamp((block_amax / 6) / s2, 2**-9, 448)),   x_hat = e2m1(x / (s_b * s2)) * s_b * s2

MX (OCP Microscaling v1.0): blocks of 32 share a power-of-two E8M0 scale
    X = 2**clamp(floor(log2(block_amax)) - emax_elem, -127, 127)
and the elements x / X are rounded to the element format, saturating.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .base import Format
from .fp8 import FP8_ELEMENTS
from .numerics import e4m3_round, exp2_int, finite_abs, floor_log2, round_minifloat, safe_scale, split_scale

NVFP4_GLOBAL = 6.0 * 448.0
E4M3_MIN_SUBNORMAL = 2.0 ** -9

# element -> (exponent bits, mantissa bits, smallest normal exponent, largest magnitude, emax)
MX_ELEMENTS = {
    "e2m1": (2, 1, 0, 6.0, 2),
    "e3m2": (3, 2, -2, 28.0, 4),
    "e2m3": (2, 3, 0, 7.5, 2),
    "e4m3": (4, 3, -6, 448.0, 8),
    "e5m2": (5, 2, -14, 57344.0, 15),
}


@lru_cache(maxsize=None)
def _positive_grid(ebits: int, mbits: int) -> tuple:
    """Magnitudes of the codes 0 .. 2**(ebits+mbits) - 1 of a small minifloat (no inf/NaN codes)."""
    bias = 2 ** (ebits - 1) - 1
    values = []
    for code in range(2 ** (ebits + mbits)):
        e, m = code >> mbits, code & ((1 << mbits) - 1)
        if e == 0:
            values.append(m * 2.0 ** (1 - bias - mbits))
        else:
            values.append((1 + m / 2 ** mbits) * 2.0 ** (e - bias))
    return tuple(values)


def minifloat_encode(v: torch.Tensor, ebits: int, mbits: int) -> torch.Tensor:
    """uint8 codes (sign bit above the magnitude bits) of values already on the grid."""
    grid = torch.tensor(_positive_grid(ebits, mbits), dtype=torch.float32, device=v.device)
    idx = torch.searchsorted(grid, torch.nan_to_num(v.abs()).contiguous())
    return idx.to(torch.uint8) | ((v < 0).to(torch.uint8) << (ebits + mbits))


def minifloat_decode(codes: torch.Tensor, ebits: int, mbits: int) -> torch.Tensor:
    pos = _positive_grid(ebits, mbits)
    table = torch.tensor(pos + tuple(-p for p in pos), dtype=torch.float32, device=codes.device)
    return table[codes.long()]


class NVFP4Format(Format):
    calibratable = True  # a calibrated amax sets the per-tensor scale s2
    has_tensor_scale = True

    def __init__(self, name: str = "nvfp4"):
        self.name, self.bits, self.granularity, self.block = name, 4, "block", 16
        self.scale_type = "e4m3 x fp32"
        self.scale_bits = 8
        self.description = "E2M1 elements, blocks of 16 with an FP8 E4M3 scale, under an fp32 tensor scale"

    def _amax_grouped(self, amax, xg):
        if amax is None:
            return None
        return amax.detach().float().to(xg.device).reshape(-1)[:1].reshape([1] * xg.dim())

    def _scales(self, xg, amax):
        """(a_t, s_b, s2, divisor, multiplier, ok); a zero s2 or s_b * s2 zeroes the block."""
        block_amax = finite_abs(xg).amax(-1, keepdim=True)
        # the tensor amax is the largest block amax (the same number; one pass less over x)
        a_t = block_amax.amax() if amax is None else amax
        s2_raw = a_t / NVFP4_GLOBAL
        s2 = safe_scale(s2_raw)
        ratio = (block_amax / 6.0) / s2
        sb = e4m3_round(ratio.clamp(E4M3_MIN_SUBNORMAL, 448.0))
        s, s_out, ok = split_scale(sb * s2)
        ok = ok & (s2_raw > 0)
        return a_t, sb, s2, s, torch.where(ok, s_out, 0.0), ok

    def _grouped_fake_quant(self, xg, amax, need_mask):
        a_t, sb, _, s, s_out, ok = self._scales(xg, amax)
        y = xg / s
        out = round_minifloat(y, 1, 0, 6.0) * s_out
        mask = None
        if need_mask:
            # A block scale of 448 makes the clip threshold 6 * 448 * amax / 2688 = amax
            # exactly: compare there in x to keep rounding noise in s from clipping the
            # element that set the tensor scale.
            mask = torch.where(sb == 448.0, xg.abs() <= a_t, y.abs() <= 6.0) & (ok | (xg == 0))
        return out, mask

    def _grouped_quantize(self, xg, amax):
        _, sb, s2, s, _, ok = self._scales(xg, amax)
        q = round_minifloat(xg / s, 1, 0, 6.0) * ok.float()
        return {"codes": minifloat_encode(q, 2, 1), "scale": sb.to(torch.float8_e4m3fn), "scale2": s2.reshape(())}

    def _decode(self, q):
        return minifloat_decode(q.codes, 2, 1)

    def _dequant_scale(self, q):
        return safe_scale(q.scale.float() * q.scale2.float())

    fixed_scale_store = "tensor"

    def group_params(self, xg, amax=None):
        # one tensor amax, or one per row where several layers are rounded as one matrix
        if amax is not None:
            amax = amax.detach().float().to(xg.device)
            amax = amax.reshape([1] * xg.dim()) if amax.numel() == 1 else amax.reshape(xg.shape[:-1] + (1,))
        _, _, _, s, s_out, _ = self._scales(xg, amax)
        return {"s": s, "s_out": s_out}

    def quantize_fixed(self, x, params, pin=None):
        out = round_minifloat(x / params["s"], 1, 0, 6.0) * params["s_out"]
        if pin is not None:
            # the block's largest element on the top code 6 makes its block scale come back unchanged
            top = torch.where(x < 0, -6.0, 6.0) * params["s_out"]
            out = torch.where(pin > 0, top, out)
        return out

    def pin_positions(self, xg, params):
        return self._pin_argmax(finite_abs(xg))


class MXFormat(Format):
    calibratable = False

    def __init__(self, name: str, element: str):
        self.name, self.granularity, self.block = name, "block", 32
        self.element = element
        self.ebits, self.mbits, self.emin, self.maxval, self.emax = MX_ELEMENTS[element]
        self.bits = 1 + self.ebits + self.mbits
        self.scale_type = "e8m0"
        self.scale_bits = 8
        self.description = f"OCP MX: {element.upper()} elements, blocks of 32 sharing a power-of-two E8M0 scale"

    def _exponent(self, xg):
        a = finite_abs(xg).amax(-1, keepdim=True)
        return (floor_log2(a) - self.emax).clamp(-127, 127)

    def _grouped_fake_quant(self, xg, amax, need_mask):
        s = exp2_int(self._exponent(xg))
        y = xg / s
        out = round_minifloat(y, self.mbits, self.emin, self.maxval) * s
        return out, (y.abs() <= self.maxval if need_mask else None)

    def _grouped_quantize(self, xg, amax):
        k = self._exponent(xg)
        q = round_minifloat(xg / exp2_int(k), self.mbits, self.emin, self.maxval)
        if self.bits == 8:
            codes = q.to(FP8_ELEMENTS[self.element][3])
        else:
            codes = minifloat_encode(q, self.ebits, self.mbits)
        return {"codes": codes, "scale": (k + 127).to(torch.uint8)}

    def _decode(self, q):
        if self.bits == 8:
            return q.codes.float()
        return minifloat_decode(q.codes, self.ebits, self.mbits)

    def _dequant_scale(self, q):
        return exp2_int(q.scale.to(torch.int32) - 127)

    fixed_scale_store = "none"

    def group_params(self, xg, amax=None):
        return {"s": exp2_int(self._exponent(xg))}

    def quantize_fixed(self, x, params, pin=None):
        s = params["s"]
        y = round_minifloat(x / s, self.mbits, self.emin, self.maxval)
        if pin is not None:
            # the block's largest element stays in the top binade, so floor(log2(amax)) is unchanged
            floor = float(2 ** self.emax)
            lifted = torch.where(x < 0, -1.0, 1.0) * torch.clamp(y.abs(), min=floor)
            y = torch.where(pin > 0, lifted, y)
        return y * s

    def pin_positions(self, xg, params):
        return self._pin_argmax(finite_abs(xg))
