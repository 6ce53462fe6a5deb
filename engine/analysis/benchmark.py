"""Speed, memory and size of a model before and after quantization, side by side.

:func:`bench_model` measures one model as it is (quantizers on or off):

- ``latency_ms``: median wall time of one forward pass of one batch (after a
  warm-up pass), synchronised on CUDA; ``tokens_per_s`` = tokens of the batch / latency.
  A quantized model here runs fake quantization, so its latency is the cost of
  simulating the formats, not the speed of a deployment kernel;
- ``peak_memory_mb``: on CUDA the peak allocated memory during the timed passes;
  on CPU the process's resident-set high-water mark over them (reset first
  through ``/proc/self/clear_refs`` where Linux allows; ``memory_scope`` says
  which was measured);
- ``param_bytes``: the bytes of the parameters as a checkpoint stores them:
  quantized weights at their format's effective bits (codes and scales),
  everything else at its dtype's width, tied parameters once;
- ``bits_per_weight``: stored bits per weight over all Linear layers, and
  ``quantized_bits_per_weight`` over the quantized ones only.

:func:`comparison_rows` assembles the baseline, PTQ and final (QAT / QAD) rows of
a run report (quality metrics next to the benchmark numbers);
:func:`side_by_side` does the same across several runs' reports.
:func:`engine.pipeline.stages.benchmark.benchmark_stage` is the run's stage; :func:`bench_analysis` times the
per-layer analysis on a ~14M-parameter Llama (``lowbit analyze-bench``).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..memory import proc_kib
from ..quant.linear import QuantLinear
from ..quant.select import quantization_disabled
from .layers import model_forward

QUALITY_KEYS = ("perplexity", "kl", "top1_agreement", "cosine", "embedding_cosine", "mse")
BENCH_KEYS = ("latency_ms", "tokens_per_s", "peak_memory_mb", "param_bytes", "bits_per_weight",
              "quantized_bits_per_weight")


# -- size -----------------------------------------------------------------------------------


def _weight_bits(module: nn.Module, weight: torch.Tensor) -> float:
    """Stored bits per element of ``weight``: its format's effective bits when quantized."""
    if isinstance(module, QuantLinear):
        q = module.weight_quantizer
        if q.enabled and q.fmt is not None:
            return q.fmt.effective_bits(module.in_features)
    return weight.element_size() * 8.0


def param_size(model: nn.Module) -> Dict[str, Optional[float]]:
    """``param_bytes``, ``bits_per_weight`` and ``quantized_bits_per_weight`` (see the module doc)."""
    bits: Dict[int, float] = {}  # id(param) -> stored bits of the whole tensor
    lin_bits = lin_n = q_bits = q_n = 0.0
    for _, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            b = _weight_bits(mod, mod.weight)
            n = mod.weight.numel()
            bits[id(mod.weight)] = b * n
            lin_bits += b * n
            lin_n += n
            if isinstance(mod, QuantLinear) and mod.weight_quantizer.enabled and mod.weight_quantizer.fmt is not None:
                q_bits += b * n
                q_n += n
    seen = set()
    total_bits = 0.0
    for p in model.parameters():  # parameters() yields a tied tensor once
        if id(p) in seen:
            continue
        seen.add(id(p))
        total_bits += bits.get(id(p), p.numel() * p.element_size() * 8.0)
    return {"param_bytes": int(round(total_bits / 8)),
            "bits_per_weight": lin_bits / lin_n if lin_n else None,
            "quantized_bits_per_weight": q_bits / q_n if q_n else None}


# -- memory ---------------------------------------------------------------------------------


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM, the resident-set high-water mark
        return True
    except OSError:
        return False


def _rss_peak_mb() -> Optional[float]:
    kib = proc_kib("/proc/self/status", "VmHWM")
    if kib is not None:
        return kib / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024.0


# -- speed ------------------------------------------------------------------------------------


@torch.no_grad()
def bench_model(model: nn.Module, batches: Sequence[torch.Tensor], device: torch.device | str,
                repeats: int = 3, warmup: int = 1) -> Dict[str, Any]:
    """Latency, tokens/s, peak memory, parameter bytes and bits per weight of ``model`` as it is."""
    device = torch.device(device)
    if not batches:
        raise ValueError("bench_model needs a batch")
    ids = batches[0].to(device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model_forward(model, ids)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            scope = "cuda_max_allocated"
        else:
            scope = "process_rss_peak" if _reset_rss_peak() else "process_rss_peak_lifetime"
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model_forward(model, ids)
            sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else _rss_peak_mb()
    finally:
        model.train(was_training)
    latency = statistics.median(times)
    out = {"latency_ms": latency * 1e3, "tokens_per_s": ids.numel() / latency if latency > 0 else None,
           "peak_memory_mb": peak, "memory_scope": scope, "batch_shape": list(ids.shape), "device": str(device),
           "threads": torch.get_num_threads()}
    out.update(param_size(model))
    return out


def bench_before_after(model: nn.Module, batches: Sequence[torch.Tensor], device, repeats: int = 3) -> Dict[str, Any]:
    """``{"baseline": ..., "quantized": ...}``: the model with its quantizers off, then as it is."""
    with quantization_disabled(model):
        base = bench_model(model, batches, device, repeats)
    return {"baseline": base, "quantized": bench_model(model, batches, device, repeats)}


# -- side by side -------------------------------------------------------------------------------


def _row(stage: str, quality: Optional[Mapping], bench: Optional[Mapping]) -> Dict[str, Any]:
    row: Dict[str, Any] = {"stage": stage}
    for k in QUALITY_KEYS:
        if quality and k in quality:
            row[k] = quality[k]
    for k in BENCH_KEYS:
        if bench and k in bench:
            row[k] = bench[k]
    return row


def comparison_rows(report: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Baseline, PTQ and final (labelled with the run's mode, qat or qad) rows of one run's report.

    Quality from ``report["baseline"|"ptq"|"final"]``; speed, memory and size from
    ``report["benchmark"]`` (the quantized numbers serve PTQ and the final row:
    training changes weights, not formats); the final row also gets the exported
    checkpoint's ``checkpoint_bytes`` when the run exported one.
    """
    bench = report.get("benchmark") or {}
    rows = []
    if "baseline" in report:
        rows.append(_row("baseline", report["baseline"], bench.get("baseline")))
    if "ptq" in report:
        rows.append(_row("ptq", report["ptq"], bench.get("quantized")))
    if "final" in report:
        rows.append(_row(str(report.get("mode") or "final"), report["final"], bench.get("quantized")))
    export = report.get("export") or {}
    if len(rows) > 1 and "bytes_on_disk" in export:  # the export is of the last (quantized) model
        rows[-1]["checkpoint_bytes"] = export["bytes_on_disk"]
        if export.get("bits_per_param") is not None:
            rows[-1]["checkpoint_bits_per_weight"] = export["bits_per_param"]
    return rows


def side_by_side(reports: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Rows across runs of one model: the baseline once, then each run's PTQ and final rows.

    When the runs differ in scheme, a row's ``stage`` names it (``"W4A16-INT4 qat"``);
    a scheme's PTQ row appears once however many runs share it.
    """
    reports = list(reports)
    named = len({r.get("scheme") for r in reports}) > 1
    rows: List[Dict[str, Any]] = []
    seen = set()
    for r in reports:
        for row in comparison_rows(r):
            if row["stage"] != "baseline" and named:
                row["stage"] = f"{r.get('scheme')} {row['stage']}"
            key = row["stage"] if row["stage"] == "baseline" or row["stage"].endswith("ptq") else id(row)
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
    return rows


# -- timing the analysis ----------------------------------------------------------------------


def bench_llama(hidden: int = 384, layers: int = 6, intermediate: int = 1024, vocab: int = 8192, seed: int = 0):
    """A randomly initialised Llama (~14M parameters with the defaults, embeddings tied)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    heads = max(1, hidden // 64)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=1024, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def bench_analysis(formats: Sequence[str] = ("nvfp4", "mxfp4", "int4_g128", "int8", "fp8_e4m3"),
                   n_batches: int = 2, batch_size: int = 4, seq_len: int = 256, sensitivity_layers: int = 0,
                   model: Optional[nn.Module] = None) -> Dict[str, Any]:
    """Time :func:`~engine.analysis.layers.analyze_layers` on :func:`bench_llama` with random tokens.

    ``sensitivity_layers`` > 0 also times "only this on" for that many layers
    (all formats) and extrapolates to all layers. Reports the machine's load.
    """
    from .layers import analyze_layers, candidate_layers
    from .sensitivity import ModelProbe, sensitivity

    model = model if model is not None else bench_llama()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (batch_size, seq_len), generator=gen) for _ in range(n_batches)]
    layers = candidate_layers(model)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    result = analyze_layers(model, batches, formats, layers=layers)
    t_analysis = time.perf_counter() - t0
    out: Dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()), "layers": len(layers), "formats": list(formats),
        "batches": n_batches, "batch_shape": [batch_size, seq_len], "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "analysis_s": round(t_analysis, 2), "analysis_seconds": result.seconds,
        "load_avg_before": load_before,
    }
    if sensitivity_layers > 0:
        t0 = time.perf_counter()
        n = min(sensitivity_layers, len(layers))
        timed = [layers[round(i * (len(layers) - 1) / max(1, n - 1))] for i in range(n)]  # spread over the depth
        with ModelProbe(model, layers, batches) as probe:
            t_ref = time.perf_counter() - t0
            t1 = time.perf_counter()
            sensitivity(model, batches, formats, probe=probe, layers=timed)
            t_meas = time.perf_counter() - t1
        out.update({"sensitivity_layers_timed": n, "sensitivity_reference_s": round(t_ref, 2),
                    "sensitivity_s_per_measure": round(t_meas / (n * len(formats)), 3),
                    "sensitivity_all_layers_est_s": round(t_ref + t_meas / n * len(layers), 1)})
    out["load_avg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return out
