"""QuantLinear: an nn.Linear whose forward fake-quantizes its weight and its input.

Conversion swaps the class of the existing module in place, so the module keeps
its own weight and bias Parameters (no copies), its device, dtype and hooks, and
every reference to it stays valid. ``restore`` swaps it back.

``pre_quant_scale`` (None unless set): a per-input-channel multiplier of the input, applied
before the input quantizer and the matmul whether quantization is on or off. It carries an
AWQ scale that no preceding module can absorb (BERT's FFN down projection reads GELU's
output): the weight holds W * s, the input is multiplied by 1 / s, so the full-precision
output is unchanged and only what quantization loses differs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..formats import Format
from .quantizer import TensorQuantizer


class QuantLinear(nn.Linear):
    weight_quantizer: TensorQuantizer
    input_quantizer: TensorQuantizer

    @classmethod
    def convert(cls, linear: nn.Linear, weight_fmt: Optional[Format], input_fmt: Optional[Format]) -> "QuantLinear":
        if isinstance(linear, QuantLinear):
            raise ValueError("layer is already quantized")
        if type(linear) is not nn.Linear:
            raise TypeError(f"only nn.Linear layers can be converted, not {type(linear).__name__}")
        linear.__class__ = cls
        linear.weight_quantizer = TensorQuantizer(weight_fmt, "weight").to(linear.weight.device)
        linear.input_quantizer = TensorQuantizer(input_fmt, "input").to(linear.weight.device)
        linear.register_buffer("pre_quant_scale", None)
        return linear

    def restore(self) -> nn.Linear:
        p = self._buffers.pop("pre_quant_scale", None)
        if p is not None:  # back to the plain layer: the input scale goes into the weight's columns
            with torch.no_grad():
                self.weight.mul_(p.to(self.weight.dtype))
        del self.weight_quantizer
        del self.input_quantizer
        self.__class__ = nn.Linear
        return self

    def set_pre_quant_scale(self, scale: Optional[torch.Tensor]) -> None:
        """Set (or, with None, drop) the input multiplier: one positive value per input feature."""
        if scale is None:
            self._buffers["pre_quant_scale"] = None
            return
        self._buffers["pre_quant_scale"] = scale.detach().to(self.weight.device, torch.float32).reshape(
            self.in_features).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a saved input multiplier needs its buffer to exist before it can be loaded
        key = prefix + "pre_quant_scale"
        if key in state_dict and self._buffers.get("pre_quant_scale") is None:
            self._buffers["pre_quant_scale"] = torch.empty(self.in_features, device=self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def quantized_weight(self) -> torch.Tensor:
        """The weight exactly as the forward pass uses it."""
        return self.weight_quantizer(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self._buffers.get("pre_quant_scale")
        if p is not None:
            x = x * p.to(x.dtype)
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight={self.weight_quantizer.format_name}, input={self.input_quantizer.format_name}")
