"""A brute-force numpy model of every format in ``engine.formats``.

Written from the numeric specifications (docs and docstrings), not from the
engine: it shares no code with it and imports nothing from ``engine``.

- Element grids are enumerated from their bit patterns (every code is decoded;
  NaN / inf codes are left out) and rounding picks the nearest enumerated value,
  ties to the code whose lowest bit is 0 (the even mantissa, or the even integer),
  magnitudes beyond the grid saturating to its largest value.
- Scale arithmetic runs in float32 step by step as the spec writes it; rounding
  decisions are taken in float64, where every comparison made here is exact.
- amax is taken over the finite values only; NaN stays NaN where it was; +-inf
  saturate; a group whose scale is zero (or underflows to zero) represents only
  zero and returns zeros (keeping NaN).

``reference(name, x, amax=None)`` returns a :class:`Ref` with the fake-quant
output, the straight-through mask, the element codes and the stored scales.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

F32 = np.float32


# --------------------------------------------------------------------------------------
# element grids, decoded from bit patterns
# --------------------------------------------------------------------------------------
def decode_minifloat(code: int, ebits: int, mbits: int, specials: str) -> Optional[float]:
    """Magnitude of the unsigned code ``code`` (exponent field above mantissa field).

    ``specials``: "none" (every code is a number: OCP MX E2M1/E3M2/E2M3), "fn"
    (only all-ones is NaN: E4M3 "fn"), "ieee" (the top exponent holds inf / NaN:
    E5M2). Returns None for codes that are not numbers.
    """
    e_field = (code >> mbits) & ((1 << ebits) - 1)
    m_field = code & ((1 << mbits) - 1)
    top_e = (1 << ebits) - 1
    if specials == "ieee" and e_field == top_e:
        return None
    if specials == "fn" and e_field == top_e and m_field == (1 << mbits) - 1:
        return None
    bias = (1 << (ebits - 1)) - 1
    if e_field == 0:  # subnormal: 0.m * 2**(1 - bias)
        return math.ldexp(m_field, 1 - bias - mbits)
    return math.ldexp((1 << mbits) + m_field, e_field - bias - mbits)


def minifloat_grid(ebits: int, mbits: int, specials: str) -> np.ndarray:
    """Non-negative magnitudes indexed by code (a number code k has magnitude grid[k])."""
    values = []
    for code in range(1 << (ebits + mbits)):
        v = decode_minifloat(code, ebits, mbits, specials)
        if v is not None:
            values.append(v)
    grid = np.array(values, dtype=np.float64)
    assert np.all(np.diff(grid) > 0), "codes of a minifloat grow with their magnitude"
    return grid


ELEMENTS = {
    # name: (exponent bits, mantissa bits, special codes)
    "e4m3": (4, 3, "fn"),
    "e5m2": (5, 2, "ieee"),
    "e2m1": (2, 1, "none"),
    "e3m2": (3, 2, "none"),
    "e2m3": (2, 3, "none"),
}

GRIDS = {name: minifloat_grid(*spec) for name, spec in ELEMENTS.items()}


def int_grid(qmax: int) -> np.ndarray:
    return np.arange(qmax + 1, dtype=np.float64)


def round_to_grid(y, grid: np.ndarray):
    """Nearest grid magnitude to |y| (ties to the even code), saturating, with y's sign.

    ``y``: float32 (or float64 holding float32 values). Returns (value float64 with
    sign, code index int64, tie mask: |y| exactly halfway between two grid values).
    NaN gives NaN and code 0.
    """
    y = np.asarray(y, dtype=np.float64)
    nan = np.isnan(y)
    mag = np.where(nan, 0.0, np.minimum(np.abs(y), grid[-1]))
    lo = np.clip(np.searchsorted(grid, mag, side="right") - 1, 0, len(grid) - 1)
    hi = np.minimum(lo + 1, len(grid) - 1)
    twice, span = 2.0 * mag, grid[lo] + grid[hi]  # exact in float64
    tie = (hi > lo) & (twice == span)
    up = (hi > lo) & ((twice > span) | (tie & (lo % 2 == 1)))
    idx = np.where(up, hi, lo)
    val = np.copysign(grid[idx], y)
    return np.where(nan, np.nan, val), np.where(nan, 0, idx), tie


def round_to_grid_bruteforce(y, grid: np.ndarray):
    """The same decision by comparing against every grid value (to validate the above)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    out = np.empty_like(y)
    for i, v in enumerate(y):
        if np.isnan(v):
            out[i] = np.nan
            continue
        a = min(abs(v), grid[-1])
        d = np.abs(grid - a)
        best = np.flatnonzero(d == d.min())
        k = best[0] if len(best) == 1 else [b for b in best if b % 2 == 0][0]
        out[i] = math.copysign(grid[k], v)
    return out


def rne_int(y, with_ties: bool = False):
    """Round float values to the nearest integer, ties to even (float64, NaN kept)."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        f = np.floor(y)
        d = y - f
        tie = d == 0.5
        up = (d > 0.5) | (tie & (np.mod(f, 2) == 1))
    r = np.where(up, f + 1, f)
    return (r, tie) if with_ties else r


# --------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------
@dataclass
class Spec:
    name: str
    family: str  # "int" | "asym" | "fp8" | "nvfp4" | "mx"
    granularity: str  # "tensor" | "channel" | "block"
    block: Optional[int]
    grid: np.ndarray  # element magnitudes by code
    element: str = ""
    bits: int = 0
    ebits: int = 0
    mbits: int = 0
    emax: int = 0  # MX: exponent of the largest element binade

    @property
    def top(self) -> float:
        return float(self.grid[-1])


def parse(name: str) -> Spec:
    """Decode a format name (my own reading of the naming scheme)."""
    m = re.fullmatch(r"int([2-8])(_asym)?(_tensor|_channel|_g(\d+))?", name)
    if m:
        bits = int(m[1])
        gran = {None: "channel", "_channel": "channel", "_tensor": "tensor"}.get(m[3], "block")
        block = int(m[4]) if m[4] else None
        if m[2]:
            return Spec(name, "asym", gran, block, int_grid(2 ** bits - 1), bits=bits)
        return Spec(name, "int", gran, block, int_grid(2 ** (bits - 1) - 1), bits=bits)
    m = re.fullmatch(r"fp8_(e4m3|e5m2)(_tensor|_channel|_g(\d+))?", name)
    if m:
        gran = {None: "tensor", "_tensor": "tensor", "_channel": "channel"}.get(m[2], "block")
        eb, mb, _ = ELEMENTS[m[1]]
        return Spec(name, "fp8", gran, int(m[3]) if m[3] else None, GRIDS[m[1]], m[1], 8, eb, mb)
    if name == "nvfp4":
        return Spec(name, "nvfp4", "block", 16, GRIDS["e2m1"], "e2m1", 4, 2, 1)
    m = re.fullmatch(r"mxfp4|mxfp8(_e4m3|_e5m2)?|mxfp6_(e3m2|e2m3)", name)
    if m:
        elem = "e2m1" if name == "mxfp4" else (m[2] or (m[1] or "_e4m3")[1:])
        eb, mb, _ = ELEMENTS[elem]
        grid = GRIDS[elem]
        emax = math.floor(math.log2(grid[-1]))
        return Spec(name, "mx", "block", 32, grid, elem, 1 + eb + mb, eb, mb, emax)
    raise KeyError(name)


# --------------------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------------------
def n_blocks(cols: int, block: int) -> int:
    return -(-cols // block)


def to_groups(x: np.ndarray, spec: Spec) -> np.ndarray:
    """[n_groups, group_len] float32; padding of a short last block is NaN (not finite,
    so it never sets a scale) and is cut off again by ``from_groups``."""
    x = np.asarray(x, dtype=F32)
    rows = x.reshape(1, 1) if x.ndim == 0 else x.reshape(-1, x.shape[-1])
    if spec.granularity == "tensor":
        return rows.reshape(1, -1)
    if spec.granularity == "channel":
        return rows
    r, c = rows.shape
    nb = n_blocks(c, spec.block)
    padded = np.full((r, nb * spec.block), np.nan, dtype=F32)
    padded[:, :c] = rows
    return padded.reshape(r * nb, spec.block)


def from_groups(g: np.ndarray, shape, spec: Spec) -> np.ndarray:
    shape = tuple(shape)
    cols = shape[-1] if shape else 1
    if spec.granularity == "block":
        g = g.reshape(-1, n_blocks(cols, spec.block) * spec.block)[:, :cols]
    return g.reshape(shape)


def scale_shape(shape, spec: Spec) -> tuple:
    shape = tuple(shape) or (1,)
    if spec.granularity == "tensor":
        return ()
    if spec.granularity == "channel":
        return shape[:-1] + (1,)
    return shape[:-1] + (n_blocks(shape[-1], spec.block),)


def finite_amax(g: np.ndarray) -> np.ndarray:
    """Largest finite |value| of each group (0 for a group with none), float32 [n, 1]."""
    a = np.where(np.isfinite(g), np.abs(g), F32(0))
    return a.max(axis=-1, keepdims=True).astype(F32)


# --------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------
@dataclass
class Ref:
    y: np.ndarray  # fake-quant output, float32, input shape
    mask: np.ndarray  # straight-through: True where the gradient passes
    q: np.ndarray  # element values in scale units (float64; NaN where x is NaN)
    code_index: np.ndarray  # magnitude code (minifloat) / integer code (asym) per element
    scale: np.ndarray  # stored scale of each group (float32 per-group array, scale_shape)
    extra: dict = field(default_factory=dict)  # scale2, zero_point, sb, k, bound


def _f32(v):
    return np.asarray(v, dtype=F32)


def _sym_scaled(g, divisor, spec: Spec):
    """Round g / divisor (float32 division) on the symmetric grid."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = (g / divisor).astype(F32)
    q, idx, tie = round_to_grid(y, spec.grid)
    return y, q, idx, tie


def reference(name: str, x, amax=None) -> Ref:
    spec = parse(name)
    x = np.asarray(x, dtype=F32)
    shape = x.shape
    g = to_groups(x, spec)
    nan = np.isnan(g)
    zero_x = g == 0
    extra = {}

    if spec.family in ("int", "fp8"):
        top = F32(spec.top)
        if amax is None:
            a = finite_amax(g)
        else:
            a = _f32(amax).reshape(-1)
            a = np.broadcast_to(a.reshape(-1, 1), (g.shape[0], 1)).astype(F32)
        s = (a / top).astype(F32)
        ok = s > 0
        div = np.where(ok, s, F32(1)).astype(F32)
        y, q, idx, tie = _sym_scaled(g, div, spec)
        out = np.where(ok, q * s.astype(np.float64), np.copysign(0.0, g)).astype(F32)
        # exact rounding of q * s in float32 (q * s is exact in float64)
        mask = (np.abs(g) <= a) & (ok | zero_x)
        q = np.where(ok, q, np.copysign(0.0, g))
        q = np.where(nan, np.nan, q)
        idx = np.where(ok, idx, 0)
        stored = div
        extra["bound"] = np.float64(spec.top) * s  # |y| <= top * s
    elif spec.family == "asym":
        if amax is not None:
            raise ValueError("asymmetric formats take no calibrated amax")
        levels = F32(spec.top)
        fin = np.isfinite(g)
        lo = np.minimum(np.where(fin, g, np.inf).min(-1, keepdims=True), 0).astype(F32)
        hi = np.maximum(np.where(fin, g, -np.inf).max(-1, keepdims=True), 0).astype(F32)
        s = ((hi - lo).astype(F32) / levels).astype(F32)
        ok = s > 0
        div = np.where(ok, s, F32(1)).astype(F32)
        zp = np.clip(rne_int((-lo / div).astype(F32)), 0, spec.top)
        with np.errstate(invalid="ignore", over="ignore"):
            k, tie = rne_int((g / div).astype(F32), with_ties=True)  # offset from the zero point
            code = k + zp
        clipped_code = np.clip(code, 0, spec.top)  # NaN stays NaN
        rel = np.where(ok, clipped_code - zp, 0.0)
        out = np.where(nan, np.nan, rel * s.astype(np.float64)).astype(F32)
        mask = (code >= 0) & (code <= spec.top) & (ok | zero_x)
        q = np.where(nan, np.nan, rel)
        idx = np.where(ok & ~nan, clipped_code, zp).astype(np.int64)  # code of 0 for NaN
        stored = div
        extra["zero_point"] = zp
        extra["lo_hi"] = (-zp * s.astype(np.float64), (spec.top - zp) * s.astype(np.float64))
    elif spec.family == "nvfp4":
        e4m3 = GRIDS["e4m3"]
        if amax is None:
            a_t = finite_amax(g.reshape(1, -1)).reshape(())
        else:
            a_t = _f32(amax).reshape(-1)[0]
        s2_raw = F32(a_t / F32(2688.0))
        s2 = s2_raw if s2_raw > 0 else F32(1)
        b_amax = finite_amax(g)
        with np.errstate(over="ignore"):
            ratio = ((b_amax / F32(6)).astype(F32) / s2).astype(F32)
        ratio = np.clip(ratio, F32(2.0 ** -9), F32(448))
        sb, _, _ = round_to_grid(ratio, e4m3)
        sb = sb.astype(F32)
        s = (sb * s2).astype(F32)
        ok = (s > 0) & (s2_raw > 0)
        div = np.where(s > 0, s, F32(1)).astype(F32)
        y, q, idx, tie = _sym_scaled(g, div, spec)
        out = np.where(ok, q * s.astype(np.float64), np.copysign(0.0, g)).astype(F32)
        # clip threshold: 6 * s; where s_b = 448 it is 6 * 448 * a_t / 2688 = a_t exactly
        mask = np.where(sb == 448, np.abs(g) <= a_t, np.abs(y) <= 6) & (ok | zero_x)
        q = np.where(ok, q, np.copysign(0.0, g))
        q = np.where(nan, np.nan, q)
        idx = np.where(ok, idx, 0)
        stored = sb
        extra["scale2"] = s2
        extra["bound"] = 6.0 * np.where(ok, s, 0).astype(np.float64)
    elif spec.family == "mx":
        if amax is not None:
            raise ValueError("MX formats take no calibrated amax")
        b_amax = finite_amax(g).astype(np.float64)
        # floor(log2(amax)) exactly (frexp works for subnormals too); amax 0 -> -inf -> -127
        mant, ex = np.frexp(b_amax)
        fl = np.where(b_amax > 0, ex - 1, -10 ** 6)
        k = np.clip(fl - spec.emax, -127, 127).astype(np.int64)
        s = np.array([F32(math.ldexp(1.0, int(v))) for v in k.reshape(-1)], dtype=F32).reshape(k.shape)
        y, q, idx, tie = _sym_scaled(g, s, spec)
        out = (q * s.astype(np.float64)).astype(F32)
        mask = np.abs(y) <= spec.top
        stored = (k + 127).astype(np.uint8)
        extra["k"] = k
        extra["bound"] = spec.top * s.astype(np.float64)
    else:  # pragma: no cover
        raise AssertionError(spec.family)

    out = np.where(nan, np.nan, out).astype(F32)
    extra["tie"] = from_groups(tie, shape, spec)
    n_scale = scale_shape(shape, spec)
    ref = Ref(
        y=from_groups(out, shape, spec),
        mask=from_groups(mask, shape, spec),
        q=from_groups(q, shape, spec),
        code_index=from_groups(idx, shape, spec),
        scale=np.asarray(stored).reshape(n_scale),
        extra=extra,
    )
    if "bound" in extra:  # fl(top * s): no output can round beyond it (rounding is monotone)
        bound = np.asarray(extra["bound"], dtype=np.float64).astype(F32)
        extra["bound"] = from_groups(np.broadcast_to(bound, g.shape), shape, spec)
    if "zero_point" in extra:
        extra["zero_point"] = np.asarray(extra["zero_point"]).reshape(n_scale)
        lo_, hi_ = extra.pop("lo_hi")
        extra["lo"] = from_groups(np.broadcast_to(lo_.astype(F32), g.shape), shape, spec)
        extra["hi"] = from_groups(np.broadcast_to(hi_.astype(F32), g.shape), shape, spec)
    return ref
