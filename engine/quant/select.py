"""Which layers get which format: glob patterns on module names, defaults, overrides."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Dict, Iterable, List, Optional, Sequence

from torch import nn

from .. import formats
from . import schemes
from .linear import QuantLinear

# Output heads, embeddings, norms and MoE routers stay in high precision unless asked.
DEFAULT_EXCLUSIONS = ("*lm_head", "*embed*", "*norm*", "*router*", "*.gate", "*classifier*", "*score")


@dataclass
class LayerPlan:
    name: str
    in_features: int
    out_features: int
    weight: Optional[str]
    activation: Optional[str]
    reason: str = ""  # why it is excluded or overridden

    @property
    def quantized(self) -> bool:
        return bool(self.weight or self.activation)

    def to_dict(self) -> Dict:
        return {"name": self.name, "in_features": self.in_features, "out_features": self.out_features,
                "weight": self.weight, "activation": self.activation, "reason": self.reason}


@dataclass
class Override:
    pattern: str
    weight: Optional[str] = None  # None = keep the scheme's; "none" = high precision
    activation: Optional[str] = None


def linear_modules(model: nn.Module) -> List[tuple]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _matches(name: str, pattern: str) -> bool:
    if fnmatchcase(name, pattern):
        return True
    # a bare name also matches as the last part(s) of a dotted module name
    return not pattern.startswith("*") and fnmatchcase(name, f"*.{pattern}")


def plan_layers(
    model: nn.Module,
    scheme: schemes.Scheme,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    default_exclusions: bool = True,
    overrides: Iterable[Override | dict] = (),
) -> tuple:
    """Return (plans, warnings): one LayerPlan per Linear layer, in model order.

    A pattern matches a module name with shell globbing (``*``, ``?``, ``[..]``);
    a pattern without a leading ``*`` also matches the trailing dotted parts, so
    ``down_proj`` means every ``*.down_proj``. Overrides apply in order, the last match wins.
    """
    layers = linear_modules(model)
    names = [n for n, _ in layers]
    overrides = [o if isinstance(o, Override) else Override(**o) for o in overrides]
    warnings: List[str] = []
    for label, patterns in (("include", include), ("exclude", exclude), ("override", [o.pattern for o in overrides])):
        for pat in patterns:
            if not any(_matches(n, pat) for n in names):
                close = difflib.get_close_matches(pat, names, n=3, cutoff=0.3)
                hint = f"; closest layer names: {', '.join(close)}" if close else ""
                warnings.append(f"{label} pattern {pat!r} matches no Linear layer{hint}")
    plans = []
    for name, mod in layers:
        w, a, reason = scheme.weight, scheme.activation, ""
        if not any(_matches(name, p) for p in include):
            w = a = None
            reason = "not included"
        elif default_exclusions and any(_matches(name, p) for p in DEFAULT_EXCLUSIONS):
            w = a = None
            reason = "excluded by default (head, embedding, norm or router)"
        elif any(_matches(name, p) for p in exclude):
            w = a = None
            reason = "excluded"
        for o in overrides:
            if _matches(name, o.pattern):
                if o.weight is not None:
                    w = None if o.weight == "none" else formats.get(o.weight).name
                if o.activation is not None:
                    a = None if o.activation == "none" else formats.get(o.activation).name
                reason = f"override {o.pattern!r}"
        plans.append(LayerPlan(name, mod.in_features, mod.out_features, w, a, reason))
    return plans, warnings


def apply_plan(model: nn.Module, plans: Sequence[LayerPlan]) -> List[str]:
    """Convert the planned layers to QuantLinear in place; returns their names."""
    modules = dict(model.named_modules())
    done = []
    for p in plans:
        if not p.quantized:
            continue
        mod = modules[p.name]
        QuantLinear.convert(mod, formats.get(p.weight) if p.weight else None,
                            formats.get(p.activation) if p.activation else None)
        done.append(p.name)
    return done


def quant_layers(model: nn.Module) -> List[tuple]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]


def remove_quantization(model: nn.Module) -> None:
    for _, m in quant_layers(model):
        m.restore()


def quantizers(model: nn.Module):
    for _, m in quant_layers(model):
        yield m.weight_quantizer
        yield m.input_quantizer


class quantization_disabled:
    """Context manager: run the model as the original (every quantizer off)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._saved: list = []

    def __enter__(self):
        self._saved = [(q, q.enabled) for q in quantizers(self.model)]
        for q, _ in self._saved:
            q.enabled = False
        return self.model

    def __exit__(self, *exc):
        for q, state in self._saved:
            q.enabled = state
        return False


def restore_amax(model: nn.Module, state: Dict, device=None) -> None:
    """Set every quantizer amax found in ``state`` (a saved state dict) on ``model``.

    A quantizer's amax is None until calibrated, so ``load_state_dict`` has no
    buffer to copy it into; this makes the buffers exist first.
    """
    for name, value in state.items():
        if name.endswith("_quantizer.amax"):
            model.get_submodule(name.rsplit(".", 1)[0]).set_amax(value if device is None else value.to(device))
