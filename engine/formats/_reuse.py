"""Reuse of the last fake-quant result when the same tensor comes again, unchanged.

Several layers often read one tensor: q, k and v projections the same normed hidden
state, gate and up projections the MLP's input. Their input quantizers then compute
the same fake quant of the same tensor (same format, same calibrated amax) two or three
times. Fake quantization is a pure, deterministic function of (format, x, amax), so the
second and third calls take the first one's output and STE mask instead of running the
kernel again: bit for bit what they would have computed. Each call still gets its own
output tensor and its own straight-through node, so gradients flow and add up exactly
as before.

The match is strict: the same tensor object (identity, storage, shape, strides, dtype and
version counter, so an in-place change or ``.data`` swap misses), the same format, and
an amax that is the same tensor at the same version or, on the CPU, a scalar of the same
float32 value (reading a GPU scalar would synchronize, so there only identity counts).
The result too must be unmodified since (its version counter). One entry per thread,
dropped as soon as the input tensor is freed, so nothing outlives the tensor it came from.
"""

from __future__ import annotations

import threading
import weakref
from typing import Optional, Tuple

import torch

from . import _compile


class _Entry:
    __slots__ = ("x_ref", "x_key", "fmt_key", "amax_ref", "amax_version", "amax_value", "y", "y_version", "mask")


class _Last(threading.local):
    entry: Optional[_Entry] = None


_last = _Last()


def _tensor_key(x: torch.Tensor) -> tuple:
    return (x.data_ptr(), x.shape, x.stride(), x.dtype, x.device, x._version)


def _scalar_value(amax: torch.Tensor) -> Optional[str]:
    """The exact value of a CPU scalar amax (hex, so -0.0 and 0.0 differ), else None."""
    if amax.device.type != "cpu" or amax.numel() != 1:
        return None
    return float(amax.detach().reshape(())).hex()


def _amax_matches(e: _Entry, amax: Optional[torch.Tensor]) -> bool:
    if amax is None or e.amax_ref is None:
        return amax is None and e.amax_ref is None
    same = e.amax_ref() is amax and e.amax_version == (amax.data_ptr(), amax._version)
    return same or (e.amax_value is not None and e.amax_value == _scalar_value(amax))


def _usable(x: torch.Tensor, amax: Optional[torch.Tensor]) -> bool:
    if type(x) is not torch.Tensor or x.is_inference() or torch.compiler.is_compiling():
        return False  # subclasses (Parameters, DTensor, fakes), inference tensors (no versions), tracing
    return amax is None or (type(amax) is torch.Tensor and not amax.requires_grad and not amax.is_inference())


def _drop(ref) -> None:
    e = _last.entry
    if e is not None and e.x_ref is ref:
        _last.entry = None


def run(fmt, x: torch.Tensor, amax: Optional[torch.Tensor], need_mask: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``_compile.run(fmt, x, amax, need_mask)``, or the last call's result where that is provably the same."""
    if not _usable(x, amax):
        return _compile.run(fmt, x, amax, need_mask)
    fmt_key = (type(fmt), fmt.name)
    e = _last.entry
    if (e is not None and e.x_ref() is x and e.fmt_key == fmt_key and e.x_key == _tensor_key(x)
            and (e.mask is not None or not need_mask) and e.y._version == e.y_version and _amax_matches(e, amax)):
        return e.y.detach(), (e.mask if need_mask else None)
    y, mask = _compile.run(fmt, x, amax, need_mask)
    e = _Entry()
    e.x_ref = weakref.ref(x, _drop)
    e.x_key, e.fmt_key = _tensor_key(x), fmt_key
    e.amax_ref = weakref.ref(amax) if amax is not None else None
    e.amax_version = (amax.data_ptr(), amax._version) if amax is not None else None
    e.amax_value = _scalar_value(amax) if amax is not None else None
    e.y = y.detach()  # shares y's storage and version counter, holds no autograd graph
    e.y_version, e.mask = y._version, mask
    _last.entry = e
    return y, mask


def clear() -> None:
    """Forget the last result (tests; nothing else needs it)."""
    _last.entry = None
