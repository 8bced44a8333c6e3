"""Where decoded datasets are cached, and atomic reads and writes of the cached tensors."""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "MAMLKIT_CACHE"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$MAMLKIT_CACHE``, else ``~/.cache/mamlkit``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path("~") / ".cache" / "mamlkit"
    return Path(cache_dir).expanduser()


def file_digests(path: str | os.PathLike[str], chunk: int = 1 << 20) -> dict[str, str]:
    """MD5 and SHA-256 hex digests of a file, read once."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def load_cached(path: Path) -> dict[str, Any] | None:
    """The cached dict at ``path``, or None when it is absent or unreadable (then rebuild)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is simply rebuilt
        return None


def save_cached(path: Path, obj: dict[str, Any]) -> bool:
    """Write ``obj`` to ``path`` atomically; warn and return False if the cache is not writable."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache should be readable
        os.replace(tmp, path)
        return True
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        warnings.warn(
            f"Could not write the dataset cache {path} ({err}); set {CACHE_ENV} to a writable "
            "folder to make the next load fast.",
            stacklevel=3,
        )
        return False
