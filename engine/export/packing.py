"""Bit packing for the export layouts, each with its exact inverse.

Every function is pure torch, works on CPU, and takes or returns plain integer
tensors; which layout uses which packer is decided by the writers.

- ``pack_int_words``: signed b-bit integers (b = 1..8) stored dense in int32
  words, element i of a row at bit i*b counted from the least significant bit,
  values offset by +2**(b-1) so they are unsigned (compressed-tensors
  ``pack-quantized``). A value may straddle two words.
- ``pack_nibbles_last``: 4-bit codes, two per byte along the last dimension,
  element 2i in the low nibble (E2M1 for NVFP4 / MXFP4 in both layouts).
- ``pack_nibbles_rows``: signed 4-bit integers, two per byte along the first
  dimension (output rows), row 2i in the low nibble, two's complement
  (ModelOpt INT4 AWQ).
- ``pack_6bit_last``: 6-bit codes, four per three bytes, little endian
  (compressed-tensors ``mxfp6-pack-quantized``).
"""

from __future__ import annotations

import math

import torch

_WORD = 32


def packed_words(cols: int, bits: int) -> int:
    return math.ceil(cols * bits / _WORD)


def pack_int_words(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 [..., cols] in [-2**(b-1), 2**(b-1) - 1] -> int32 [..., ceil(cols*b/32)]."""
    if not 1 <= bits <= 8:
        raise ValueError(f"can pack 1 to 8 bits per value, not {bits}")
    lead, cols = values.shape[:-1], values.shape[-1]
    v = values.reshape(-1, cols).to(torch.int64) + (1 << (bits - 1))
    if bool(((v < 0) | (v >= (1 << bits))).any()):
        raise ValueError(f"values do not fit in {bits} bits")
    pad = (-cols) % _WORD
    if pad:
        v = torch.nn.functional.pad(v, (0, pad))  # zero bits after the last value
    groups = v.reshape(v.shape[0], -1, _WORD)  # 32 values fill exactly `bits` words
    words = torch.zeros(groups.shape[0], groups.shape[1], bits, dtype=torch.int64)
    for j in range(_WORD):
        start = j * bits
        w, off = divmod(start, _WORD)
        words[:, :, w] |= (groups[:, :, j] << off) & 0xFFFFFFFF
        spill = off + bits - _WORD
        if spill > 0:
            words[:, :, w + 1] |= groups[:, :, j] >> (bits - spill)
    words = words.reshape(groups.shape[0], -1)[:, : packed_words(cols, bits)]
    words = torch.where(words >= (1 << 31), words - (1 << 32), words).to(torch.int32)
    return words.reshape(*lead, -1)


def unpack_int_words(words: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_int_words`: int32 words -> int8 [..., cols]."""
    if words.dtype != torch.int32:
        raise ValueError(f"packed words must be int32, got {words.dtype}")
    lead = words.shape[:-1]
    w = words.reshape(-1, words.shape[-1]).to(torch.int64) & 0xFFFFFFFF
    n_groups = math.ceil(cols / _WORD)
    need = n_groups * bits
    if w.shape[1] < packed_words(cols, bits):
        raise ValueError(f"{w.shape[1]} words cannot hold {cols} values of {bits} bits")
    if w.shape[1] < need:
        w = torch.nn.functional.pad(w, (0, need - w.shape[1]))
    w = w[:, :need].reshape(w.shape[0], n_groups, bits)
    out = torch.empty(w.shape[0], n_groups, _WORD, dtype=torch.int64)
    mask = (1 << bits) - 1
    for j in range(_WORD):
        start = j * bits
        k, off = divmod(start, _WORD)
        val = w[:, :, k] >> off
        spill = off + bits - _WORD
        if spill > 0:
            val = val | (w[:, :, k + 1] << (bits - spill))
        out[:, :, j] = val & mask
    out = out.reshape(w.shape[0], -1)[:, :cols] - (1 << (bits - 1))
    return out.to(torch.int8).reshape(*lead, cols)


def pack_nibbles_last(codes: torch.Tensor) -> torch.Tensor:
    """uint8 4-bit codes [..., n] (n even) -> uint8 [..., n/2]; element 2i in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"nibble packing needs an even last dimension, got {codes.shape[-1]}")
    c = codes.to(torch.uint8) & 0x0F
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles_last(packed: torch.Tensor) -> torch.Tensor:
    p = packed.to(torch.uint8)
    return torch.stack((p & 0x0F, p >> 4), dim=-1).reshape(*p.shape[:-1], -1)


def pack_nibbles_rows(values: torch.Tensor) -> torch.Tensor:
    """int8 [out, in] in [-8, 7] (out even) -> uint8 [out/2, in]; row 2i in the low nibble."""
    if values.shape[0] % 2:
        raise ValueError(f"row-pair packing needs an even number of rows, got {values.shape[0]}")
    if bool(((values < -8) | (values > 7)).any()):
        raise ValueError("values do not fit in a signed 4-bit integer")
    n = values.to(torch.int16) & 0x0F  # two's complement nibble
    return (n[0::2] | (n[1::2] << 4)).to(torch.uint8)


def unpack_nibbles_rows(packed: torch.Tensor) -> torch.Tensor:
    p = packed.to(torch.int16)
    lo, hi = p & 0x0F, (p >> 4) & 0x0F
    rows = torch.stack((lo, hi), dim=1).reshape(-1, p.shape[-1])
    return torch.where(rows >= 8, rows - 16, rows).to(torch.int8)


def pack_6bit_last(codes: torch.Tensor) -> torch.Tensor:
    """uint8 6-bit codes [..., n] (n % 4 == 0) -> uint8 [..., 3n/4], four codes per 3 bytes, little endian."""
    if codes.shape[-1] % 4:
        raise ValueError(f"6-bit packing needs a last dimension divisible by 4, got {codes.shape[-1]}")
    c = codes.to(torch.int32).reshape(*codes.shape[:-1], -1, 4) & 0x3F
    word = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    out = torch.stack((word, word >> 8, word >> 16), dim=-1) & 0xFF
    return out.to(torch.uint8).reshape(*codes.shape[:-1], -1)


def unpack_6bit_last(packed: torch.Tensor) -> torch.Tensor:
    b = packed.to(torch.int32).reshape(*packed.shape[:-1], -1, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    codes = torch.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], dim=-1)
    return codes.to(torch.uint8).reshape(*packed.shape[:-1], -1)
