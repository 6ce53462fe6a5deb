"""What the window lists about schemes and formats, and the sizes they give (no Qt).

Everything comes from the engine's registries; nothing here knows a format by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

DTYPE_BITS = {"float32": 32, "bfloat16": 16, "float16": 16}


@dataclass
class SchemeRow:
    name: str
    weight: Optional[str]
    activation: Optional[str]
    bits_per_weight: float  # with scales, rows of 4096
    block: str
    scale_type: str
    summary: str


def _block_text(block: str) -> str:
    return {"tensor": "per tensor", "channel": "per channel"}.get(block, f"blocks of {block}")


def scheme_rows() -> List[SchemeRow]:
    from engine import formats
    from engine.quant import schemes

    rows = []
    for name in schemes.names():
        s = schemes.get(name)
        w = formats.get(s.weight) if s.weight else None
        rows.append(SchemeRow(name, s.weight, s.activation, w.effective_bits() if w else 16.0,
                              _block_text(w.block_label) if w else "—", w.scale_type if w else "—", s.summary))
    return rows


def weight_format_choices() -> List[Dict[str, Any]]:
    """[{name, label, description}] for the per-layer format menu."""
    from engine import formats

    return [{"name": r.name, "label": f"{r.name}  ({r.effective_bits:g} bits)",
             "description": f"{r.description}; {_block_text(r.block)}, {r.scale_type} scales"}
            for r in formats.table()]


def effective_bits(fmt: Optional[str], in_features: int) -> Optional[float]:
    if not fmt:
        return None
    from engine import formats

    return formats.get(fmt).effective_bits(in_features)


def model_bytes(n_params: int, dtype: str, layers: Sequence[Dict[str, Any]] = ()) -> float:
    """Bytes of the weights: quantized layers at their format's bits (scales included), the rest at ``dtype``.

    ``layers`` are rows with ``params``, ``in_features`` and a weight ``format``
    (None = kept); their bias stays in ``dtype``, which is ignored here (small).
    """
    hp_bits = DTYPE_BITS.get(dtype, 32)
    total_bits = float(n_params) * hp_bits
    for layer in layers:
        bits = effective_bits(layer.get("format"), int(layer.get("in_features") or 4096))
        if bits is not None:
            total_bits -= layer["params"] * (hp_bits - bits)
    return total_bits / 8.0
