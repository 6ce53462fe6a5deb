"""Defaults the window starts with: the built-in demo, when no model is given."""

from __future__ import annotations

from typing import Optional


def default_model_path() -> Optional[str]:
    """The demo model's folder (None when the project ships without it)."""
    from engine.io.demo import DEMO_MODEL_DIR, demo_available

    return str(DEMO_MODEL_DIR) if demo_available() else None


def default_recipe_path() -> Optional[str]:
    """A recipe with the demo model, the demo data and the demo's scheme and mode preselected.

    Written into the cache folder (the data files are made from the Python
    installation's pydoc topics at that moment), so the window opens it like
    any recipe the user saved.
    """
    from engine.io.demo import DEMO_MODEL_DIR, cache_dir, demo_available, demo_data, demo_recipe_dict
    from engine.recipe import Recipe

    if not demo_available():
        return None
    train, evals = demo_data()
    d = demo_recipe_dict("qad")
    d["model"]["path"] = str(DEMO_MODEL_DIR)
    d["data"]["path"], d["data"]["eval_path"] = str(train), str(evals)
    path = cache_dir() / "demo-recipe.yaml"
    Recipe.from_dict(d).save(path)
    return str(path)
