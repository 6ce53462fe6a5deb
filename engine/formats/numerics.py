"""Element grids and scale arithmetic shared by every format.

Everything here is pure, vectorised torch on float32 so that the same code runs
eagerly on any device and fuses into one kernel under ``torch.compile``.

Conventions pinned down by the tests:
- rounding is to the nearest grid value, ties to the even code;
- values beyond the grid saturate to its largest magnitude (``+-inf`` too);
- NaN stays NaN at its own position and does not leak into its block's scale:
  scales are computed from the finite magnitudes only;
- a scale that would be zero (an all-zero block, a calibrated amax of zero, or
  an amax that underflows) represents only zero: the group comes back as exact
  zeros (NaN still NaN, +-inf saturating to zero), its codes are zero and the
  scale it stores is a neutral 1 (so nothing downstream divides by zero).
"""

from __future__ import annotations

import math

import torch

_EXP_MASK = 0x7F800000


def finite_abs(x: torch.Tensor) -> torch.Tensor:
    """|x| with NaN and +-inf replaced by 0, so they do not set a scale."""
    return torch.where(torch.isfinite(x), x.abs(), 0.0)


def round_int(y: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Saturate to [lo, hi], then round half to even onto the integers."""
    return torch.round(y.clamp(lo, hi))


def round_minifloat(y: torch.Tensor, mbits: int, emin: int, maxval: float) -> torch.Tensor:
    """Round float32 ``y`` onto a sign-magnitude minifloat grid, ties to even.

    The grid has ``mbits`` mantissa bits, smallest normal exponent ``emin``
    (subnormals below it) and largest finite magnitude ``maxval``; values beyond
    saturate. Works for E4M3 (3, -6, 448), E5M2 (2, -14, 57344), E2M1 (1, 0, 6),
    E3M2 (2, -2, 28) and E2M3 (3, 0, 7.5).

    The quantum of ``y``'s binade is 2**(floor(log2|y|) - mbits), read straight
    from the float32 exponent bits (no log, so no off-by-one near powers of two),
    and never smaller than the subnormal quantum 2**(emin - mbits). Dividing and
    multiplying by a power of two is exact, so ``torch.round`` (half to even)
    does the whole rounding; a carry into the next binade lands on an even code.
    """
    y = y.clamp(-maxval, maxval)
    if torch.compiler.is_compiling():
        # y * 2**-k is y / 2**k exactly (both are the correctly rounded y * 2**-k, and every
        # quantum's reciprocal is a normal float32), and a multiply is much cheaper than a divide
        quantum, inverse = _quantum_by_comparison(y.abs(), mbits, emin, maxval, with_inverse=True)
        return torch.round(y * inverse) * quantum
    binade = (y.view(torch.int32) & _EXP_MASK).view(torch.float32)
    quantum = torch.clamp(binade * (2.0 ** -mbits), min=2.0 ** (emin - mbits))
    return torch.round(y / quantum) * quantum


def _quantum_by_comparison(a: torch.Tensor, mbits: int, emin: int, maxval: float, with_inverse: bool = False):
    """The same quantum as the exponent-bit reading, from one comparison per binade of the grid.

    Inside ``torch.compile`` this is the faster lowering: the float-to-int bit view
    keeps the CPU code generator from vectorising the loop (about 6x slower on E2M1
    elements), while comparisons and selects vectorise. Above the smallest normal
    binade each threshold 2**e that |y| reaches doubles the quantum; below it the
    subnormal quantum holds. NaN compares false everywhere and keeps the smallest
    quantum, which leaves it NaN as before. Exactly equal to the bit reading
    (tests compare the two over every binade and its edges). ``with_inverse``: also
    1 / quantum (a power of two, exact), selected by the same comparisons.
    """
    emax = math.floor(math.log2(maxval))
    quantum = torch.full_like(a, 2.0 ** (emin - mbits))
    inverse = torch.full_like(a, 2.0 ** (mbits - emin)) if with_inverse else None
    for e in range(emin + 1, emax + 1):
        reached = a >= 2.0 ** e
        quantum = torch.where(reached, 2.0 ** (e - mbits), quantum)
        if with_inverse:
            inverse = torch.where(reached, 2.0 ** (mbits - e), inverse)
    return (quantum, inverse) if with_inverse else quantum


def safe_scale(s: torch.Tensor) -> torch.Tensor:
    """Replace zero (or negative / NaN) scales by 1: such blocks hold only zeros."""
    return torch.where(s > 0, s, 1.0)


def split_scale(s: torch.Tensor):
    """``(divisor, multiplier, ok)`` for a raw scale ``s``.

    Where ``s > 0`` both are ``s``. Elsewhere (zero, negative or NaN) the group
    can represent nothing but zero: divide by a neutral 1 (no inf / NaN from
    0 / 0) and multiply the rounded elements by 0, so the group dequantizes to
    zeros whatever it held (NaN stays NaN).
    """
    ok = s > 0
    return torch.where(ok, s, 1.0), torch.where(ok, s, 0.0), ok


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) for positive normal float32 ``a``, as int32; 0 and subnormals give -127."""
    return ((a.view(torch.int32) >> 23) & 0xFF) - 127


def exp2_int(k: torch.Tensor) -> torch.Tensor:
    """2**k as float32 for integer k in [-127, 127], built from bits (exact)."""
    k = k.to(torch.int32)
    normal = ((k.clamp(min=-126) + 127) << 23).view(torch.float32)
    return torch.where(k < -126, normal * 0.5, normal)


def e4m3_round(y: torch.Tensor) -> torch.Tensor:
    """Saturating round to the FP8 E4M3 grid, returned as float32."""
    return round_minifloat(y, 3, -6, 448.0)
