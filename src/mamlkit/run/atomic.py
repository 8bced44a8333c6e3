"""Atomic writes: a file is either its old self or its whole new self, never half written.

The data goes to a temporary file beside the target (``.NAME.XXXXXX.tmp``, same folder, so the
rename stays on one file system), is flushed to disk, and then replaces the target in one
``os.replace``. A failure (a full disk, a file-size limit) removes the temporary file and
raises the ``OSError`` as it is, for the caller to put in one sentence; a kill leaves at most
a temporary file, which ``temporaries`` finds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

MODE = 0o644  # readable by others, like a file written the ordinary way


def sync(path: Path) -> None:
    """Flush ``path`` (a file or a folder's entries) to disk before a rename relies on it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # a platform that cannot open folders: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # file systems without fsync on folders
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace ``path`` by ``data`` (text as UTF-8) in one step."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data.encode("utf-8") if isinstance(data, str) else data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, MODE)  # mkstemp's 0600 would hide the file from other readers
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def temporaries(folder: Path) -> list[Path]:
    """The temporary files ``write_atomic`` left in ``folder`` when it was killed mid-write."""
    return [path for path in folder.glob(".*.tmp") if path.is_file()]


__all__ = ["sync", "temporaries", "write_atomic"]
