"""SIGINT and SIGTERM during training: stop cleanly at an iteration boundary.

A cluster's scheduler sends SIGTERM before it kills a job, and Ctrl-C sends SIGINT; either one
asks the loop to stop after the iteration it is in, with a checkpoint of that iteration, so a
``--resume`` loses nothing. A second signal abandons the iteration at once (the checkpoint
before it stands), unless it follows the first within ``GRACE`` seconds: torchrun forwards a
SIGTERM right after the terminal's SIGINT, and schedulers signal every process of a job, so
near-simultaneous signals are one request. The handlers are the loop's only while it runs:
the previous ones come back when it returns, however it returns.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

from mamlkit.run.errors import TrainingInterrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE = 1.0  # seconds after the first signal in which another one is the same request


class Interrupts:
    """Context manager recording the first signal in ``signum``; the loop polls it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.since = 0.0  # time.monotonic() of the first signal
        self.iteration = 0  # the iteration under way, for the message of a second signal
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        # handlers can be installed from the main thread only; elsewhere signals keep theirs
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and time.monotonic() - self.since > GRACE:
            raise TrainingInterrupted(
                f"interrupted again during iteration {self.iteration}; abandoned it; continue "
                "with --resume from the last checkpoint", signum, self.iteration - 1)
        if self.signum is None:
            self.signum, self.since = signum, time.monotonic()


__all__ = ["SIGNALS", "Interrupts"]
