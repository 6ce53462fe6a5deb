"""What every export target shares: the quantized layers of a student, the output
folder written atomically, sharded safetensors, config and tokenizer files.

Atomicity: each file is written under a temporary name (``.NAME.lowbit-tmp``)
and renamed once everything is complete. A new target folder is assembled under
a temporary sibling name and renamed into place at the end, so a crash leaves
either no target folder or one holding only temporary names. An existing folder
is reused only when it is empty or holds a previous lowbit export (it has
``lowbit_quantization.json``); anything else is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn

from ..errors import ExportError
from ..fsutil import fsync_path
from ..formats import Format, QTensor
from ..formats.fp8 import FP8Format
from ..formats.integer import AsymIntFormat, IntFormat
from ..formats.microscaling import MXFormat, NVFP4Format
from ..quant.linear import QuantLinear
from ..statefile import DEFAULT_SHARD_MB  # noqa: F401  (the export targets' default too)
from ..statefile import ShardedSafetensors, index_data, index_name, shard_names

PRODUCER = "lowbit-studio"
MARKER = "lowbit_quantization.json"
TARGETS = ("compressed-tensors", "modelopt", "dense")
TMP_TAG = ".lowbit-tmp"

# Tokenizer and generation files copied next to the weights when the source folder has them.
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "merges.txt",
    "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "generation_config.json",
)


def producer_version() -> str:
    try:
        from importlib.metadata import version

        return version("lowbit-studio")
    except Exception:  # not installed as a distribution (e.g. a bare checkout)
        return "0.0.0"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ExportError(f"unknown dtype {name!r} in the export")
    return value


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


# ----------------------------------------------------------------------------- formats


def canonical_name(fmt: Format) -> str:
    """The registry name that describes ``fmt`` by its properties (``int8_channel`` -> ``int8``)."""
    suffix = {"channel": "", "tensor": "_tensor", "block": f"_g{fmt.block}"}
    if isinstance(fmt, AsymIntFormat):
        return f"int{fmt.bits}_asym" + suffix[fmt.granularity]
    if isinstance(fmt, IntFormat):
        return f"int{fmt.bits}" + suffix[fmt.granularity]
    if isinstance(fmt, FP8Format):
        return f"fp8_{fmt.element}" + {"tensor": "", "channel": "_channel", "block": f"_g{fmt.block}"}[fmt.granularity]
    if isinstance(fmt, NVFP4Format):
        return "nvfp4"
    if isinstance(fmt, MXFormat):
        return {"e2m1": "mxfp4", "e4m3": "mxfp8", "e5m2": "mxfp8_e5m2"}.get(fmt.element, f"mxfp6_{fmt.element}")
    return fmt.name


# ----------------------------------------------------------------------------- the student's layers


@dataclass
class LayerQuant:
    """One quantized Linear of the student, as the export sees it."""

    name: str
    module: nn.Linear
    weight_fmt: Optional[Format]
    weight_amax: Optional[torch.Tensor]
    act_fmt: Optional[Format]
    act_amax: Optional[torch.Tensor]  # None: scales computed at run time (dynamic)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight.detach()

    @property
    def shape(self) -> tuple:
        return tuple(self.module.weight.shape)

    @property
    def weight_format(self) -> Optional[str]:
        return self.weight_fmt.name if self.weight_fmt is not None else None

    @property
    def act_format(self) -> Optional[str]:
        return self.act_fmt.name if self.act_fmt is not None else None

    def quantize(self) -> QTensor:
        """The weight's codes and scales (computed once per export; :meth:`release` frees them)."""
        q = self.__dict__.get("_q")
        if q is None:
            w = self.weight.cpu()
            amax = self.weight_amax.cpu() if self.weight_amax is not None else None
            q = self.__dict__["_q"] = self.weight_fmt.quantize(w, amax)
        return q

    def release(self) -> None:
        self.__dict__.pop("_q", None)

    def fake_weight(self) -> torch.Tensor:
        """The weight exactly as the student's forward uses it."""
        if self.weight_fmt is None:
            return self.weight
        with torch.no_grad():
            return self.weight_fmt.fake_quant(self.weight, self.weight_amax)

    def act_tensor_scale(self, what: str = "scale") -> torch.Tensor:
        """The static activation scale the student uses (``scale`` or NVFP4's ``scale2``)."""
        q = self.act_fmt.quantize(torch.zeros(1), self.act_amax.cpu())
        return getattr(q, what).float()

    def info(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"weight": self.weight_format, "activation": self.act_format,
                             "shape": list(self.shape)}
        d["input_amax"] = float(self.act_amax.reshape(-1)[0]) if self.act_amax is not None else None
        return d


def quantized_layers(model: nn.Module, assume_calibrated: bool = False) -> Dict[str, LayerQuant]:
    """The QuantLinear layers with an enabled weight or input quantizer, in model order.

    ``assume_calibrated``: treat activation quantizers that calibration will give a
    static scale as if it already had (to check a plan before calibrating).
    """
    out: Dict[str, LayerQuant] = {}
    for name, m in model.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        wq, iq = m.weight_quantizer, m.input_quantizer
        w_on = wq.fmt is not None and wq.enabled
        a_on = iq.fmt is not None and iq.enabled
        if not (w_on or a_on):
            continue
        act_amax = iq.amax.detach().float() if (a_on and iq.amax is not None) else None
        if a_on and act_amax is None and assume_calibrated and iq.fmt.calibratable and iq.fmt.has_tensor_scale:
            act_amax = torch.ones(())  # placeholder: calibration sets the real one
        if act_amax is not None and act_amax.numel() != 1:
            raise ExportError(f"layer {name}: activation format {iq.format_name} has {act_amax.numel()} calibrated "
                              "scales; only one per-tensor activation scale can be exported")
        out[name] = LayerQuant(name, m, wq.fmt if w_on else None,
                               wq.amax.detach() if (w_on and wq.amax is not None) else None,
                               iq.fmt if a_on else None, act_amax)
    return out


def linear_names(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def high_precision_linears(model: nn.Module, layers: Dict[str, LayerQuant]) -> List[str]:
    return [n for n in linear_names(model) if n not in layers]


# ----------------------------------------------------------------------------- the output folder


def is_temp_name(name: str) -> bool:
    return TMP_TAG in name


def read_marker(folder: Path) -> Optional[Dict[str, Any]]:
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (data.get("producer") or {}).get("name") != PRODUCER:
        return None
    return data


def check_output_folder(out: os.PathLike) -> None:
    """Raise ExportError if ``out`` may not be written (a file, or a non-empty folder that is not ours)."""
    path = Path(out).expanduser().absolute()
    if not path.exists():
        return
    if not path.is_dir():
        raise ExportError(f"{path} exists and is not a folder; choose another output path")
    if any(not is_temp_name(p.name) for p in path.iterdir()) and read_marker(path) is None:
        raise ExportError(f"{path} is not empty and is not a previous lowbit export; "
                          "choose an empty or new output folder (nothing was overwritten)")


class ExportFolder:
    """Files written under temporary names, renamed into place by :meth:`commit`."""

    def __init__(self, out: os.PathLike):
        self.final = Path(out).expanduser().absolute()
        self.previous: Optional[Dict[str, Any]] = None
        check_output_folder(self.final)
        if self.final.exists():
            self.previous = read_marker(self.final)
            self.stage = self.final
            self.in_place = True
        else:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.stage = self.final.parent / f".{self.final.name}{TMP_TAG}-{uuid.uuid4().hex[:8]}"
            self.stage.mkdir()
            self.in_place = False
        self._pending: List[tuple] = []  # (temporary path, final name)

    def temp_path(self, label: str) -> Path:
        return self.stage / f".{label}{TMP_TAG}"

    def add(self, tmp: Path, name: str) -> None:
        fsync_path(tmp)
        self._pending.append((tmp, name))

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.temp_path(name)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        self.add(tmp, name)

    def copy_file(self, src: Path, name: str) -> None:
        tmp = self.temp_path(name)
        shutil.copyfile(src, tmp)
        self.add(tmp, name)

    @property
    def names(self) -> List[str]:
        return [n for _, n in self._pending]

    def commit(self) -> None:
        """Rename every file into place (weights first, config and marker last), then the folder."""
        def rank(name: str) -> int:
            if name.endswith(".safetensors"):
                return 0
            if name.endswith(".index.json"):
                return 1
            return {"config.json": 3, MARKER: 4}.get(name, 2)

        for tmp, name in sorted(self._pending, key=lambda p: rank(p[1])):
            os.replace(tmp, self.stage / name)
        new = set(self.names)
        if self.in_place and self.previous:
            for old in self.previous.get("files", []):
                if old not in new and "/" not in old and (self.stage / old).is_file():
                    (self.stage / old).unlink()
        fsync_path(self.stage)
        if not self.in_place:
            os.rename(self.stage, self.final)
            fsync_path(self.final.parent)
        self._pending = []

    def abort(self) -> None:
        if self.in_place:
            for tmp, _ in self._pending:
                tmp.unlink(missing_ok=True)
            for p in self.stage.iterdir():
                if is_temp_name(p.name):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.stage, ignore_errors=True)
        self._pending = []


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ShardWriter:
    """Collect tensors and write safetensors shards of at most ``max_shard_mb`` each (one tensor may exceed it),
    each as soon as it is full (engine.statefile.ShardedSafetensors), under the folder's temporary names."""

    def __init__(self, folder: ExportFolder, max_shard_mb: float, metadata: Optional[Dict[str, str]] = None):
        self.folder = folder
        self._writer = ShardedSafetensors(max_shard_mb, lambda i: folder.temp_path(f"shard-{i:05d}"), metadata)

    @property
    def total_size(self) -> int:
        return self._writer.total_size

    def add(self, name: str, tensor: torch.Tensor) -> None:
        try:
            self._writer.add(name, tensor)
        except ValueError as exc:
            raise ExportError(str(exc)) from None

    def finish(self) -> List[str]:
        shards = self._writer.finish()
        names = shard_names("model", len(shards))
        for (tmp, _), name in zip(shards, names):
            self.folder.add(tmp, name)
        if len(shards) > 1:
            self.folder.write_json(index_name("model"), index_data(shards, names, self.total_size))
        return names


# ----------------------------------------------------------------------------- config and side files


def base_config(model: nn.Module, dtype: torch.dtype) -> Dict[str, Any]:
    config = model.config.to_diff_dict()
    config.pop("quantization_config", None)
    if not config.get("architectures"):
        config["architectures"] = [type(model).__name__]
    config["dtype"] = dtype_name(dtype)
    config.pop("torch_dtype", None)
    return config


def copy_side_files(folder: ExportFolder, model: nn.Module, source_dir: Optional[Path], tokenizer: Any) -> None:
    copied = set()
    if source_dir is not None and Path(source_dir).is_dir():
        for name in SIDE_FILES:
            src = Path(source_dir) / name
            if src.is_file():
                folder.copy_file(src, name)
                copied.add(name)
    if tokenizer is not None and not (copied & {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json"}):
        tmp_dir = folder.temp_path("tokenizer")
        tmp_dir.mkdir(exist_ok=True)
        try:
            tokenizer.save_pretrained(str(tmp_dir))
            for p in sorted(tmp_dir.iterdir()):
                if p.is_file() and p.name not in copied:
                    folder.copy_file(p, p.name)
                    copied.add(p.name)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    gen = getattr(model, "generation_config", None)
    if "generation_config.json" not in copied and gen is not None:
        try:
            can_generate = model.can_generate()
        except Exception:
            can_generate = False
        if can_generate:
            folder.write_json("generation_config.json", json.loads(gen.to_json_string(use_diff=True)))


def folder_bytes(path: Path) -> tuple:
    files = [p for p in Path(path).iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def ties_embeddings(model: nn.Module) -> bool:
    """Whether the config ties the output head to the input embeddings (the loader re-ties them)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return False
    get_text = getattr(cfg, "get_text_config", None)
    text = get_text() if callable(get_text) else cfg
    return bool(getattr(text, "tie_word_embeddings", getattr(cfg, "tie_word_embeddings", False)))


def iter_state(model: nn.Module) -> Iterable[tuple]:
    """(name, tensor) of the model's state, without the quantizers' own buffers."""
    for key, value in model.state_dict().items():
        if "_quantizer." in key:
            continue
        yield key, value
