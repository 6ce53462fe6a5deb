"""Choose between the eager and the ``torch.compile``d fake-quant kernel.

The eager code is the definition; the compiled one is the same code fused into a
single pass over memory (tests check that both agree bit for bit). Compilation
costs seconds once per format and pays off only on large tensors, so small
tensors stay eager. ``LOWBIT_COMPILE=0`` turns compilation off; ``=1`` forces it
even for small tensors. A failure to compile (no C++ compiler, an unsupported
device) falls back to eager once, with a warning, and is not retried.
"""

from __future__ import annotations

import os
import re
import warnings

import torch
import torch.nn.functional as F

MIN_NUMEL = 1 << 18  # below this, kernel launch and guard overhead outweigh fusion
# Training runs the same kernels (with the STE mask) thousands of times, so the
# one-off compile pays off on smaller tensors there.
MIN_NUMEL_TRAINING = 1 << 16

_compiled: dict = {}
_broken = False


def mode() -> str:
    value = os.environ.get("LOWBIT_COMPILE", "auto").strip().lower()
    return {"0": "off", "false": "off", "off": "off", "1": "on", "true": "on", "on": "on"}.get(value, "auto")


def _want_compile(x: torch.Tensor, need_mask: bool = False) -> bool:
    if _broken:
        return False
    m = mode()
    if m == "off":
        return False
    if m == "on":
        return True
    return x.numel() >= (MIN_NUMEL_TRAINING if need_mask else MIN_NUMEL) and x.device.type in ("cpu", "cuda")


def _kernel(fmt, need_mask: bool, cols: int):
    """The compiled kernel for rows of ``cols`` elements (block formats get them already padded)."""
    key = (fmt.name, need_mask, cols)
    fn = _compiled.get(key)
    if fn is None:
        def impl(x, amax):
            return fmt._fake_quant_impl(x, amax, need_mask)

        # Dynamo caches compiled code per code object. One code object per format and row
        # width keeps the width static (a symbolic width made the kernels about 3x slower)
        # and keeps one shape's recompilations from evicting or slowing another's; only the
        # number of rows varies, and it is dynamic from the first call.
        tag = re.sub(r"\W", "_", fmt.name)
        impl.__code__ = impl.__code__.replace(co_name=f"fake_quant_{tag}{'_ste' if need_mask else ''}_{cols}")
        fn = torch.compile(impl, dynamic=None, fullgraph=True)
        _compiled[key] = fn
    return fn


def _run_compiled(fmt, x: torch.Tensor, amax, need_mask: bool):
    # every format groups along the last dimension only, so a 2-D view of rows is the same problem
    cols = x.shape[-1]
    x2 = x.reshape(-1, cols)
    pad = (-cols) % fmt.block if fmt.granularity == "block" else 0
    if pad:
        # the same zero padding as group_view, done here in one copy: padded inside the graph,
        # inductor re-read x through masked loads at every use (1024 x 680 NVFP4: 3.5 -> 2.5 ms)
        x2 = F.pad(x2, (0, pad))
    torch._dynamo.maybe_mark_dynamic(x2, 0)
    y, mask = _kernel(fmt, need_mask, cols)(x2, amax)
    if pad:
        y, mask = y[:, :cols], (mask[:, :cols] if mask is not None else None)
    return y.reshape(x.shape), (mask.reshape(x.shape) if mask is not None else None)


def run(fmt, x: torch.Tensor, amax, need_mask: bool):
    global _broken
    if x.dim() >= 1 and _want_compile(x, need_mask):
        try:
            return _run_compiled(fmt, x, amax, need_mask)
        except Exception as exc:  # compiler missing or unsupported op: eager is always correct
            _broken = True
            warnings.warn(f"torch.compile unavailable for fake quantization ({type(exc).__name__}: {exc}); "
                          "using the eager path", RuntimeWarning, stacklevel=3)
    return fmt._fake_quant_impl(x, amax, need_mask)
