"""Safe loading of local Hugging Face checkpoints.

:func:`load_model` turns a model folder into a :class:`LoadedModel` or raises a
:class:`~engine.errors.ModelLoadError` whose message names the problem and the
fix. It never touches the network (``local_files_only=True``) and never
unpickles arbitrary objects:

* safetensors weights are preferred whenever the folder has them;
* a pickle-only checkpoint (``pytorch_model.bin``) is read by transformers with
  ``weights_only=True`` (passed explicitly), which refuses anything but tensors
  and plain containers; a warning says so;
* code shipped inside the folder (``auto_map`` in ``config.json``) runs only
  when the caller passes ``trust_remote_code=True``. A folder whose model type
  transformers supports natively is loaded with the built-in code instead, with a
  warning; one that cannot be loaded without its own code is refused.

Checks done before transformers sees the folder (so the message is ours, not a
traceback): the folder and ``config.json`` exist, the config is a JSON object,
weight files exist, and every ``*.safetensors`` file is complete (its header
parses and the file is as long as the header says). After loading: no NaN/inf
in any parameter or buffer, and at least one linear layer (``nn.Linear`` or the
transposed ``Conv1D`` of GPT-2) to quantize.
"""

from __future__ import annotations

import json
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ModelLoadError
from .demo import resolve_model_path

ModelKind = Literal["causal-lm", "encoder"]

_DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_OTHER_FRAMEWORK_WEIGHTS = ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
_MAX_NAMES_IN_MESSAGE = 10

try:  # transformers' GPT-2 style linear layer (weight stored as [in, out]).
    from transformers.pytorch_utils import Conv1D as _Conv1D
except ImportError:  # pragma: no cover - present in every supported transformers
    _Conv1D = None

LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,) + ((_Conv1D,) if _Conv1D is not None else ())


@dataclass
class LoadedModel:
    """A model loaded from a local folder, ready for calibration (eval mode).

    Attributes:
        model: the ``nn.Module`` in eval mode.
        tokenizer: the folder's tokenizer, or ``None`` when it has none.
        kind: ``"causal-lm"`` or ``"encoder"``.
        path: the resolved model folder.
        name: the folder name, used as a display name.
        architecture: ``config.architectures[0]``, else ``config.model_type``.
        n_params: the number of unique parameters (tied weights counted once).
        dtype: the parameter dtype as text, e.g. ``"float32"``.
        config: the transformers config.
        warnings: things the user should know that did not stop the load
            (pickle checkpoint, missing tokenizer, weights left at random init...).
    """

    model: nn.Module
    tokenizer: Any | None
    kind: ModelKind
    path: Path
    name: str
    architecture: str
    n_params: int
    dtype: str
    config: Any
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- public API


def load_model(
    path: str | Path,
    kind: Literal["auto", "causal-lm", "encoder"] = "auto",
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model and its tokenizer from a local Hugging Face folder.

    Args:
        path: the folder holding ``config.json`` and the weights.
        kind: ``"causal-lm"`` (AutoModelForCausalLM), ``"encoder"`` (AutoModel) or
            ``"auto"`` to decide from the config (see :func:`detect_kind`).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"`` (the
            checkpoint's own dtype).
        device: where to put the model after loading, e.g. ``"cpu"``, ``"cuda:0"``.
        trust_remote_code: allow running Python code shipped in the folder.

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        ModelLoadError: for every problem with the folder, with the fix in the message.
    """
    path = resolve_model_path(path)
    folder = _check_folder(path)
    if dtype not in _DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}. Choose one of: {', '.join(_DTYPES)}.")
    if kind not in ("auto", "causal-lm", "encoder"):
        raise ModelLoadError(f"Unknown model kind {kind!r}. Choose 'auto', 'causal-lm' or 'encoder'.")
    notes: list[str] = []

    raw = _read_config_json(folder)
    trust_remote_code = bool(trust_remote_code)  # None would make transformers prompt on stdin
    if "auto_map" in raw and not trust_remote_code:
        if _is_native_model_type(raw.get("model_type")):
            msg = (
                f"{folder.name} ships its own model code (auto_map in config.json); it was NOT run. "
                f"The built-in transformers implementation of '{raw['model_type']}' is used instead."
            )
            notes.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        else:
            raise ModelLoadError(
                f"{folder.name} needs the Python code shipped in its folder (config.json has 'auto_map' "
                f"and model type {raw.get('model_type')!r} is not built into transformers). That code "
                "runs with your permissions. Review it, then enable \"trust remote code\" explicitly "
                "(trust_remote_code=True / --trust-remote-code) to load this model."
            )

    config = _load_config(folder, raw, trust_remote_code)
    resolved_kind: ModelKind = detect_kind(config) if kind == "auto" else kind  # type: ignore[assignment]
    use_safetensors = _check_weight_files(folder)
    if not use_safetensors:
        msg = (
            f"{folder.name} has only a pickle checkpoint (pytorch_model.bin). It is loaded with "
            "weights_only=True, which refuses anything but tensors; prefer safetensors when you can."
        )
        notes.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)

    model = _from_pretrained(folder, config, resolved_kind, _DTYPES[dtype], use_safetensors, trust_remote_code, notes,
                             device=device)
    _check_finite(model, folder)
    if not linear_layers(model):
        raise ModelLoadError(
            f"{folder.name} ({_architecture(config)}) has no linear layers (nn.Linear or Conv1D), so there "
            "is nothing to quantize. Lowbit Studio quantizes the weights of linear layers; choose a "
            "transformer model such as a causal LM or a BERT-like encoder."
        )
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelLoadError(f"Could not move the model to device {device!r}: {exc}. Choose another device.") from exc
    model.eval()

    tokenizer = None
    try:
        tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    except ModelLoadError as exc:
        notes.append(str(exc))

    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        kind=resolved_kind,
        path=folder,
        name=folder.name,
        architecture=_architecture(config),
        n_params=count_parameters(model),
        dtype=_dtype_name(model),
        config=config,
        warnings=notes,
    )


def detect_kind(config: Any) -> ModelKind:
    """Decide whether a config describes a causal LM or an encoder.

    An architecture name ending in ``ForCausalLM`` or ``LMHeadModel`` is a causal LM.
    A config without architectures is a causal LM when transformers has a
    causal-LM class for its ``model_type``. Everything else is an encoder.
    """
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures):
        return "causal-lm"
    if not architectures:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return "causal-lm"
    return "encoder"


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``(name, module)`` for every ``nn.Linear`` and transformers ``Conv1D``, in model order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LINEAR_TYPES)]


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a ``Conv1D`` (weight stored ``[in, out]``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    in_features, out_features = module.weight.shape
    return int(in_features), int(out_features)


def count_parameters(model: nn.Module) -> int:
    """Number of unique parameters (shared/tied tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def describe_model(loaded: LoadedModel) -> dict[str, Any]:
    """A JSON-friendly summary of a loaded model for the GUI and reports.

    Returns:
        ``{name, architecture, kind, n_params, dtype, n_linear, linear_params,
        layers: [{name, type, in_features, out_features, params}]}`` where
        ``params`` counts the weight and the bias of each linear layer.
    """
    layers = []
    for name, module in linear_layers(loaded.model):
        in_features, out_features = linear_shape(module)
        params = module.weight.numel() + (module.bias.numel() if getattr(module, "bias", None) is not None else 0)
        layers.append(
            {
                "name": name,
                "type": type(module).__name__,
                "in_features": in_features,
                "out_features": out_features,
                "params": int(params),
            }
        )
    return {
        "name": loaded.name,
        "architecture": loaded.architecture,
        "kind": loaded.kind,
        "n_params": loaded.n_params,
        "dtype": loaded.dtype,
        "n_linear": len(layers),
        "linear_params": sum(layer["params"] for layer in layers),
        "layers": layers,
    }


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer saved in a local folder (never from the hub).

    If it has no pad token, the eos token (else the unk token) is used as pad so
    that padded batches work; the vocabulary is never changed.

    Raises:
        ModelLoadError: the folder has no usable tokenizer.
    """
    from transformers import AutoTokenizer

    folder = _check_folder(path)
    if not _has_tokenizer_files(folder):
        # transformers 5 would build an *empty* tokenizer from config.json alone; refuse instead.
        raise ModelLoadError(
            f"No tokenizer files in {folder} (tokenizer.json, tokenizer_config.json, vocab files...). Save the "
            "tokenizer next to the model (tokenizer.save_pretrained(folder)) or pick a folder that has one."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=bool(trust_remote_code)
        )
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError/... here
        raise ModelLoadError(
            f"No usable tokenizer in {folder}: {_short(exc)}. Save the tokenizer next to the model "
            "(tokenizer.save_pretrained(folder)) or pick a folder that has one."
        ) from exc
    if tokenizer is None or isinstance(tokenizer, bool) or not getattr(tokenizer, "vocab_size", 0):
        raise ModelLoadError(
            f"No usable tokenizer in {folder}: it loads with an empty vocabulary. Save the tokenizer next to "
            "the model (tokenizer.save_pretrained(folder))."
        )
    if getattr(tokenizer, "pad_token", None) is None:
        fallback = getattr(tokenizer, "eos_token", None) or getattr(tokenizer, "unk_token", None)
        if fallback is not None:
            tokenizer.pad_token = fallback
    return tokenizer


# --------------------------------------------------------------------------- checks


def _has_tokenizer_files(folder: Path) -> bool:
    """Whether the folder holds any file a tokenizer is loaded from."""
    for file in folder.iterdir():
        name = file.name.lower()
        if name.startswith(("tokenizer", "vocab", "spiece", "merges")) or name.endswith((".tiktoken", ".model")):
            return True
    return False


def _check_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelLoadError(
            f"Model folder not found: {folder}. Check the path; it must be a local folder with "
            "config.json and the weights (downloading from the hub is not supported here)."
        )
    if not folder.is_dir():
        raise ModelLoadError(
            f"{folder} is a file, not a folder. Choose the folder that contains config.json and the weights."
        )
    return folder.resolve()


def _read_config_json(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"No config.json in {folder}. This is not a Hugging Face model folder; choose the folder "
            "written by save_pretrained (it has config.json next to the weights)."
        )
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{config_file} is not UTF-8 text ({exc.reason}). Restore a valid config.json.") from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"{config_file} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). "
            "Fix or restore the file."
        ) from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{config_file} must hold a JSON object, not {type(raw).__name__}. Restore the file.")
    return raw


def _is_native_model_type(model_type: Any) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES


def _load_config(folder: Path, raw: dict[str, Any], trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    model_type = raw.get("model_type")
    if not model_type:
        raise ModelLoadError(
            f"{folder / 'config.json'} has no 'model_type', so the architecture is unknown. "
            "Restore the config.json written by save_pretrained."
        )
    if not trust_remote_code and not _is_native_model_type(model_type):
        raise ModelLoadError(
            f"Unknown model type {model_type!r} in {folder / 'config.json'}: this transformers version "
            "does not support it. Upgrade transformers, or pick a supported architecture "
            "(e.g. llama, mistral, qwen2, gpt2, bert)."
        )
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(
            f"Could not read the model config in {folder} ({_short(exc)}). Restore the config.json "
            "written by save_pretrained."
        ) from exc


def _check_weight_files(folder: Path) -> bool:
    """Validate the weight files; return True to load safetensors, False for a pickle checkpoint."""
    safetensors_files = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if not safetensors_files and (folder / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{folder.name} holds a PEFT/LoRA adapter (adapter_config.json), not a full model. Merge the "
            "adapter into its base model (merge_and_unload, then save_pretrained) and load the merged folder."
        )
    if safetensors_files:
        for file in safetensors_files:
            _check_safetensors_file(file)
        return True
    if any((folder / name).is_file() for name in _PICKLE_WEIGHTS) or any(folder.glob("pytorch_model-*.bin")):
        return False
    others = [name for name in _OTHER_FRAMEWORK_WEIGHTS if (folder / name).exists()]
    hint = (
        f" It has {', '.join(others)}, which are not PyTorch weights; convert them to safetensors first."
        if others
        else " Save the model with save_pretrained (safetensors), or copy the weight files into the folder."
    )
    raise ModelLoadError(
        f"No weight files in {folder}: expected model.safetensors (or sharded model-*.safetensors) "
        f"or pytorch_model.bin.{hint}"
    )


def _check_safetensors_file(file: Path) -> None:
    """Check the header of a safetensors file and that the file holds all the bytes it declares."""
    size = file.stat().st_size
    fix = "Download or copy it again, or re-save the model."
    if size < 8:
        raise ModelLoadError(f"{file.name} is truncated or corrupt ({size} bytes, no header). {fix}")
    with file.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            raise ModelLoadError(
                f"{file.name} is truncated or corrupt: its header claims {header_len} bytes but the file "
                f"has only {size}. {fix}"
            )
        try:
            header = json.loads(fh.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{file.name} is corrupt: its header is not valid JSON ({exc}). {fix}") from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{file.name} is corrupt: its header is not a JSON object. {fix}")
    try:
        data_end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise ModelLoadError(f"{file.name} is corrupt: its header has malformed tensor entries. {fix}") from exc
    expected = 8 + header_len + data_end
    if size < expected:
        raise ModelLoadError(
            f"{file.name} is truncated: it has {size} bytes but its header describes {expected}. {fix}"
        )


def _from_pretrained(
    folder: Path,
    config: Any,
    kind: ModelKind,
    dtype: torch.dtype | str,
    use_safetensors: bool,
    trust_remote_code: bool,
    notes: list[str],
    device: str | torch.device | None = None,
) -> nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    auto_class = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    try:
        with _quiet_progress_bars():
            model, info = auto_class.from_pretrained(
                str(folder),
                config=config,
                local_files_only=True,
                use_safetensors=use_safetensors,
                weights_only=True,
                trust_remote_code=trust_remote_code,
                output_loading_info=True,
                **{_dtype_kwarg(): dtype},
                **_placement(device),
            )
    except ModelLoadError:
        raise
    except Exception as exc:
        text = _short(exc)
        if "Unrecognized configuration class" in str(exc):
            raise ModelLoadError(
                f"{folder.name} ({_architecture(config)}) cannot be loaded as a "
                f"{'causal LM' if kind == 'causal-lm' else 'encoder'}. Choose the other model kind or 'auto'."
            ) from exc
        if "ignore_mismatched_sizes" in str(exc) or "size mismatch" in str(exc):
            raise ModelLoadError(
                f"The weights of {folder.name} do not match its config.json (tensor shapes differ, e.g. a "
                "different hidden size or vocabulary). Restore the config.json that belongs to these weights."
            ) from exc
        if "Weights only load failed" in str(exc) or "weights_only" in str(exc):
            raise ModelLoadError(
                f"Refused to load the pickle checkpoint of {folder.name}: it contains objects other than "
                "tensors, and unpickling them could run arbitrary code. Convert the checkpoint to "
                "safetensors in a trusted environment."
            ) from exc
        raise ModelLoadError(
            f"Could not load the weights of {folder.name} ({type(exc).__name__}: {text}). The weight files "
            "may be corrupt or belong to another model; re-save the model with save_pretrained."
        ) from exc

    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        names = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
        raise ModelLoadError(
            f"The weights of {folder.name} do not match its config.json (wrong shape for "
            f"{_name_list(names)}). Restore the config.json that belongs to these weights."
        )
    if missing:
        n_model = len(dict(model.named_parameters()))
        if len(missing) >= n_model:
            raise ModelLoadError(
                f"None of the weights in {folder.name} match a {_architecture(config)} model: the weight "
                "files belong to another architecture. Restore the matching config.json and weights."
            )
        msg = (
            f"{len(missing)} weight(s) were not in the checkpoint and keep their random initial "
            f"values: {_name_list(missing)}."
        )
        notes.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)
    return model


def _check_finite(model: nn.Module, folder: Path) -> None:
    bad = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise ModelLoadError(
            f"The weights of {folder.name} contain NaN or infinite values in {len(bad)} tensor(s): "
            f"{_name_list(bad)}. The checkpoint is damaged (or was saved after a diverged training run); "
            "restore a good copy."
        )


# --------------------------------------------------------------------------- small helpers


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' tqdm bars while loading; front ends show their own progress."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _placement(device) -> dict[str, Any]:
    """Load the weights straight onto a GPU (each tensor copied from the memory-mapped safetensors file
    to the device in its dtype), instead of a whole CPU copy first. The CPU needs nothing extra:
    transformers builds the model on the meta device and fills it tensor by tensor."""
    if device is None or torch.device(device).type != "cuda":
        return {}
    return {"device_map": {"": str(torch.device(device))}}


def _dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; older versions ignore ``dtype``."""
    from transformers import __version__

    major, minor = (int(part) for part in __version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _architecture(config: Any) -> str:
    architectures = getattr(config, "architectures", None) or []
    return str(architectures[0]) if architectures else str(getattr(config, "model_type", "unknown"))


def _dtype_name(model: nn.Module) -> str:
    for p in model.parameters():
        return str(p.dtype).removeprefix("torch.")
    return "unknown"


def _name_list(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_IN_MESSAGE])
    more = len(names) - _MAX_NAMES_IN_MESSAGE
    return shown + (f" and {more} more" if more > 0 else "")


def _short(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception message, cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
