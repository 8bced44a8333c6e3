"""``metrics.jsonl``: one JSON record per logged iteration, appended as training goes.

Readers tolerate what a kill can leave behind (a partial last line) and skip, with one warning
line, lines that are no record (a record is an object with an integer ``iteration`` and
numbers); the only rewrite (dropping records past the checkpoint a resume starts from, and
those lines) goes through a temporary file and a rename, so a kill never leaves the file empty
or half-written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mamlkit.run.atomic import write_atomic

_warned: set[tuple[str, int, int]] = set()  # (file, size, mtime) already reported


def is_record(value: Any) -> bool:
    """Whether a parsed line is a metrics record: ``iteration`` a whole number >= 0, every
    other value a number (or null, which JSON writes for a missing one)."""
    if not isinstance(value, dict):
        return False
    iteration = value.get("iteration")
    if type(iteration) is not int or iteration < 0:
        return False
    return all(v is None or (isinstance(v, int | float) and not isinstance(v, bool))
               for v in value.values())


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (none if missing), skipping a partial last
    line silently and any other line that is no record with one warning on stderr."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    records, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                continue  # the line a kill cut short; the records before it stand
            value = None
        if is_record(value):
            records.append(value)
        else:
            bad.append((number, line))
    if bad:
        _warn_once(path, bad)
    return records


def _warn_once(path: Path, bad: list[tuple[int, str]]) -> None:
    """One line per state of the file, however often a command reads it."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _warned:
        return
    _warned.add(key)
    number, line = bad[0]
    shown = line if len(line) <= 40 else line[:37] + "..."
    what = "line of {} that is no metrics record" if len(bad) == 1 else (
        "lines of {} that are no metrics records")
    print(f"mamlkit: warning: skipped {len(bad)} {what.format(path)} (the first, line {number}: "
          f"{shown}).", file=sys.stderr)


def trim_metrics(run_dir: str | Path, iteration: int) -> None:
    """Drop records past ``iteration`` (the checkpoint a resume starts from), and lines that
    are no record, atomically."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r["iteration"] <= iteration]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


__all__ = ["is_record", "read_metrics", "trim_metrics"]


def elapsed_seconds(records: list[dict]) -> list[float]:
    """Each record's wall time since the run began, over every process of the run.

    ``seconds`` counts from the start of the process that wrote the record, so it restarts when a
    run resumes; a drop marks a resume, and the time before it (up to the last record kept) adds
    on. Work lost between the last record and a kill is not counted."""
    elapsed, offset, last = [], 0.0, 0.0
    for record in records:
        if record["seconds"] < last:
            offset += last
        last = record["seconds"]
        elapsed.append(offset + last)
    return elapsed
