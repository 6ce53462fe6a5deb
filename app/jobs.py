"""The work behind the window's background tasks, as plain functions (no Qt).

Each function runs on a worker thread (see :mod:`app.worker`), takes an
optional ``state`` (``progress(done, total, text)`` and a cancel token) and
returns plain data. They are unit-testable without a window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

# The formats the per-layer comparison tries, from most to least precise.
COMPARE_FORMATS = ("int8", "fp8_e4m3", "mxfp8", "int4_g128", "nvfp4", "mxfp4")


@dataclass
class ModelInfo:
    """What the Model and Format pages show about a checkpoint."""

    path: str
    summary: Dict[str, Any]  # describe_model(): name, architecture, kind, n_params, dtype, layers[...]
    tokenizer: Any = None
    warnings: List[str] = field(default_factory=list)
    skeleton: Any = None  # empty meta-device Linear layers, for previewing the layer plan
    inspected: Any = None  # engine.io.inspect.ModelInfo: the whole model on the meta device (memory plan)


def inspect_model(path: str, dtype: str = "auto", trust_remote_code: bool = False, state=None) -> ModelInfo:
    """Describe the checkpoint without reading its weights: the config, the safetensors headers and
    the model built on the meta device (engine.io.inspect); the tokenizer is loaded."""
    from engine.errors import ModelLoadError
    from engine.io.inspect import inspect_model as inspect_checkpoint
    from engine.io.model import load_tokenizer

    from .plan import skeleton

    info = inspect_checkpoint(path, trust_remote_code=trust_remote_code)
    summary = info.describe()
    tokenizer, notes = None, []
    try:
        tokenizer = load_tokenizer(info.path, trust_remote_code=trust_remote_code)
    except ModelLoadError as exc:
        notes.append(str(exc))
    return ModelInfo(str(info.path), summary, tokenizer, notes, skeleton(summary["layers"]), info)


def memory_plan(recipe, inspected, state=None) -> Dict[str, Any]:
    """The recipe's memory plan for the inspected model: plan.to_dict() plus its text and the refusal
    message (None when it fits) that a run would give."""
    from engine.errors import LowbitError
    from engine.pipeline.plan import check_fits, plan_recipe

    plan = plan_recipe(recipe, info=inspected)
    out = plan.to_dict()
    out["text"] = plan.text()
    try:
        check_fits(plan)
        out["refusal"] = None
    except LowbitError as exc:
        out["refusal"] = str(exc)
    return out


@dataclass
class DataInfo:
    path: str
    documents: int
    characters: int
    tokens: Optional[int]  # None without a tokenizer

    def blocks(self, seq_len: int) -> Optional[int]:
        return None if self.tokens is None or seq_len <= 0 else self.tokens // seq_len


def inspect_data(path: str, tokenizer: Any = None, text_field: str = "text", state=None) -> DataInfo:
    """Read the text data; count its tokens when a tokenizer is known."""
    from engine.io.data import count_tokens, load_texts

    texts = load_texts(path, text_field=text_field)
    if state is not None:
        state.progress(1, 2, "counting tokens")
    tokens = count_tokens(tokenizer, texts) if tokenizer is not None else None
    return DataInfo(str(path), len(texts), sum(len(t) for t in texts), tokens)


@dataclass
class DeviceChoice:
    value: str  # what recipe.device gets: auto | cpu | cuda | cuda:N
    label: str


def list_devices(state=None) -> List[DeviceChoice]:
    """auto and CPU always; one entry per CUDA GPU with its name and memory."""
    import torch

    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            cuda.append(DeviceChoice(f"cuda:{i}" if i else "cuda", f"CUDA {i}: {p.name} ({p.total_memory / 2**30:.0f} GiB)"))
    auto = f"Auto (uses {cuda[0].label.split(': ', 1)[1]})" if cuda else "Auto (CPU: no CUDA GPU found)"
    return [DeviceChoice("auto", auto), DeviceChoice("cpu", "CPU")] + cuda


@dataclass
class LayerErrors:
    """Weight SQNR (dB) of every linear layer under every candidate format."""

    layers: List[str]
    formats: List[str]
    sqnr_db: List[List[float]]  # [layer][format]


def compare_formats(path: str, formats: Sequence[str] = COMPARE_FORMATS, dtype: str = "auto",
                    trust_remote_code: bool = False, state=None) -> LayerErrors:
    """Quantize each layer's weight with each format and measure the SQNR against the original.

    TODO(engine): this belongs in engine/analysis (sensitivity); move it there when that exists.
    """
    import torch

    from engine import formats as registry
    from engine.analysis.metrics import sqnr_db
    from engine.io.model import linear_layers, load_model

    loaded = load_model(path, kind="auto", dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    layers = [(n, m) for n, m in linear_layers(loaded.model) if isinstance(m, torch.nn.Linear)]
    fmts = [registry.get(f) for f in formats]
    rows = []
    with torch.no_grad():
        for i, (name, module) in enumerate(layers):
            if state is not None:
                state.progress(i, len(layers), name)
            w = module.weight.detach().float()
            rows.append([float(sqnr_db(w, f.fake_quant(w))) for f in fmts])
    return LayerErrors([n for n, _ in layers], list(formats), rows)


def export_finished_run(run_dir: str, target: str, out: Optional[str], verify: bool = True, state=None) -> dict:
    """Export a finished run folder (rebuilds its quantized model); returns the export summary."""
    from engine.pipeline.stages.export import export_run

    out_dir = out or str(Path(run_dir) / f"export-{target}")
    return export_run(run_dir, target, out_dir, verify=verify)
