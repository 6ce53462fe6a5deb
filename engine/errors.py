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


def out_of_memory_error(where: str, recipe=None) -> LowbitError:
    """A :class:`LowbitError` for ``torch.OutOfMemoryError`` (CUDA OOM), naming the settings that shrink memory.

    ``where`` says what ran out (e.g. ``"during training step 12"``); ``recipe`` (optional) adds the
    current values of the settings to lower.
    """
    def now(section: str, key: str) -> str:
        value = getattr(getattr(recipe, section, None), key, None)
        return f" (now {value})" if value is not None else ""

    return LowbitError(
        f"out of GPU memory {where} (CUDA out of memory). Use less memory: a smaller data.batch_size"
        f"{now('data', 'batch_size')} or train.batch_size with more train.grad_accum, a shorter data.seq_len"
        f"{now('data', 'seq_len')}, train.gradient_checkpointing: true, or keep the QAD teacher on the CPU "
        "with train.teacher_device: cpu; as a last resort run on device: cpu."
    )
