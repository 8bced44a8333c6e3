"""Run a block of torch ops on one intra-op thread, whatever the run's ``threads``.

Two places need it: sampling, whose policy calls are too small to split (a second thread only
adds hand-offs), and the linear baseline's batched solve, which MKL gets wrong on more than one
thread for systems of a couple of hundred unknowns (torch 2.13: "Parameter 6 was incorrect on
entry to DLASWP", then an error; the ant's 214 features hit it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """``torch.set_num_threads(1)`` inside the block, the previous count restored after."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


__all__ = ["one_torch_thread"]
