"""TensorQuantizer: one format applied to one tensor, with its switches and scale state."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import formats
from ..formats import Format

_MAX_SAMPLES = 1 << 20  # |x| values kept for percentile calibration


class TensorQuantizer(nn.Module):
    """Fake-quantizes what passes through it.

    Switches:
    - ``enabled``: quantize at all (off = identity);
    - ``calibrating``: record statistics of what passes (values pass unchanged
      while calibrating, so calibration sees the original activations).

    Scale state: ``amax`` is None (scales come from each tensor as it passes:
    dynamic) or a calibrated tensor (static): a scalar for per-tensor scales and
    NVFP4's global scale, one entry per group for weights calibrated by MSE.
    """

    def __init__(self, fmt: Optional[Format | str], role: str = "input"):
        super().__init__()
        self.fmt: Optional[Format] = formats.get(fmt) if isinstance(fmt, str) else fmt
        self.role = role
        self.enabled = self.fmt is not None
        self.calibrating = False
        self.calib_method = "max"
        self.percentile = 99.99
        self.register_buffer("amax", None)
        self._calib_max: Optional[torch.Tensor] = None
        self._calib_samples: list = []
        self._n_samples = 0

    # -- description ---------------------------------------------------------------
    @property
    def format_name(self) -> Optional[str]:
        return self.fmt.name if self.fmt is not None else None

    @property
    def is_static(self) -> bool:
        return self.amax is not None

    def extra_repr(self) -> str:
        state = "off" if not self.enabled else ("static" if self.is_static else "dynamic")
        return f"{self.format_name}, {self.role}, {state}"

    # -- calibration ---------------------------------------------------------------
    def start_calibration(self, method: str = "max", percentile: float = 99.99) -> None:
        self.calibrating = True
        self.calib_method = method
        self.percentile = percentile
        self._calib_max = None
        self._calib_samples = []
        self._n_samples = 0

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        mag = x.detach().float().abs()
        mag = torch.where(torch.isfinite(mag), mag, 0.0)
        m = mag.amax()
        self._calib_max = m if self._calib_max is None else torch.maximum(self._calib_max, m)
        if self.calib_method == "percentile" and self._n_samples < _MAX_SAMPLES:
            flat = mag.reshape(-1)
            take = min(flat.numel(), 1 << 16, _MAX_SAMPLES - self._n_samples)
            if take < flat.numel():
                idx = torch.randint(0, flat.numel(), (take,), device=flat.device,
                                    generator=_sample_generator(flat.device))
                flat = flat[idx]
            self._calib_samples.append(flat.cpu())
            self._n_samples += flat.numel()

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Turn the recorded statistics into a static amax (when the format takes one)."""
        self.calibrating = False
        if self._calib_max is None or self.fmt is None or not self.fmt.calibratable:
            self._calib_samples = []
            return
        amax = self._calib_max
        if self.calib_method == "percentile" and self._calib_samples:
            samples = torch.cat(self._calib_samples)
            amax = torch.quantile(samples, self.percentile / 100.0).to(amax.device)
        self.set_amax(amax)
        self._calib_samples = []
        self._calib_max = None

    def set_amax(self, amax: Optional[torch.Tensor]) -> None:
        if amax is None:
            self.amax = None
            return
        amax = amax.detach().float().clone()
        if isinstance(self.amax, nn.Parameter):
            with torch.no_grad():
                self.amax.copy_(amax.to(self.amax.device).reshape(self.amax.shape))
        else:
            self.amax = amax

    @property
    def learnable(self) -> bool:
        return isinstance(self.amax, nn.Parameter)

    def enable_learnable_scale(self) -> bool:
        """Turn a calibrated amax into a trainable Parameter (LSQ); False where the format cannot."""
        if self.amax is None or self.fmt is None or self.fmt.lsq_divisor is None:
            return False
        if not self.learnable:
            value = self.amax
            del self._buffers["amax"]
            self.amax = nn.Parameter(value)
        return True

    # -- forward -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self._observe(x)
            return x
        if not self.enabled or self.fmt is None:
            return x
        amax = self.amax
        if self.learnable:
            amax = amax.clamp(min=1e-8)  # a learned scale must stay positive
        return self.fmt.fake_quant(x, amax)


_generators: dict = {}


def _sample_generator(device: torch.device) -> torch.Generator:
    """A fixed-seed generator per device, so percentile calibration is repeatable."""
    g = _generators.get(device)
    if g is None:
        g = torch.Generator(device=device).manual_seed(1234)
        _generators[device] = g
    return g
