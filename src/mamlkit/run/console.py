"""The lines a person reads while a run trains, on standard error beside the progress bar.

The records go to ``metrics.jsonl`` and TensorBoard; these lines only show them: each
validation's result (above the bar when one is shown), and, where no bar is shown
(``--no-progress``, a log file), a line of where the run is at most every ``INTERVAL`` seconds,
so a long run is never silent for minutes.
"""

from __future__ import annotations

import sys
import time
from typing import Any

INTERVAL = 30.0  # seconds between progress lines when no bar is shown


def validation_line(iteration: int, total: int, record: dict[str, Any],
                    tasks: int) -> str | None:
    """``iteration 1000/70000: validation before adaptation 3.12 ± 0.21, adapted 0.45 ± 0.03
    (mean ± 95% CI over 100 held-out tasks)``; None for a record without a validation."""
    if "val_post" not in record:
        return None

    def value(key: str) -> str:
        ci = record.get(f"{key}_ci95")
        return f"{record[key]:.4g}" + (f" ± {ci:.2g}" if ci is not None else "")

    return (f"iteration {iteration}/{total}: validation before adaptation {value('val_pre')}, "
            f"adapted {value('val_post')} (mean ± 95% CI over {tasks} held-out tasks)")


class Console:
    """Prints the validation lines and, without a bar, the periodic progress lines; silent on
    torchrun ranks other than 0. ``bar`` is the run's tqdm bar (``write`` prints above it)."""

    def __init__(self, bar: Any, total: int, start: int, val_tasks: int, bar_shown: bool,
                 main: bool) -> None:
        self.bar, self.total, self.start, self.val_tasks = bar, total, start, val_tasks
        self.bar_shown, self.main = bar_shown, main
        self.began = self.last_line = time.perf_counter()
        self.postfix: dict[str, str] = {}

    def _print(self, line: str) -> None:
        if self.bar_shown:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def after_record(self, iteration: int, record: dict[str, Any],
                     postfix: dict[str, str]) -> None:
        """Keep the record's bar fields for the progress lines; print its validation."""
        if not self.main:
            return
        self.postfix = postfix or self.postfix
        line = validation_line(iteration, self.total, record, self.val_tasks)
        if line is not None:
            self._print(line)

    def tick(self, iteration: int) -> None:
        """After each iteration: a progress line where no bar is shown, at most every
        INTERVAL seconds, and at the last iteration."""
        if not self.main or self.bar_shown:
            return
        now = time.perf_counter()
        if now - self.last_line < INTERVAL and iteration != self.total:
            return
        self.last_line = now
        rate = (iteration - self.start) / max(now - self.began, 1e-9)
        fields = "".join(f", {key} {value}" for key, value in self.postfix.items())
        self._print(f"iteration {iteration}/{self.total} ({100 * iteration // self.total}%), "
                    f"{rate:.3g} it/s{fields}")


__all__ = ["INTERVAL", "Console", "validation_line"]
