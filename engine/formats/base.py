"""The Format interface, the grouped view every format computes on, and the STE.

A format sees its input as groups that share one scale, laid along the last
dimension (rows of a 2-D weight are output channels):

- ``tensor``:  one group, the whole tensor;
- ``channel``: one group per row (per output channel of a weight, per token of
  an activation);
- ``block``:   consecutive runs of ``block`` elements of each row; a row whose
  length does not divide is padded with zeros (which never change an amax) and
  the padding is dropped again afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from . import _reuse
from .numerics import finite_abs


@dataclass
class QTensor:
    """Real quantized storage: integer or low-precision codes plus their scales.

    ``codes`` has the input's shape. ``scale`` has one entry per group:
    ``[]`` per tensor, ``[*lead, 1]`` per channel, ``[*lead, n_blocks]`` per block.
    Its dtype is the format's scale type (float32, float8_e4m3fn, or uint8 E8M0
    exponents). ``scale2`` is the per-tensor float32 scale of two-level formats
    (NVFP4); ``zero_point`` the offset of asymmetric integer formats.
    """

    format: str
    codes: torch.Tensor
    scale: torch.Tensor
    scale2: Optional[torch.Tensor] = None
    zero_point: Optional[torch.Tensor] = None
    dtype: torch.dtype = torch.float32

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape


class Format:
    """A numeric format: a grid for the elements and a rule for their scales.

    Subclasses implement ``_grouped_fake_quant`` and ``_grouped_quantize`` /
    ``_grouped_dequantize`` on the grouped float32 view; this class handles the
    views, padding, dtype, compilation and the straight-through gradient.
    """

    name: str
    bits: int  # bits of one element code
    granularity: str  # "tensor" | "channel" | "block"
    block: Optional[int] = None
    scale_type: str = "fp32"
    scale_bits: int = 32  # bits of one stored scale
    description: str = ""
    calibratable: bool = True  # whether a calibrated amax can replace the dynamic one
    # D in scale = amax / D, for formats whose scale is that simple; it enables
    # learnable (LSQ-style) scales. None: the scale cannot be learned.
    lsq_divisor: Optional[float] = None

    @property
    def has_tensor_scale(self) -> bool:
        """True when one scale covers the whole tensor, so activations can use a calibrated (static) one."""
        return self.granularity == "tensor"

    # -- descriptive ---------------------------------------------------------------
    def effective_bits(self, row: int = 4096) -> float:
        """Bits per element including scales, for rows of ``row`` elements."""
        if self.granularity == "block":
            extra = self.scale_bits / self.block
        elif self.granularity == "channel":
            extra = self.scale_bits / row
        else:
            extra = 0.0
        return self.bits + extra + self._extra_bits(row)

    def _extra_bits(self, row: int) -> float:
        return 0.0

    @property
    def block_label(self) -> str:
        return str(self.block) if self.granularity == "block" else self.granularity

    def __repr__(self) -> str:
        return f"Format({self.name})"

    # -- grouping ------------------------------------------------------------------
    def group_view(self, x: torch.Tensor) -> torch.Tensor:
        """float32 view of ``x`` as [groups..., group_len] (copying only when padding)."""
        xf = x.float()
        if self.granularity == "tensor":
            return xf.reshape(1, -1)
        if x.dim() == 0:
            xf = xf.reshape(1)
        cols = xf.shape[-1]
        if self.granularity == "channel":
            return xf.reshape(-1, cols)
        pad = (-cols) % self.block
        if pad:
            xf = F.pad(xf, (0, pad))
        return xf.reshape(-1, (cols + pad) // self.block, self.block)

    def ungroup(self, yg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.granularity == "block":
            cols = x.shape[-1] if x.dim() else 1
            yg = yg.reshape(-1, yg.shape[-2] * yg.shape[-1])[:, :cols]
        return yg.reshape(x.shape)

    def n_groups(self, shape) -> int:
        shape = tuple(shape) or (1,)
        if self.granularity == "tensor":
            return 1
        rows = math.prod(shape[:-1])
        if self.granularity == "channel":
            return rows
        return rows * math.ceil(shape[-1] / self.block)

    def scale_shape(self, shape) -> tuple:
        shape = tuple(shape) or (1,)
        if self.granularity == "tensor":
            return ()
        if self.granularity == "channel":
            return shape[:-1] + (1,)
        return shape[:-1] + (math.ceil(shape[-1] / self.block),)

    def amax_of(self, x: torch.Tensor) -> torch.Tensor:
        """The amax a calibrator records for ``x``: a scalar for a tensor-wide scale,
        else one value per group (``scale_shape`` without the trailing 1 of channels)."""
        mag = finite_abs(self.group_view(x))
        if self.has_tensor_scale:
            return mag.amax()
        return mag.amax(-1).reshape(self.scale_shape(x.shape))

    def _amax_grouped(self, amax: Optional[torch.Tensor], xg: torch.Tensor) -> Optional[torch.Tensor]:
        """Bring a calibrated amax to the grouped layout ([..., 1] per group)."""
        if amax is None:
            return None
        if not self.calibratable:
            raise ValueError(f"format {self.name} derives its scales from each block; it takes no calibrated amax")
        amax = amax.detach().float().to(xg.device)
        return amax.reshape(xg.shape[:-1] + (1,)) if amax.numel() > 1 else amax.reshape([1] * xg.dim())

    # -- numerics (grouped float32 view) -------------------------------------------
    def _grouped_fake_quant(self, xg, amax, need_mask: bool):  # -> (y, mask or None)
        raise NotImplementedError

    def _grouped_quantize(self, xg, amax) -> dict:
        raise NotImplementedError

    def _decode(self, q: QTensor) -> torch.Tensor:
        """Element values (float32, in scale units) of the codes."""
        raise NotImplementedError

    def _dequant_scale(self, q: QTensor) -> torch.Tensor:
        """The float32 multiplier of each group, exactly as fake_quant used it."""
        raise NotImplementedError

    def _fake_quant_impl(self, x, amax, need_mask: bool):
        xg = self.group_view(x)
        y, mask = self._grouped_fake_quant(xg, self._amax_grouped(amax, xg), need_mask)
        y = self.ungroup(y, x).to(x.dtype)
        if mask is not None:
            if torch.compiler.is_compiling():
                # int8 rather than bool: the CPU code generator stores a bool result one
                # element at a time (the whole fused kernel ran ~8x slower), an int8 one as a vector
                mask = torch.where(mask, 1, 0).to(torch.int8)
            mask = self.ungroup(mask, x)
        return y, mask

    # -- public API ----------------------------------------------------------------
    def fake_quant(self, x: torch.Tensor, amax: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Quantize then dequantize; same shape and dtype as ``x``.

        The gradient is straight-through: identity where the value lay inside the
        representable range, zero where it was clipped (saturated).
        """
        if not torch.is_floating_point(x):
            raise TypeError(f"{self.name}.fake_quant needs a floating-point tensor, got {x.dtype}")
        if x.numel() == 0:
            return x.clone()
        if torch.is_grad_enabled() and (x.requires_grad or (amax is not None and amax.requires_grad)):
            if amax is not None and amax.requires_grad and self.lsq_divisor is None:
                raise ValueError(f"format {self.name} has no learnable scale")
            return _StraightThrough.apply(x, self, amax)
        return _reuse.run(self, x, amax, False)[0]

    def quantize(self, x: torch.Tensor, amax: Optional[torch.Tensor] = None) -> QTensor:
        if not torch.is_floating_point(x):
            raise TypeError(f"{self.name}.quantize needs a floating-point tensor, got {x.dtype}")
        with torch.no_grad():
            xg = self.group_view(x)
            parts = self._grouped_quantize(xg, self._amax_grouped(amax, xg))
            parts["codes"] = self.ungroup(parts["codes"], x)
            sshape = self.scale_shape(x.shape)
            for key in ("scale", "zero_point"):
                if parts.get(key) is not None:
                    parts[key] = parts[key].reshape(sshape)
            return QTensor(format=self.name, dtype=x.dtype, **parts)

    def dequantize(self, q: QTensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        if q.format != self.name:
            raise ValueError(f"cannot dequantize a {q.format} tensor with format {self.name}")
        with torch.no_grad():
            vg = self.group_view(self._decode(q))
            s = self._dequant_scale(q).float()
            s = s.reshape(vg.shape[:-1] + (1,)) if s.numel() > 1 else s.reshape([1] * vg.dim())
            y = self.ungroup(vg * s, q.codes)
        return y.to(dtype or q.dtype)


    # -- fixed scales (error-compensating rounding: GPTQ) ----------------------------
    # GPTQ fixes each group's scale once, then rounds that group column by column while
    # the columns still to come absorb the error. These three methods split the format's
    # rule into "derive the scales of a group" and "round values under given scales", with
    # the same float32 operations as fake_quant, so a GPTQ result is exactly what
    # fake_quant later computes from it.
    #
    # ``fixed_scale_store`` says how the scales survive into the quantizer:
    # "group": a calibrated amax per group reproduces them (store it);
    # "tensor": a calibrated per-tensor amax plus scales re-derived from each block (NVFP4);
    # "none": the scales are re-derived from each group (MX, asymmetric integers).
    # Where scales are re-derived, ``pin_positions`` marks the elements whose rounded value
    # must stay at the group's top (or bottom) code, so the rule finds the same scale again.
    fixed_scale_store: str = "group"

    def group_params(self, xg: torch.Tensor, amax: Optional[torch.Tensor] = None) -> dict:
        """Scale state of each group of ``xg`` (groups along the last dim, kept as [..., 1])."""
        raise NotImplementedError(f"format {self.name} has no fixed-scale rounding")

    def quantize_fixed(self, x: torch.Tensor, params: dict, pin: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Fake-quantized ``x`` (float32, broadcasting against ``params``) under fixed scales.

        ``pin`` (int8, like x): +1 forces the group's top code (keeping the sign for symmetric
        formats), -1 the bottom code of asymmetric ones; 0 rounds normally.
        """
        raise NotImplementedError(f"format {self.name} has no fixed-scale rounding")

    def pin_positions(self, xg: torch.Tensor, params: dict) -> Optional[torch.Tensor]:
        """int8 marks (like ``xg``) of the elements to pin, or None when the scales are stored."""
        return None

    @staticmethod
    def _pin_argmax(mag: torch.Tensor) -> torch.Tensor:
        pin = torch.zeros_like(mag, dtype=torch.int8)
        return pin.scatter_(-1, mag.argmax(-1, keepdim=True), 1)


class _StraightThrough(torch.autograd.Function):
    """Identity gradient where x was not clipped, zero where it was.

    With a learnable amax (scale s = amax / D), its gradient is LSQ's:
    d x_hat / d amax = (q - u) / D inside the range and sign(u) where clipped,
    with u = x / s and q the rounded element, summed over each scale group.
    """

    @staticmethod
    def forward(ctx, x, fmt: Format, amax):
        y, mask = _reuse.run(fmt, x, amax, True)
        ctx.fmt = fmt
        if amax is not None and amax.requires_grad:
            ctx.save_for_backward(mask, x, y, amax)
        else:
            ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        mask = saved[0]
        # the int8 (bool in eager) 0 / 1 mask multiplies in the gradient's dtype without a converted
        # copy of its own: one pass over memory less, the same products
        grad_x = grad * mask if ctx.needs_input_grad[0] else None
        grad_amax = None
        if len(saved) == 4 and ctx.needs_input_grad[2]:
            _, x, y, amax = saved
            fmt = ctx.fmt
            with torch.no_grad():
                xg, yg = fmt.group_view(x), fmt.group_view(y)
                gg, mg = fmt.group_view(grad), fmt.group_view(mask.float())
                a = fmt._amax_grouped(amax, xg)
                s = torch.where(a > 0, a / fmt.lsq_divisor, 1.0)
                u = xg / s
                d = (yg / s - u * mg) / fmt.lsq_divisor
                g_a = (gg * d).sum(-1, keepdim=True)
                g_a = g_a.sum() if amax.numel() == 1 else g_a
                grad_amax = g_a.reshape(amax.shape).to(amax.dtype)
        return grad_x, None, grad_amax


@dataclass(frozen=True)
class FormatInfo:
    """One row of ``lowbit formats``."""

    name: str
    bits: int
    block: str
    scale_type: str
    effective_bits: float
    description: str = field(default="")
