"""Recipe text: YAML and JSON reading and writing, files, and ``KEY=VALUE`` overrides."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Tuple, Union

import yaml

from ..errors import RecipeError
from ..fsutil import fsync_path
from .kinds import _brief

_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.safe_load`` with two fixes for hand-written recipes.

    - ``1e-4`` is a float: YAML 1.1, which PyYAML follows, wants a dot in a
      float (``1.0e-4``) and would otherwise read the learning rate as a string;
    - a key given twice in one mapping is an error, where PyYAML silently keeps
      the last one.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # unhashable: SafeConstructor reports it
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {_brief(key)} appears twice in one mapping", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)




class _RecipeDumper(yaml.SafeDumper):
    """``yaml.safe_dump`` that writes every string so it reads back the same.

    PyYAML writes the Unicode line breaks NEL, LS and PS unquoted, and reads
    them back as spaces; strings holding one are written double-quoted, where
    they are escaped.
    """

    def represent_str(self, data):
        if any(ch in data for ch in "\x85\u2028\u2029"):
            return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return super().represent_str(data)


_RecipeDumper.add_representer(str, _RecipeDumper.represent_str)

# Both read 1e-4 as a float, so the dumper also quotes a string such as "1e5".
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
_RecipeDumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def _unique_json_object(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise RecipeError(f"not valid JSON: key {_brief(key)} appears twice in one object")
        obj[key] = value
    return obj


def _read_tree(text: str, syntax: str) -> Any:
    """Plain data from YAML or JSON text; syntax errors become RecipeError with the line."""
    if syntax == "json":
        try:
            return json.loads(text, object_pairs_hook=_unique_json_object)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:  # e.g. an integer past Python's digit limit
            raise RecipeError(f"not valid JSON: {exc}") from None
    try:
        return yaml.load(text, Loader=_RecipeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(f"{where}not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
        raise RecipeError(f"not valid YAML: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise RecipeError(f"not valid YAML: {exc}") from None


def _syntax(path: Path) -> str:
    syntax = _SUFFIXES.get(path.suffix.lower())
    if syntax is None:
        raise RecipeError(f"recipe file {path}: name it .yaml, .yml or .json (got {path.suffix or 'no suffix'!r})")
    return syntax


def parse_assignment(text: str) -> Tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 0.0001)``, the value read as YAML.

    For ``--set KEY=VALUE`` options; pass the pairs to :meth:`Recipe.with_updates`.
    An empty value is null.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"expected KEY=VALUE (e.g. train.steps=50), got {text!r}")
    key = key.strip()
    try:
        return key, _read_tree(raw, "yaml")
    except RecipeError as exc:
        raise RecipeError(f"{key}: {exc}") from None


def dump_yaml(tree: Any) -> str:
    return yaml.dump(tree, Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True)


def read_file(path: Union[str, os.PathLike]) -> Tuple[str, str, str]:
    """(text, syntax, source name) of a ``.yaml`` / ``.yml`` / ``.json`` recipe file."""
    path = Path(path)
    syntax = _syntax(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} does not exist") from None
    except IsADirectoryError:
        raise RecipeError(f"cannot read recipe file {path}: it is a folder; give the path of a .yaml or .json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe file {path}: {exc}") from None
    return text, syntax, str(path)


def read_text(text: str, syntax: str, source: str) -> Any:
    """Plain data from recipe text; an empty text is an error; errors start with ``source``."""
    try:
        tree = _read_tree(text, syntax)
        if tree is None:
            raise RecipeError("the recipe is empty")
        return tree
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None


def file_syntax(path: Union[str, os.PathLike]) -> str:
    return _syntax(Path(path))


def write_file(path: Union[str, os.PathLike], text: str) -> Path:
    """Write recipe text atomically: ``<path>.tmp`` in the same folder, fsynced, then renamed.

    A crash or an error never leaves a half-written recipe (the old file stays as it was).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise RecipeError(f"cannot write recipe file {path}: {exc}") from None
        raise
    fsync_path(path.parent)
    return path
