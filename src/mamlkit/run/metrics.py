"""``metrics.jsonl``: one JSON record per logged iteration, appended as training goes.

Readers tolerate what a kill can leave behind (a partial last line); the only rewrite (dropping
records past the checkpoint a resume starts from) goes through a temporary file and a rename,
so a kill never leaves the file empty or half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (none if missing), skipping a partial line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the line a kill cut short; the records before it stand
    return records


def trim_metrics(run_dir: str | Path, iteration: int) -> None:
    """Drop records past ``iteration`` (the checkpoint a resume starts from), atomically."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("iteration", 0) <= iteration]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


__all__ = ["read_metrics", "trim_metrics"]
