"""The recipe: one versioned, validated description of a run.

The window, the ``lowbit`` command line and the Python API all build the same
:class:`Recipe`, read it from and write it to YAML or JSON, and hand it to the
runner. A recipe is a frozen value and every field is checked when it is built,
so a ``Recipe`` in hand is always valid. Change one with
:meth:`Recipe.with_updates` (or ``dataclasses.replace``), which checks the
result again.

Every problem raises :class:`~engine.errors.RecipeError`. Its message names the
full dotted key (``data.seq_len``), what was expected and what was given, and
suggests the closest valid key for an unknown one.

Reading rules:

- unknown keys are errors, never ignored;
- ``bool`` is not an integer; integers are accepted where numbers are expected
  (and stored as floats); NaN and infinities are rejected;
- a section left out, or written as an empty ``data:`` (null), takes its defaults;
- format and scheme names are stored in the registries' spelling
  (``" NVFP4"`` -> ``"nvfp4"``, ``"w8a8-fp8"`` -> ``"W8A8-FP8"``).

Cross-field checks (:meth:`Recipe.validate`):

- ``quant.scheme`` with ``quant.weight`` / ``quant.activation`` must resolve
  through :func:`engine.quant.schemes.get` and quantize something; ``custom``
  needs a weight or an activation format;
- every entry of ``quant.overrides`` must set a weight or an activation format
  (an override that sets neither would silently change nothing);
- ``calibration.method: mse`` searches the weights' scales, so the scheme must
  quantize weights.

Checks that need the file system, the model or the machine belong to the runner
and the exporters: ``data.path`` may be null only for the demo model, the
device must exist, the export target must support the chosen formats.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import numbers
import os
import re
import reprlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Union

import yaml

from .errors import RecipeError
from .fsutil import fsync_path

__all__ = [
    "SCHEMA_VERSION", "OLDEST_VERSION", "Recipe", "ModelSection", "DataSection", "QuantSection",
    "Override", "CalibrationSection", "TrainSection", "ExportSection", "KeyInfo", "schema",
    "parse_assignment",
]

SCHEMA_VERSION = 1  # the version this code writes and reads
OLDEST_VERSION = 1  # the oldest version it still reads

NO_FORMAT = "none"  # a weight / activation "format" meaning: keep high precision
CUSTOM_SCHEME = "custom"  # a scheme made only of quant.weight / quant.activation

_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


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
        from . import formats  # imports torch: only when a recipe is checked

        try:
            return formats.get(name).name
        except formats.UnknownFormatError as exc:
            raise RecipeError(f"{key}: {exc}") from None


class _SchemeName(_Kind):
    """A name from :mod:`engine.quant.schemes` (any case), or ``"custom"``."""

    def describe(self) -> str:
        return "a scheme name or 'custom'"

    def _parse(self, value, key):
        from .quant import schemes

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


# -- the schema -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelSection(_Section):
    _key: ClassVar[str] = "model"

    path: str = _required(_Str(), "the model: a folder, a Hugging Face hub id, or 'demo'")
    kind: str = _opt("auto", _Choice("auto", "causal-lm", "encoder"),
                     "the model's head; auto reads it from the model's config")
    dtype: str = _opt("float32", _Choice("auto", "float32", "bfloat16", "float16"),
                      "the high-precision dtype the model is loaded in")
    trust_remote_code: bool = _opt(False, _Bool(),
                                   "run Python code shipped with the model (only for models you trust)")


@dataclass(frozen=True, kw_only=True)
class DataSection(_Section):
    _key: ClassVar[str] = "data"

    path: Optional[str] = _opt(None, _Str(optional=True),
                               "text for calibration and training (file or folder); null only for the demo model")
    eval_path: Optional[str] = _opt(None, _Str(optional=True),
                                    "held-out text for evaluation; null = split eval_fraction off data.path")
    text_field: str = _opt("text", _Str(), "the field that holds the text in JSON lines data")
    seq_len: int = _opt(256, _Int(ge=8), "tokens per sample")
    batch_size: int = _opt(4, _Int(ge=1), "samples per batch")
    calib_batches: int = _opt(16, _Int(ge=1), "batches calibration sees")
    eval_batches: int = _opt(8, _Int(ge=1), "batches each evaluation sees")
    eval_fraction: float = _opt(0.1, _Float(gt=0, le=0.5),
                                "share of data.path held out for evaluation when eval_path is null")


@dataclass(frozen=True, kw_only=True)
class Override(_Section):
    """Different formats for the layers whose names match ``pattern``."""

    _key: ClassVar[str] = "quant.overrides[]"

    pattern: str = _required(_Str(), "layer names this applies to (fnmatch wildcards)")
    weight: Optional[str] = _opt(None, _FormatName(optional=True),
                                 "weight format for these layers; null = the scheme's, 'none' = keep")
    activation: Optional[str] = _opt(None, _FormatName(optional=True),
                                     "input activation format for these layers; null = the scheme's, 'none' = keep")


@dataclass(frozen=True, kw_only=True)
class QuantSection(_Section):
    _key: ClassVar[str] = "quant"

    scheme: str = _opt("W4A16-INT4", _SchemeName(),
                       "a named scheme (see engine.quant.schemes) or 'custom'")
    weight: Optional[str] = _opt(None, _FormatName(optional=True),
                                 "weight format instead of the scheme's; 'none' = keep weights")
    activation: Optional[str] = _opt(None, _FormatName(optional=True),
                                     "input activation format instead of the scheme's; 'none' = keep activations")
    include: Tuple[str, ...] = _opt(("*",), _List(_Str(), "strings", min_len=1),
                                    "layer name patterns to quantize (fnmatch wildcards)")
    exclude: Tuple[str, ...] = _opt((), _List(_Str(), "strings"), "layer name patterns to leave alone")
    default_exclusions: bool = _opt(True, _Bool(),
                                    "also leave the usual sensitive layers alone (lm_head, routers, norms)")
    overrides: Tuple[Override, ...] = _opt((), _List(_Nested(Override), "overrides"),
                                           "formats for the layers matching a pattern, instead of the scheme's")

    def resolve(self):
        """The :class:`engine.quant.schemes.Scheme` this section selects."""
        from .quant import schemes

        return schemes.get(self.scheme, self.weight, self.activation)


@dataclass(frozen=True, kw_only=True)
class CalibrationSection(_Section):
    _key: ClassVar[str] = "calibration"

    method: str = _opt("max", _Choice("max", "percentile", "mse"), "how static scales are chosen")
    percentile: float = _opt(99.99, _Float(gt=0, le=100), "the |x| percentile kept by method 'percentile'")
    mse_grid: int = _opt(20, _Int(ge=2), "candidate scales tried by method 'mse'")
    mse_min_ratio: float = _opt(0.5, _Float(gt=0, lt=1),
                                "the smallest candidate of method 'mse', as a fraction of the max")


@dataclass(frozen=True, kw_only=True)
class TrainSection(_Section):
    _key: ClassVar[str] = "train"

    steps: int = _opt(200, _Int(ge=1), "optimizer steps")
    lr: float = _opt(1e-4, _Float(gt=0), "peak learning rate")
    weight_decay: float = _opt(0.0, _Float(ge=0), "AdamW weight decay")
    warmup_steps: int = _opt(10, _Int(ge=0), "linear warm-up steps before the schedule")
    schedule: str = _opt("cosine", _Choice("cosine", "constant", "linear"), "learning-rate schedule after warm-up")
    batch_size: Optional[int] = _opt(None, _Int(ge=1, optional=True), "samples per step; null = data.batch_size")
    grad_accum: int = _opt(1, _Int(ge=1), "micro-batches accumulated per step")
    grad_clip: float = _opt(1.0, _Float(ge=0), "gradient norm clip; 0 = off")
    eval_every: int = _opt(50, _Int(ge=0), "steps between evaluations; 0 = only at the end")
    checkpoint_every: int = _opt(100, _Int(ge=0), "steps between checkpoints; 0 = off")
    kd_temperature: float = _opt(1.0, _Float(gt=0), "softmax temperature of the distillation loss")
    kd_alpha: float = _opt(1.0, _Float(ge=0, le=1), "weight of distillation against the task loss (QAD)")
    kd_hidden_weight: float = _opt(0.0, _Float(ge=0), "weight of the hidden-state matching loss (QAD)")
    learnable_scales: bool = _opt(False, _Bool(), "train the calibrated scales too")
    gradient_checkpointing: bool = _opt(False, _Bool(), "recompute activations in backward to save memory")
    early_stop_perplexity: Optional[float] = _opt(None, _Float(gt=0, optional=True),
                                                  "stop once evaluation perplexity is at or below this")
    teacher_device: Optional[str] = _opt(None, _Device(optional=True),
                                         "device of the QAD teacher; null = the student's")


@dataclass(frozen=True, kw_only=True)
class ExportSection(_Section):
    _key: ClassVar[str] = "export"

    format: Optional[str] = _opt(None, _Choice("compressed-tensors", "modelopt", "dense", optional=True),
                                 "checkpoint format to write; null = no export")
    path: Optional[str] = _opt(None, _Str(optional=True), "export folder; null = <run dir>/export")
    verify: bool = _opt(True, _Bool(), "reload the export and compare it with the quantized model")
    max_shard_mb: int = _opt(2000, _Int(ge=1), "largest safetensors shard, in MB")


@dataclass(frozen=True, kw_only=True)
class AnalysisSection(_Section):
    _key: ClassVar[str] = "analysis"

    formats: Tuple[str, ...] = _opt((), _List(_FormatName(), "format names"),
                                    "formats to compare per layer after calibration; empty = skip")
    sensitivity: bool = _opt(False, _Bool(), "also measure each layer's model-level sensitivity (slow)")
    benchmark: bool = _opt(True, _Bool(), "time the model before and after (latency, tokens/s, memory)")


@dataclass(frozen=True, kw_only=True)
class DistributedSection(_Section):
    _key: ClassVar[str] = "distributed"

    strategy: str = _opt("fsdp2", _Choice("fsdp2", "ddp"), "how the student is spread over processes under torchrun")
    teacher: str = _opt("replicate", _Choice("replicate", "shard"), "the QAD teacher: a full copy per process, or sharded")


@dataclass(frozen=True, kw_only=True)
class Recipe(_Section):
    """A whole run: model, data, quantization, calibration, mode, training, export.

    Build one with ``Recipe(model={"path": "demo"}, ...)`` (sections as instances
    or mappings), :meth:`from_dict` or :meth:`load`. It is checked on
    construction and immutable afterwards.
    """

    _key: ClassVar[str] = ""

    version: int = _opt(SCHEMA_VERSION, _Version(), "recipe schema version")
    model: ModelSection = _section(ModelSection, "the model to quantize (model.path is required)")
    data: DataSection = _section(DataSection, "calibration, training and evaluation text")
    quant: QuantSection = _section(QuantSection, "what gets quantized, and to which formats")
    calibration: CalibrationSection = _section(CalibrationSection, "how static scales are calibrated")
    mode: str = _opt("ptq", _Choice("ptq", "qat", "qad"),
                     "ptq: calibrate only; qat: then train on the task loss; qad: then distill from the original")
    train: TrainSection = _section(TrainSection, "training settings for qat and qad")
    export: ExportSection = _section(ExportSection, "the checkpoint written at the end")
    analysis: AnalysisSection = _section(AnalysisSection, "per-layer analysis and benchmarks of the run")
    distributed: DistributedSection = _section(DistributedSection, "settings used only under torchrun")
    seed: int = _opt(0, _Int(ge=0, le=2**32 - 1), "random seed (data order, sampling, initialisation)")
    device: str = _opt("auto", _Device(), "where the student runs; auto = cuda when present")

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Run the cross-field checks (see the module doc); raises RecipeError.

        Construction already calls this, after checking every field on its own;
        it is public so callers can state the intent where it matters.
        """
        q = self.quant
        if q.scheme == CUSTOM_SCHEME and q.weight in (None, NO_FORMAT) and q.activation in (None, NO_FORMAT):
            raise RecipeError(
                "quant.scheme is 'custom', so quant.weight or quant.activation must name a format"
            )
        try:
            scheme = q.resolve()
        except (KeyError, ValueError) as exc:  # both already checked field by field; kept as a guard
            raise RecipeError(f"quant: {exc.args[0] if exc.args else exc}") from None
        if scheme.weight is None and scheme.activation is None:
            raise RecipeError(
                f"quant: scheme {q.scheme!r} with quant.weight: {q.weight or 'null'} and quant.activation: "
                f"{q.activation or 'null'} keeps weights and activations in high precision; "
                "name a format for one of them"
            )
        for i, override in enumerate(q.overrides):
            if override.weight is None and override.activation is None:
                raise RecipeError(
                    f"quant.overrides[{i}] (pattern {override.pattern!r}) sets neither weight nor activation, "
                    "so it would change nothing; give it a format, or 'none' to keep that side"
                )
        if self.calibration.method == "mse" and scheme.weight is None:
            raise RecipeError(
                "calibration.method 'mse' searches the weights' scales, but the scheme quantizes no weights; "
                "use 'max' or 'percentile'"
            )

    # -- plain data ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, require_version: bool = False) -> "Recipe":
        """Build a recipe from plain data (as read from YAML or JSON).

        ``require_version``: a missing ``version`` key is an error (files must
        say which schema they follow); otherwise it defaults to the current one.
        """
        if not isinstance(data, Mapping):
            raise RecipeError(f"a recipe must be a mapping of sections (model, data, quant, ...), got {_show(data)}")
        if "version" in data:
            _Version().parse(data["version"], "version")  # before unknown keys: a newer file may have new ones
        elif require_version:
            raise RecipeError(f"the recipe has no 'version' key; add 'version: {SCHEMA_VERSION}' at the top")
        return _build(cls, data, "")

    def to_dict(self) -> Dict[str, Any]:
        """Every field, version included, as plain JSON-able data."""
        return _dump(self)

    def with_updates(self, updates: Mapping[str, Any]) -> "Recipe":
        """A new, checked recipe with the dotted keys in ``updates`` changed.

        ``recipe.with_updates({"train.steps": 50, "quant.scheme": "W4A4-NVFP4"})``.
        Keys name single fields (``mode``, ``data.seq_len``, ``quant.overrides``);
        values are plain data as in a recipe file.
        """
        if not isinstance(updates, Mapping):
            raise RecipeError(f"updates must map dotted keys to values, got {_show(updates)}")
        tree = self.to_dict()
        keys = _settable_keys()
        for key, value in updates.items():
            if key not in keys:
                raise _unknown_key(str(key), keys)
            section, _, name = key.rpartition(".")
            (tree[section] if section else tree)[name] = value
        return Recipe.from_dict(tree)

    # -- text and files ----------------------------------------------------------------

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<yaml>", require_version: bool = True) -> "Recipe":
        """Parse recipe text (YAML, which also reads JSON); errors start with ``source``."""
        return cls._from_text(text, "yaml", source, require_version)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Recipe":
        """Read a ``.yaml`` / ``.yml`` / ``.json`` recipe file; it must carry a ``version``."""
        path = Path(path)
        syntax = _syntax(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise RecipeError(f"recipe file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"cannot read recipe file {path}: {exc}") from None
        return cls._from_text(text, syntax, str(path), True)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the recipe as YAML or JSON (by suffix), atomically.

        The text goes to ``<path>.tmp`` in the same folder, is fsynced, and then
        replaces ``path`` in one step, so a crash or an error never leaves a
        half-written recipe (the old file stays as it was).
        """
        path = Path(path)
        text = self.to_json() if _syntax(path) == "json" else self.to_yaml()
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

    @classmethod
    def _from_text(cls, text: str, syntax: str, source: str, require_version: bool) -> "Recipe":
        try:
            tree = _read_tree(text, syntax)
            if tree is None:
                raise RecipeError("the recipe is empty")
            return cls.from_dict(tree, require_version=require_version)
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None


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

    walk(Recipe, "")
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _settable_keys() -> Tuple[str, ...]:
    """Keys :meth:`Recipe.with_updates` accepts: single fields, list items excluded."""
    return tuple(info.key for info in _schema() if "[]" not in info.key)


@functools.lru_cache(maxsize=None)
def _all_keys() -> Tuple[str, ...]:
    return tuple(f.name for f in fields(Recipe)) + _settable_keys()


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


# -- reading and writing text ---------------------------------------------------------------


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
