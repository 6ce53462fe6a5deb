"""The README tells the truth: its recipe example is a valid recipe, its test command is CI's."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from engine.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def test_readme_recipe_example_is_valid():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    recipe = Recipe.from_dict(yaml.safe_load(block), require_version=True)
    assert recipe.quant.scheme == "W4A4-NVFP4" and recipe.mode == "qad"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_readme_lists_every_named_scheme():
    from engine.quant import schemes

    readme = (ROOT / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in schemes.names())
