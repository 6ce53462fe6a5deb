"""Export quantized checkpoints that serving engines load, and verify every export.

Targets (one writer and one reader each):

- ``compressed-tensors``: vLLM's layout (``quantization_config`` in config.json,
  packed integer / FP4 weights with their scales);
- ``modelopt``: TensorRT-LLM's Hugging Face layout (``hf_quant_config.json``);
- ``dense``: fake-quantized weights that plain transformers loads.

Public API:

- :func:`export_model` (model, target, out, ...) -> summary dict
- :func:`verify_export` (out_dir, student_model, eval_batches) -> {max_abs_logit_diff, passed, ...}
- :func:`read_export` (out_dir) -> :class:`ExportedCheckpoint`; :func:`rebuild_model`
- :func:`summary_line` (result): one line for logs and the CLI

The run's export stage and ``lowbit export`` of a finished run folder live in
:mod:`engine.pipeline.stages.export`.
"""

from __future__ import annotations

from typing import Any, Dict

from .checkpoint import ExportedCheckpoint, ReadLayer
from .reader import read_export
from .common import DEFAULT_SHARD_MB, MARKER, TARGETS, check_output_folder, quantized_layers
from .exporter import carries_input_multipliers, check_exportable, export_model, preflight, writer_for
from .verify import rebuild_model, verify_export

__all__ = ["TARGETS", "MARKER", "VERIFY_BATCHES", "DEFAULT_SHARD_MB", "export_model", "check_exportable", "preflight",
           "verify_export", "read_export", "rebuild_model", "ExportedCheckpoint", "ReadLayer", "check_output_folder",
           "quantized_layers", "writer_for", "summary_line", "carries_input_multipliers"]

VERIFY_BATCHES = 2  # eval batches run through the student and the rebuilt export


def summary_line(result: Dict[str, Any]) -> str:
    line = (f"exported {result['format']} to {result['path']}: {result['bytes_on_disk'] / 1e6:.2f} MB in "
            f"{result['n_files']} files, {result['bits_per_param']} bits per quantized weight")
    v = result.get("verify")
    if v:
        line += f"; verify {'passed' if v['passed'] else 'FAILED'} (max |logit diff| {v['max_abs_logit_diff']:.3g})"
    return line
