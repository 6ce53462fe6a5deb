"""QuantLinear: an nn.Linear whose forward fake-quantizes its weight and its input.

Conversion swaps the class of the existing module in place, so the module keeps
its own weight and bias Parameters (no copies), its device, dtype and hooks, and
every reference to it stays valid. ``restore`` swaps it back.
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
        return linear

    def restore(self) -> nn.Linear:
        del self.weight_quantizer
        del self.input_quantizer
        self.__class__ = nn.Linear
        return self

    def quantized_weight(self) -> torch.Tensor:
        """The weight exactly as the forward pass uses it."""
        return self.weight_quantizer(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight={self.weight_quantizer.format_name}, input={self.input_quantizer.format_name}")
