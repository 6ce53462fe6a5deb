"""Numeric formats by name.

``get(name)`` returns a :class:`Format` with ``fake_quant``, ``quantize`` and
``dequantize``. Names follow one pattern per family, so every width and block
size is reachable:

- ``int{2..8}`` per channel, ``int{b}_tensor``, ``int{b}_g{G}`` per group of G;
  ``int{b}_asym``, ``int{b}_asym_g{G}`` with a zero point;
- ``fp8_e4m3`` / ``fp8_e5m2`` per tensor, ``..._channel``, ``..._g{G}``;
- ``nvfp4``; ``mxfp4``, ``mxfp8`` (E4M3), ``mxfp8_e5m2``, ``mxfp6_e3m2``, ``mxfp6_e2m3``.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Tuple

from .base import Format, FormatInfo, QTensor
from .fp8 import FP8Format
from .integer import AsymIntFormat, IntFormat
from .microscaling import MXFormat, NVFP4Format

__all__ = ["Format", "QTensor", "FormatInfo", "get", "names", "table", "fused_kernels", "UnknownFormatError"]


class UnknownFormatError(ValueError):
    pass


def _granularity(suffix: str):
    if suffix in ("", "_channel"):
        return "channel", None
    if suffix == "_tensor":
        return "tensor", None
    block = int(suffix[2:])
    if block < 1:
        raise UnknownFormatError(f"block size must be positive, got {block}")
    return "block", block


def _int(m):
    gran, block = _granularity(m["gran"] or "")
    cls = AsymIntFormat if m["asym"] else IntFormat
    return cls(m.string, int(m["bits"]), gran, block)


def _fp8(m):
    gran, block = _granularity(m["gran"] if m["gran"] is not None else "_tensor")
    return FP8Format(m.string, m["elem"], gran, block)


# family pattern -> constructor; the only place that maps names to classes
_FAMILIES: List[Tuple[re.Pattern, Callable]] = [
    (re.compile(r"int(?P<bits>\d)(?P<asym>_asym)?(?P<gran>_tensor|_channel|_g\d+)?"), _int),
    (re.compile(r"fp8_(?P<elem>e4m3|e5m2)(?P<gran>_tensor|_channel|_g\d+)?"), _fp8),
    (re.compile(r"nvfp4"), lambda m: NVFP4Format(m.string)),
    (re.compile(r"mxfp4"), lambda m: MXFormat(m.string, "e2m1")),
    (re.compile(r"mxfp8(?:_(?P<elem>e4m3|e5m2))?"), lambda m: MXFormat(m.string, m["elem"] or "e4m3")),
    (re.compile(r"mxfp6_(?P<elem>e3m2|e2m3)"), lambda m: MXFormat(m.string, m["elem"])),
]

# the formats `lowbit formats` lists and the benchmark times
STANDARD = [
    "int8", "int8_tensor", "int4", "int4_g32", "int4_g64", "int4_g128", "int4_asym_g128",
    "int3_g32", "int2_g32", "fp8_e4m3", "fp8_e4m3_channel", "fp8_e5m2",
    "nvfp4", "mxfp4", "mxfp6_e3m2", "mxfp8",
]

_cache: Dict[str, Format] = {}


def get(name: str) -> Format:
    """The format called ``name`` (see the module doc for the naming)."""
    if isinstance(name, Format):
        return name
    key = str(name).strip().lower()
    fmt = _cache.get(key)
    if fmt is not None:
        return fmt
    for pattern, make in _FAMILIES:
        m = pattern.fullmatch(key)
        if m:
            try:
                fmt = make(m)
            except ValueError as exc:
                raise UnknownFormatError(f"format {name!r}: {exc}") from None
            _cache[key] = fmt
            return fmt
    import difflib
    close = difflib.get_close_matches(key, STANDARD, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownFormatError(
        f"unknown format {name!r}.{hint} Known formats: {', '.join(STANDARD)} "
        "(and int2..int8 with _tensor / _g<N> / _asym, fp8_e4m3/_e5m2 with _channel / _g<N>)."
    )


def names() -> List[str]:
    return list(STANDARD)


def table(row: int = 4096) -> List[FormatInfo]:
    rows = []
    for n in STANDARD:
        f = get(n)
        rows.append(FormatInfo(n, f.bits, f.block_label, f.scale_type, round(f.effective_bits(row), 3), f.description))
    return rows


def fused_kernels() -> bool:
    """Whether fake quant of large tensors runs through the compiled kernels (one pass over memory,
    no float32 temporaries of the whole tensor); False when ``LOWBIT_COMPILE=0`` or compiling failed."""
    from . import _compile

    return _compile.mode() != "off" and not _compile._broken
