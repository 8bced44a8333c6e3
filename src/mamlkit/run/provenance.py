"""``run.json``: where a run came from, so that a result can be traced back and reproduced.

Written when a run starts (after its build succeeded): the versions of mamlkit, torch, Python
and numpy, the command line, the git commit of the mamlkit source (and whether it had local
changes), the start time and the host. ``sessions`` lists every session, the first included,
with the same facts, the iteration it started from and the keys it changed: each ``--resume``
appends one, because a resume on another torch or another commit can change the numbers;
nothing earlier is overwritten (the top level keeps the first session's facts).
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy
import torch

import mamlkit
from mamlkit.run.atomic import write_atomic

NAME = "run.json"


def git_state(directory: Path) -> dict[str, Any] | None:
    """The commit of the git checkout holding ``directory`` and whether it has changes.

    None when mamlkit is not run from a checkout (an installed wheel, no git, a timeout); the
    package's ``__init__.py`` must be tracked there, so an unrelated repository around a
    virtual environment is not mistaken for mamlkit's.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def describe(world_size: int = 1) -> dict[str, Any]:
    """This process's facts: versions, command line, source commit, time (UTC) and host."""
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "mamlkit": mamlkit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "git": git_state(Path(mamlkit.__file__).parent),
        "host": socket.gethostname(),
        "world_size": world_size,
    }


def record(run_dir: Path, resume: bool, start_iteration: int,
           changes: dict[str, Any] | None = None, world_size: int = 1) -> dict[str, Any]:
    """Write ``run.json`` for a new run, or append this session to it for a resume."""
    path = run_dir / NAME
    facts = describe(world_size)
    session = {**facts, "start_iteration": start_iteration, "changed": changes or {}}
    data = read(path) if resume else None
    if data is None:
        data = {**facts, "start_iteration": start_iteration, "sessions": [session]}
        if resume:  # a run from before run.json existed, or one whose run.json was damaged
            data["note"] = "run.json was missing or unreadable when this resume started"
    else:
        data.setdefault("sessions", []).append(session)
    write_atomic(path, json.dumps(data, indent=2) + "\n")
    return data


def read(path: Path) -> dict[str, Any] | None:
    """``run.json``'s contents, or None if missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


__all__ = ["NAME", "describe", "git_state", "read", "record"]
