"""Named quantization schemes: which format the weights and the input activations get.

An activation format with one scale for the whole tensor is calibrated (static
scale); block formats take their scales from each block at run time (dynamic),
with NVFP4's per-tensor scale calibrated like a static one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from .. import formats


@dataclass(frozen=True)
class Scheme:
    name: str
    weight: Optional[str]
    activation: Optional[str]
    summary: str

    def weight_format(self):
        return formats.get(self.weight) if self.weight else None

    def activation_format(self):
        return formats.get(self.activation) if self.activation else None


_SCHEMES: Dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme("W8A8-INT8", "int8", "int8_tensor", "8-bit integer weights per channel, 8-bit activations per tensor"),
        Scheme("W4A16-INT4", "int4_g128", None, "4-bit integer weights in groups of 128, activations kept"),
        Scheme("W8A8-FP8", "fp8_e4m3", "fp8_e4m3", "FP8 E4M3 weights and activations, one scale per tensor"),
        Scheme("W4A4-NVFP4", "nvfp4", "nvfp4", "NVFP4 weights and activations (E2M1, blocks of 16, FP8 scales)"),
        Scheme("W4A16-NVFP4", "nvfp4", None, "NVFP4 weights, activations kept"),
        Scheme("W4A4-MXFP4", "mxfp4", "mxfp4", "MXFP4 weights and activations (E2M1, blocks of 32, E8M0 scales)"),
        Scheme("W4A16-MXFP4", "mxfp4", None, "MXFP4 weights (E2M1, blocks of 32, E8M0 scales), activations kept"),
        Scheme("W8A8-MXFP8", "mxfp8", "mxfp8", "MXFP8 weights and activations (E4M3, blocks of 32, E8M0 scales)"),
        Scheme("W3A16-INT3", "int3_g32", None, "3-bit integer weights in groups of 32, activations kept"),
        Scheme("W2A16-INT2", "int2_g32", None, "ternary weights {-1, 0, 1} in groups of 32, activations kept"),
    ]
}

CUSTOM = "custom"


def names() -> List[str]:
    return list(_SCHEMES)


def get(name: str, weight: Optional[str] = None, activation: Optional[str] = None) -> Scheme:
    """The named scheme, or a custom one from explicit formats.

    ``weight`` / ``activation`` override the named scheme's formats; the string
    ``"none"`` leaves that side in high precision.
    """
    if name == CUSTOM:
        base = Scheme(CUSTOM, None, None, "custom weight and activation formats")
    else:
        key = {k.lower(): k for k in _SCHEMES}.get(str(name).lower())
        if key is None:
            raise KeyError(f"unknown scheme {name!r}; known schemes: {', '.join(_SCHEMES)} or 'custom'")
        base = _SCHEMES[key]
    w = base.weight if weight is None else (None if weight == "none" else weight)
    a = base.activation if activation is None else (None if activation == "none" else activation)
    if name == CUSTOM and w is None and a is None:
        raise KeyError("a custom scheme needs a weight format, an activation format, or both")
    for f in (w, a):
        if f:
            formats.get(f)  # raises UnknownFormatError naming the format
    if (w, a) == (base.weight, base.activation):
        return base
    return Scheme(base.name, w, a, f"weights {w or 'kept'}, activations {a or 'kept'}")
