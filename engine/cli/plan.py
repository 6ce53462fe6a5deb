"""``lowbit plan RECIPE``: the memory plan of a recipe, per stage and device, before anything loads."""

from __future__ import annotations

import json
import re

from ..errors import LowbitError
from ..pipeline.plan import check_fits, plan_recipe
from ..recipe import Recipe
from . import paths

_SIZE = re.compile(r"^\s*([0-9.]+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str, flag: str) -> int:
    """'24GB', '24 GiB', '80G', '1500MB' -> bytes (powers of 1024)."""
    m = _SIZE.match(text or "")
    if not m:
        raise LowbitError(f"{flag} {text!r} is not a size; write it like 24GB or 80GiB")
    unit = (m.group(2) or "B").upper()[0]
    return int(float(m.group(1)) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])


def recipe_plan(args):
    recipe = Recipe.load(paths.recipe_file(args.recipe, "RECIPE"))
    paths.model_folder(recipe.model.path, "model.path")
    device = getattr(args, "device", None)
    capacity = None
    if getattr(args, "memory", None):
        capacity = {device or ("cuda:0" if recipe.device.startswith("cuda") else "cpu"): parse_size(args.memory, "--memory")}
        if device is None:
            device = next(iter(capacity))
    return recipe, plan_recipe(recipe, device=device, capacity=capacity)


def show_plan(plan, as_json: bool) -> None:
    print(json.dumps(plan.to_dict(), indent=2) if as_json else plan.text())


def cmd_plan(args) -> int:
    _, plan = recipe_plan(args)
    show_plan(plan, args.json)
    if args.check:
        check_fits(plan)
    return 0


def register(sub) -> None:
    p = sub.add_parser("plan", help="the memory plan of a recipe: each stage's peak per device, and what each knob saves")
    p.add_argument("recipe", help="recipe file")
    p.add_argument("--json", action="store_true", help="print {stages: [{name, peak_bytes, ...}], total_peak_bytes, ...}")
    p.add_argument("--device", help="plan for this device instead of the recipe's (cpu, cuda, cuda:1)")
    p.add_argument("--memory", help="plan for a device with this much memory (e.g. 24GB) instead of this machine's")
    p.add_argument("--check", action="store_true", help="exit with an error (2) when the run would not fit")
    p.set_defaults(func=cmd_plan)
