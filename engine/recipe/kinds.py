"""The machinery of the recipe: how a value is checked, normalised and written.

Each recipe field carries a *kind* (``_Int(ge=1)``, ``_Choice(...)``, a nested
section, ...) in its dataclass metadata. Sections parse every field through its
kind when built; this module also builds sections from plain data, dumps them
back, and lists every key of the schema (for help texts, forms and suggestions
for an unknown key). The keys themselves live in :mod:`engine.recipe.sections`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import re
import reprlib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Mapping, Tuple

from ..errors import RecipeError

SCHEMA_VERSION = 1  # the version this code writes and reads
OLDEST_VERSION = 1  # the oldest version it still reads

NO_FORMAT = "none"  # a weight / activation "format" meaning: keep high precision
CUSTOM_SCHEME = "custom"  # a scheme made only of quant.weight / quant.activation

# -- showing values in messages ------------------------------------------------------

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = 4
_short.maxlevel = 2


def _brief(value: Any) -> str:
    """A short repr for messages (junk input can be huge or unprintable)."""
    try:
        return _short.repr(value)
    except Exception:  # e.g. an int past Python's digit limit
        return f"<{type(value).__name__}>"


def _show(value: Any) -> str:
    return f"{_brief(value)} ({type(value).__name__})"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# -- kinds: how one value is checked, normalised and written ---------------------------


class _Kind:
    """The check for one recipe value.

    ``parse(value, key)`` returns the normalised value or raises RecipeError
    naming ``key``; it is idempotent, so a value already parsed passes unchanged.
    ``dump`` turns the stored value into its plain JSON form.
    """

    def __init__(self, optional: bool = False):
        self.optional = optional

    def describe(self) -> str:
        raise NotImplementedError

    @property
    def expected(self) -> str:
        return self.describe() + (" or null" if self.optional else "")

    def parse(self, value: Any, key: str) -> Any:
        if value is None and self.optional:
            return None
        return self._parse(value, key)

    def _parse(self, value: Any, key: str) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value

    def wrong(self, value: Any, key: str, hint: str = "") -> RecipeError:
        return RecipeError(f"{key}: expected {self.expected}, got {_show(value)}{hint}")


class _Bool(_Kind):
    def describe(self) -> str:
        return "true or false"

    def _parse(self, value, key):
        if not isinstance(value, bool):
            raise self.wrong(value, key)
        return value


class _BoolOrAuto(_Kind):
    """true, false, or the word 'auto' (the engine decides)."""

    def describe(self) -> str:
        return "true, false or 'auto'"

    def _parse(self, value, key):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        raise self.wrong(value, key)


class _Number(_Kind):
    """A number with optional bounds; ``gt`` / ``lt`` exclude the bound, ``ge`` / ``le`` include it."""

    noun = "a number"

    def __init__(self, *, ge=None, gt=None, le=None, lt=None, optional: bool = False):
        super().__init__(optional)
        self.lo, self.lo_open = (gt, True) if gt is not None else (ge, False)
        self.hi, self.hi_open = (lt, True) if lt is not None else (le, False)

    def describe(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return f"{self.noun} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{self.noun} {'>' if self.lo_open else '>='} {lo}"
        if hi is not None:
            return f"{self.noun} {'<' if self.hi_open else '<='} {hi}"
        return self.noun

    def _in_range(self, x) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        if self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi):
            return False
        return True

    def _coerce(self, value, key):
        raise NotImplementedError

    def _parse(self, value, key):
        number = self._coerce(value, key)
        if not self._in_range(number):
            raise RecipeError(f"{key}: {_brief(number)} is out of range; expected {self.expected}")
        return number


class _Int(_Number):
    noun = "an integer"

    def _coerce(self, value, key):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.wrong(value, key)
        return int(value)


class _Float(_Number):
    def _coerce(self, value, key):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.wrong(value, key)
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise self.wrong(value, key)
        return number


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _FloatOrAuto(_Float):
    """A bounded number, or the word 'auto' (the engine picks the value)."""

    def describe(self) -> str:
        return super().describe() + " or 'auto'"

    def wrong(self, value: Any, key: str, hint: str = "") -> RecipeError:
        if isinstance(value, str) and not _looks_numeric(value):  # a word that is not 'auto'
            return super().wrong(value, key, hint)
        return RecipeError(f"{key}: expected {super().describe()}, got {_show(value)}{hint} (or 'auto' to let the "
                           "engine choose)")

    def _parse(self, value, key):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return super()._parse(value, key)


class _Str(_Kind):
    """A string with something in it besides spaces (stored as written)."""

    def describe(self) -> str:
        return "a non-empty string"

    def _parse(self, value, key):
        if not isinstance(value, str) or not value.strip():
            raise self.wrong(value, key)
        return value


def _did_you_mean(value: str, options) -> str:
    close = difflib.get_close_matches(value.lower(), [o.lower() for o in options], n=1, cutoff=0.6)
    if not close:
        return ""
    original = next(o for o in options if o.lower() == close[0])
    return f"; did you mean {original!r}?"


class _Choice(_Kind):
    def __init__(self, *options: str, optional: bool = False):
        super().__init__(optional)
        self.options = options

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def _parse(self, value, key):
        if not isinstance(value, str):
            raise self.wrong(value, key)
        if value not in self.options:
            raise self.wrong(value, key, _did_you_mean(value, self.options))
        return value


class _Device(_Kind):
    _pattern = re.compile(r"auto|cpu|cuda(?::[0-9]+)?")

    def describe(self) -> str:
        return "'auto', 'cpu', 'cuda' or 'cuda:<n>'"

    def _parse(self, value, key):
        if not isinstance(value, str) or not self._pattern.fullmatch(value):
            raise self.wrong(value, key)
        return value


class _FormatName(_Kind):
    """A name from :mod:`engine.formats`, or ``"none"`` for high precision."""

    def describe(self) -> str:
        return "a format name (see `lowbit formats`) or 'none'"

    def _parse(self, value, key):
        if not isinstance(value, str) or not value.strip():
            raise self.wrong(value, key)
        name = value.strip().lower()
        if name == NO_FORMAT:
            return name
        from .. import formats  # imports torch: only when a recipe is checked

        try:
            return formats.get(name).name
        except formats.UnknownFormatError as exc:
            raise RecipeError(f"{key}: {exc}") from None


class _SchemeName(_Kind):
    """A name from :mod:`engine.quant.schemes` (any case), or ``"custom"``."""

    def describe(self) -> str:
        return "a scheme name or 'custom'"

    def _parse(self, value, key):
        from ..quant import schemes

        if not isinstance(value, str) or not value.strip():
            raise self.wrong(value, key)
        name = value.strip()
        if name.lower() == CUSTOM_SCHEME:
            return CUSTOM_SCHEME
        known = schemes.names()
        canonical = {n.lower(): n for n in known}.get(name.lower())
        if canonical is None:
            hint = _did_you_mean(name, known + [CUSTOM_SCHEME]) or "."
            raise RecipeError(
                f"{key}: unknown scheme {value!r}{hint} "
                f"Known schemes: {', '.join(known)}, or 'custom' (set quant.weight / quant.activation)."
            )
        return canonical


class _List(_Kind):
    """A list (a tuple once stored, so recipes stay immutable)."""

    def __init__(self, item: _Kind, noun: str, min_len: int = 0):
        super().__init__()
        self.item, self.noun, self.min_len = item, noun, min_len

    def describe(self) -> str:
        return f"a {'non-empty ' if self.min_len else ''}list of {self.noun}"

    def _parse(self, value, key):
        if not isinstance(value, (list, tuple)) or len(value) < self.min_len:
            raise self.wrong(value, key)
        return tuple(self.item.parse(v, f"{key}[{i}]") for i, v in enumerate(value))

    def dump(self, value):
        return [self.item.dump(v) for v in value]


class _Nested(_Kind):
    """A section: an instance of ``cls``, a mapping of its keys, or null for its defaults."""

    def __init__(self, cls: type):
        super().__init__()
        self.cls = cls

    def describe(self) -> str:
        return "a mapping of " + ", ".join(f.name for f in fields(self.cls))

    def parse(self, value, key):
        if isinstance(value, self.cls):
            return value
        if value is None or isinstance(value, Mapping):
            return _build(self.cls, value or {}, key)
        raise self.wrong(value, key)

    def dump(self, value):
        return _dump(value)


class _Version(_Kind):
    def describe(self) -> str:
        return "an integer"

    def _parse(self, value, key):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.wrong(value, key)
        if value > SCHEMA_VERSION:
            raise RecipeError(
                f"recipe version {_brief(value)} is newer than this Lowbit Studio reads "
                f"(version {SCHEMA_VERSION}); update Lowbit Studio to use it"
            )
        if value < OLDEST_VERSION:
            raise RecipeError(
                f"recipe version {_brief(value)} is older than the oldest this Lowbit Studio reads "
                f"(version {OLDEST_VERSION})"
            )
        return value


def _opt(default: Any, kind: _Kind, doc: str):
    """A recipe field with a default; ``doc`` is what the key means (shown by :func:`schema`)."""
    return field(default=default, metadata={"kind": kind, "doc": doc})


def _required(kind: _Kind, doc: str):
    return field(metadata={"kind": kind, "doc": doc})


def _section(cls: type, doc: str):
    """A nested section; None (the default) becomes the section's defaults on construction."""
    return field(default=None, metadata={"kind": _Nested(cls), "doc": doc})


def _kind(f: dataclasses.Field) -> _Kind:
    return f.metadata["kind"]


class _Section:
    """Base of the recipe's dataclasses: checks and normalises every field when built."""

    _key: ClassVar[str]  # the dotted key of this section in a recipe

    def __post_init__(self):
        for f in fields(self):
            value = _kind(f).parse(getattr(self, f.name), _join(self._key, f.name))
            object.__setattr__(self, f.name, value)


# -- building and dumping sections -------------------------------------------------------


def _build(cls: type, data: Mapping, prefix: str):
    """An instance of the section ``cls`` from a mapping whose keys sit under ``prefix``."""
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            raise _unknown_key(_join(prefix, str(key)), [_join(prefix, name) for name in known])
    values = {}
    for name, f in known.items():
        key = _join(prefix, name)
        if name in data:
            values[name] = _kind(f).parse(data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"recipe key {key!r} is missing ({f.metadata['doc']})")
    return cls(**values)


def _dump(section) -> Dict[str, Any]:
    return {f.name: _kind(f).dump(getattr(section, f.name)) for f in fields(section)}


# -- the list of keys, and suggestions for unknown ones ------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """One recipe key, for help texts, forms and completion."""

    key: str  # dotted; items of a list show as ``quant.overrides[].pattern``
    expected: str
    default: Any  # plain data; None for a required key
    required: bool
    doc: str


def schema() -> List[KeyInfo]:
    """Every key of the current schema, in file order."""
    return list(_schema())


_ROOTS: List[type] = []


def register_root(cls: type) -> type:
    """Mark ``cls`` as the recipe's top section: key listings and suggestions start there.

    The schema registers its ``Recipe`` class when it is defined, so this module,
    which the schema imports, never has to import the schema back.
    """
    _ROOTS[:] = [cls]
    for cached in (_schema, _settable_keys, _all_keys):
        cached.cache_clear()
    return cls


def _root() -> type:
    if not _ROOTS:
        raise RuntimeError("engine.recipe.sections has not been imported")
    return _ROOTS[0]


@functools.lru_cache(maxsize=None)
def _schema() -> Tuple[KeyInfo, ...]:
    out: List[KeyInfo] = []

    def walk(cls, prefix):
        for f in fields(cls):
            kind, key = _kind(f), _join(prefix, f.name)
            if isinstance(kind, _Nested):
                walk(kind.cls, key)
                continue
            required = f.default is dataclasses.MISSING
            default = None if required else kind.dump(f.default)
            out.append(KeyInfo(key, kind.expected, default, required, f.metadata["doc"]))
            if isinstance(kind, _List) and isinstance(kind.item, _Nested):
                walk(kind.item.cls, key + "[]")

    walk(_root(), "")
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _settable_keys() -> Tuple[str, ...]:
    """Keys :meth:`Recipe.with_updates` accepts: single fields, list items excluded."""
    return tuple(info.key for info in _schema() if "[]" not in info.key)


@functools.lru_cache(maxsize=None)
def _all_keys() -> Tuple[str, ...]:
    return tuple(f.name for f in fields(_root())) + _settable_keys()


def _unknown_key(key: str, here: List[str]) -> RecipeError:
    """The error for an unknown ``key``; ``here`` are the valid keys beside it.

    Suggests, in order: the same name in another section (a key put in the wrong
    section), a close spelling beside it, a close spelling anywhere.
    """
    leaf = key.rpartition(".")[2]
    hints = [k for k in _all_keys() if k.rpartition(".")[2] == leaf and k != key]
    if not hints:
        hints = (difflib.get_close_matches(key, here, n=1, cutoff=0.6)
                 or difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.75))
    message = f"recipe key {key!r} is unknown"
    if hints:
        return RecipeError(message + "; did you mean " + " or ".join(repr(h) for h in hints) + "?")
    return RecipeError(message + "; valid keys here: " + ", ".join(repr(k) for k in here))
