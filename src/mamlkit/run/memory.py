"""Peak memory of the meta-steps between two log records, for ``metrics.jsonl``.

On CUDA it is the allocator's peak (``torch.cuda.max_memory_allocated``, reset per window). On
CPU torch's allocations are invisible to tracemalloc, so it is the process's peak resident set
(``VmHWM``), which Linux lets us reset to the current resident set through
``/proc/self/clear_refs``; where that is not possible it is the lifetime peak (``ru_maxrss``),
which only grows. Both are absolute (they include the interpreter, weights and optimizer state).
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _vm_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """The resident set of this process now, in MiB (0 where /proc is missing)."""
    kb = _vm_kb("VmRSS")
    return kb / 1024 if kb is not None else 0.0


class PeakMemory:
    """``reset()`` starts a window, ``read()`` gives its peak in MiB (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == "cuda" or self._clear_refs()
        self.reset()

    @staticmethod
    def _clear_refs() -> bool:
        try:
            _CLEAR_REFS.write_text("5")  # 5: reset the peak resident set to the current one
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._clear_refs()

    def read(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kb = _vm_kb("VmHWM") if self.resettable else None
        if kb is None:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024


__all__ = ["PeakMemory", "rss_mb"]
