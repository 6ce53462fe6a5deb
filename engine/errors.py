"""Errors the engine raises for problems the user can fix.

Every message names the problem and the fix; front ends show ``str(err)`` as is
and never a traceback for these.
"""


class LowbitError(Exception):
    """Base of the user-facing errors."""


class ModelLoadError(LowbitError):
    """The model folder cannot be loaded (missing, corrupt, unsupported)."""


class DataError(LowbitError):
    """The text data cannot be read or is unusable."""


class RecipeError(LowbitError):
    """The recipe has an unknown key, a wrong type or an out-of-range value."""


class ExportError(LowbitError):
    """An export could not be written or did not verify."""


class Cancelled(LowbitError):
    """The run was cancelled by the user."""
