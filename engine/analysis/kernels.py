"""Fake-quant kernel throughput, measured next to ``x.clone()`` in the same run.

``clone`` allocates, reads and writes the tensor once: the roofline of any
out-of-place elementwise op. The ratio clone_time / fake_quant_time says how
close a format's kernel comes to it (1.0 = as fast as a copy).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable, List, Optional

import torch

from .. import formats


def _time(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_kernels(
    device: str = "cpu",
    names: Optional[Iterable[str]] = None,
    size: int = 4096,
    repeats: int = 7,
    on_result: Optional[Callable[[dict], None]] = None,
) -> List[dict]:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(size, size, generator=gen).to(dev)
    nbytes = x.numel() * x.element_size()
    results = []
    for name in names or formats.names():
        fmt = formats.get(name)
        fmt.fake_quant(x)  # compile outside the timed region
        t_fq = _time(lambda: fmt.fake_quant(x), dev, repeats)
        t_clone = _time(lambda: x.clone(), dev, repeats)  # measured beside it: the machine drifts
        row = {
            "format": name,
            "device": str(dev),
            "shape": [size, size],
            "ms": round(t_fq * 1e3, 3),
            "gbps": round(nbytes / t_fq / 1e9, 3),
            "clone_ms": round(t_clone * 1e3, 3),
            "clone_gbps": round(nbytes / t_clone / 1e9, 3),
            "ratio_to_clone": round(t_clone / t_fq, 3),
            "threads": torch.get_num_threads(),
        }
        results.append(row)
        if on_result:
            on_result(row)
    return results
