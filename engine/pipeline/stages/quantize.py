"""Stage: choose the layers and wrap them in fake-quantized Linear layers."""

from __future__ import annotations

from ...errors import LowbitError
from ...quant import schemes
from ...quant.select import apply_plan, plan_layers
from ..context import RunContext


def quantize_stage(ctx: RunContext) -> None:
    """Wrap the selected Linear layers in QuantLinear as the recipe's scheme says; report["plan"]."""
    r = ctx.recipe
    try:
        scheme = schemes.get(r.quant.scheme, r.quant.weight, r.quant.activation)
    except (KeyError, ValueError) as exc:
        raise LowbitError(str(exc).strip("\"'")) from None
    plans, warnings = plan_layers(ctx.loaded.model, scheme, r.quant.include, r.quant.exclude,
                                  r.quant.default_exclusions, [o if isinstance(o, dict) else o.__dict__
                                                               for o in r.quant.overrides])
    for w in warnings:
        ctx.log(w, "warning")
    done = apply_plan(ctx.loaded.model, plans)
    if not done:
        raise LowbitError("no layer was selected for quantization: check quant.include / quant.exclude "
                          "(default exclusions skip heads, embeddings, norms and routers)")
    ctx.report["scheme"] = scheme.name
    ctx.report["weight_format"] = scheme.weight
    ctx.report["activation_format"] = scheme.activation
    ctx.report["plan"] = [p.to_dict() for p in plans]
    ctx.log(f"scheme {scheme.name}: {len(done)} of {len(plans)} linear layers quantized "
            f"(weights {scheme.weight or 'kept'}, activations {scheme.activation or 'kept'})")
