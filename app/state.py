"""The recipe the window is editing, as plain data with change notifications.

Panels read and write dotted keys (``train.steps``); the tree is checked by
``engine.recipe.Recipe`` only when a run starts or the file is saved, so a
half-filled window (no model yet) is a normal state, not an error.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from PySide6.QtCore import QObject, Signal

from engine.recipe import Recipe, schema


def default_tree() -> Dict[str, Any]:
    """Every key at its schema default; ``model.path`` empty until a model is chosen."""
    tree: Dict[str, Any] = {}
    for info in schema():
        if "[]" in info.key:
            continue
        section, _, name = info.key.rpartition(".")
        target = tree.setdefault(section, {}) if section else tree
        target[name] = copy.deepcopy(info.default)
    tree["model"]["path"] = ""
    return tree


_DOCS: Dict[str, str] = {}


def doc(key: str) -> str:
    """What a recipe key means, from the engine's schema (for tooltips)."""
    if not _DOCS:
        _DOCS.update({info.key: info.doc for info in schema()})
    return _DOCS.get(key, "")


class RecipeState(QObject):
    """Holds the recipe tree; ``changed(key)`` after a set, ``reset()`` after a load."""

    changed = Signal(str)
    reset = Signal()

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self._tree = default_tree()

    def get(self, key: str) -> Any:
        section, _, name = key.rpartition(".")
        node = self._tree[section] if section else self._tree
        return copy.deepcopy(node.get(name))

    def set(self, key: str, value: Any) -> None:
        section, _, name = key.rpartition(".")
        node = self._tree[section] if section else self._tree
        if node.get(name) == value:
            return
        node[name] = copy.deepcopy(value)
        self.changed.emit(key)

    def tree(self) -> Dict[str, Any]:
        return copy.deepcopy(self._tree)

    def recipe(self) -> Recipe:
        """The checked recipe; raises RecipeError naming the key at fault."""
        tree = self.tree()
        if not tree["model"]["path"]:
            tree["model"]["path"] = None  # "model.path: expected a non-empty string, got None"
        return Recipe.from_dict(tree)

    def new(self, keep=()) -> None:
        """Back to the defaults, except the dotted keys in ``keep``."""
        kept = {key: self.get(key) for key in keep}
        self._tree = default_tree()
        for key, value in kept.items():
            section, _, name = key.rpartition(".")
            (self._tree[section] if section else self._tree)[name] = value
        self.reset.emit()

    def load_recipe(self, recipe: Recipe) -> None:
        tree = default_tree()
        for section, values in recipe.to_dict().items():
            if isinstance(values, dict):
                tree.setdefault(section, {}).update(values)
            else:
                tree[section] = values
        self._tree = tree
        self.reset.emit()

    def load(self, path: str) -> None:
        self.load_recipe(Recipe.load(path))

    def save(self, path: str) -> None:
        self.recipe().save(path)
