"""Measuring memory: the resident set of this process (Linux /proc) and CUDA's allocator peak.

``peak_rss_reset()`` makes the kernel's high-water mark (VmHWM) start again from the
current resident set, so a stage's own peak can be read with ``peak_rss()`` after it.
Where /proc is missing (macOS, Windows) the figures come from ``resource`` and cannot be
reset; ``rss_resettable()`` says which.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Optional

GiB = 1 << 30
MiB = 1 << 20


def _status() -> Dict[str, int]:
    out: Dict[str, int] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def rss() -> int:
    """Bytes resident now."""
    value = _status().get("VmRSS")
    if value is not None:
        return value
    return peak_rss()


def peak_rss() -> int:
    """Bytes resident at the high-water mark (since the start, or since ``peak_rss_reset``)."""
    value = _status().get("VmHWM")
    if value is not None:
        return value
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def release_free_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``); False where there is none.

    Large tensors freed by a stage can stay in the heap (glibc raises its mmap threshold after big
    frees, so later big blocks come from the heap and are kept when freed): the next stage would
    then start from, and be measured above, memory nothing uses. Called between stages, it costs
    well under a millisecond when there is little to give back."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)
    return True


_libc = None


def rss_resettable() -> bool:
    return os.path.exists("/proc/self/clear_refs")


def peak_rss_reset() -> bool:
    """Restart the high-water mark from the current resident set; False where the system cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def total_ram() -> Optional[int]:
    """Physical memory of this machine in bytes (None if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def proc_kib(path: str, field: str) -> Optional[int]:
    """A ``Field:   N kB`` line of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in KiB;
    None where the file or the field is not there (not Linux)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def available_ram() -> Optional[int]:
    """Memory the kernel says a new allocation can get without swapping (MemAvailable)."""
    kib = proc_kib("/proc/meminfo", "MemAvailable")
    return kib * 1024 if kib is not None else total_ram()


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


class StagePeak:
    """The peak memory of one stage: the resident set's high-water mark on the CPU (restarted when
    the stage starts), the allocator's peak on CUDA. ``read()`` returns bytes, or None where the
    system cannot tell a stage's own peak."""

    def __init__(self, device):
        self.cuda = getattr(device, "type", str(device)).startswith("cuda")
        self.device = device
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(device)
            self.ok = True
        else:
            release_free_heap()  # the stage starts from what is in use, not from what the last one freed
            self.ok = peak_rss_reset()

    def read(self) -> Optional[int]:
        if not self.ok:
            return None
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated(self.device))
        return int(peak_rss())


def give_back_free_memory() -> None:
    """Return freed memory to the system: CUDA's cached blocks, and glibc's free heap pages (tensors
    under its 32 MB mmap threshold live on the heap, which otherwise keeps its high-water size)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - a broken CUDA install must not stop a CPU run
        pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
