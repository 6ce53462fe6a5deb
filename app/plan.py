"""Which format each layer will get, previewed from the model's layer list (no weights).

The engine's own ``plan_layers`` decides, on a skeleton of empty ``nn.Linear``
modules on the meta device, so the preview follows the engine's rules exactly
(default exclusions, include / exclude patterns, overrides, last match wins).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

EXCLUDE = "none"  # override value meaning "keep this side in high precision"


def skeleton(layers: Sequence[Dict[str, Any]]):
    """An ``nn.Module`` tree holding one meta-device ``nn.Linear`` per listed ``Linear`` layer."""
    from torch import nn

    root = nn.Module()
    for layer in layers:
        if layer.get("type", "Linear") != "Linear":
            continue  # Conv1D and friends: plan_layers only converts nn.Linear
        *parents, leaf = layer["name"].split(".")
        node = root
        for part in parents:
            child = node._modules.get(part)
            if child is None:
                child = nn.Module()
                node.add_module(part, child)
            node = child
        node.add_module(leaf, nn.Linear(layer["in_features"], layer["out_features"], bias=False, device="meta"))
    return root


def preview(model, quant: Dict[str, Any]) -> Tuple[List[Any], List[str]]:
    """(LayerPlans, warnings) for ``quant`` (the recipe's quant section as a dict).

    ``model`` is a :func:`skeleton` (built once per model, off the GUI thread) or a real model.
    """
    from engine.quant import schemes
    from engine.quant.select import plan_layers

    scheme = schemes.get(quant.get("scheme") or "W8A8-INT8", quant.get("weight"), quant.get("activation"))
    return plan_layers(model, scheme, quant.get("include") or ["*"], quant.get("exclude") or [],
                       quant.get("default_exclusions", True), quant.get("overrides") or [])


def layer_choice(quant: Dict[str, Any], name: str) -> Optional[str]:
    """The per-layer choice made in the window for ``name``: None (scheme), EXCLUDE, or a weight format."""
    for o in reversed(quant.get("overrides") or []):
        if o.get("pattern") == name:
            return EXCLUDE if o.get("weight") == EXCLUDE and o.get("activation") == EXCLUDE else o.get("weight")
    if name in (quant.get("exclude") or []):
        return EXCLUDE
    return None


def with_layer_choice(quant: Dict[str, Any], names: Sequence[str], choice: Optional[str]) -> Dict[str, Any]:
    """A copy of ``quant`` where each of ``names`` follows the scheme (None), is excluded, or gets a weight format.

    An exclusion is an entry in ``quant.exclude``; a format is an override whose
    pattern is the exact layer name. Choices made elsewhere (patterns typed in
    a recipe file) are kept.
    """
    names = set(names)
    exclude = [p for p in (quant.get("exclude") or []) if p not in names]
    overrides = [dict(o) for o in (quant.get("overrides") or []) if o.get("pattern") not in names]
    for name in sorted(names):
        if choice == EXCLUDE:
            exclude.append(name)
        elif choice:
            overrides.append({"pattern": name, "weight": choice, "activation": None})
    return {**quant, "exclude": exclude, "overrides": overrides}
