"""The recipe: one versioned, validated description of a run.

The package: :mod:`.sections` says what the keys are (add a key there, and only
there); :mod:`.kinds` checks and normalises values and lists the keys;
:mod:`.text` reads and writes YAML / JSON files and ``KEY=VALUE`` overrides.

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

from ..errors import RecipeError  # noqa: F401  (raised by everything here)
from .kinds import CUSTOM_SCHEME, NO_FORMAT, OLDEST_VERSION, SCHEMA_VERSION, KeyInfo, schema
from .sections import (AnalysisSection, CalibrationSection, DataSection, DistributedSection, ExportSection,
                     ModelSection, Override, QuantSection, Recipe, TrainSection)
from .text import parse_assignment

__all__ = [
    "SCHEMA_VERSION", "OLDEST_VERSION", "NO_FORMAT", "CUSTOM_SCHEME", "Recipe", "ModelSection", "DataSection",
    "QuantSection", "Override", "CalibrationSection", "TrainSection", "ExportSection", "AnalysisSection",
    "DistributedSection", "KeyInfo", "schema", "parse_assignment", "RecipeError",
]
