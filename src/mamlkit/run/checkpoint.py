"""Checkpoints that resume exactly: safetensors weights plus a JSON of optimizer and loop state.

Each checkpoint is a directory written under a temporary name, synced and renamed into place, and
the ``latest`` pointer is replaced atomically, so a kill never leaves a half-written checkpoint;
``usable`` still checks every file before a resume (a power cut or a full disk can truncate what
the kernel had not yet written) and falls back to the previous checkpoint kept.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from mamlkit.run.errors import RunDirectoryError

KEEP = 2
_NAME = re.compile(r"step_\d{8}")
_STATE_KEYS = ("iteration", "param_groups", "optimizer_scalars", "task_rng", "torch_rng")


def _sync(path: Path) -> None:
    """Flush ``path`` (a file or a directory's entries) to disk before a rename relies on it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # a platform that cannot open directories: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # file systems without fsync on directories
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _sync(tmp)
    os.replace(tmp, path)


def _rng_to_text(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _rng_from_text(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def save(run_dir: Path, iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer,
         generator: torch.Generator, extra: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``iteration`` and point ``latest`` at it; keep the last KEEP of them
    (and none past ``iteration``).

    ``model`` is the module whose whole state is saved: the learner, so that meta-parameters
    beyond the network's weights (Meta-SGD rates, MAML++ per-step parameters) resume exactly.
    """
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{iteration:08d}"
    tmp = root / f".step_{iteration:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              tmp / "model.safetensors")
    opt = optimizer.state_dict()
    tensors, state_meta = {}, {}
    for index, state in opt["state"].items():
        state_meta[str(index)] = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                state_meta[str(index)][key] = value
    save_file(tensors, tmp / "optimizer.safetensors")
    loop_state = {
        "iteration": iteration,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": state_meta,
        "task_rng": _rng_to_text(generator.get_state()),
        "torch_rng": _rng_to_text(torch.get_rng_state()),
        **(extra or {}),
    }
    (tmp / "state.json").write_text(json.dumps(loop_state))
    for path in (*tmp.iterdir(), tmp):
        _sync(path)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _sync(root)
    _write_text_atomic(root / "latest", final.name)
    # newer ones are from a branch a resume abandoned (say a damaged checkpoint skipped)
    newer = [p for p in kept(run_dir) if p.name > final.name]
    older = [p for p in kept(run_dir) if p.name <= final.name][KEEP:]
    for old in newer + older:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names (None without one or if it names none)."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    path = run_dir / "checkpoints" / name
    return path if _NAME.fullmatch(name) and path.is_dir() else None


def kept(run_dir: Path) -> list[Path]:
    """The checkpoint directories present, newest first (temporary ones excluded)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _NAME.fullmatch(p.name) and p.is_dir()),
                  reverse=True)


def verify(path: Path) -> dict[str, Any]:
    """The loop state of checkpoint ``path`` if each of its files reads back whole.

    Raises RunDirectoryError naming the first unreadable file and why (a truncated or empty
    file, broken JSON, missing keys); the tensors' bytes are not re-read, only the safetensors
    headers, which cover the files' exact lengths.
    """
    for name in ("model.safetensors", "optimizer.safetensors"):
        try:
            with safe_open(str(path / name), "pt"):
                pass
        except (OSError, SafetensorError) as error:
            raise RunDirectoryError(f"{name}: {_short(error)}") from None
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirectoryError(f"state.json: {_short(error)}") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["iteration"], int):
        raise RunDirectoryError(f"state.json: lacks {', '.join(missing) or 'an iteration'}")
    return state


class Usable(NamedTuple):
    """The checkpoint a resume starts from, its iteration, and those skipped (and why)."""

    path: Path | None
    iteration: int
    skipped: list[str]


def usable(run_dir: Path) -> Usable:
    """The newest checkpoint that verifies: the ``latest`` pointer's first, then the others.

    ``Usable(None, 0, [])`` when the run holds no checkpoint; RunDirectoryError in one sentence
    when it holds some but none reads back.
    """
    pointed = latest(run_dir)
    candidates = [pointed] if pointed is not None else []
    candidates += [p for p in kept(run_dir) if p != pointed]
    skipped = []
    for path in candidates:
        try:
            return Usable(path, verify(path)["iteration"], skipped)
        except RunDirectoryError as error:
            skipped.append(f"{path.name} ({error})")
    if skipped:
        raise RunDirectoryError(f"No usable checkpoint in {run_dir / 'checkpoints'}: "
                                f"{'; '.join(skipped)}.")
    return Usable(None, 0, [])


def _short(error: BaseException) -> str:
    """An exception's message on one line, for sentences about a damaged file."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(text.split())


def remove_partial(run_dir: Path) -> None:
    """Delete what a kill in the middle of ``save`` or ``save_best`` can leave behind.

    A complete ``best/`` written under its temporary name, or the previous one moved aside,
    is renamed back into place first, so no kept model is lost.
    """
    best_dir, tmp, old = run_dir / "best", run_dir / ".best.tmp", run_dir / ".best.old"
    if not best_dir.exists():
        for candidate in (tmp, old):
            if (candidate / "best.json").is_file() and (candidate / "model.safetensors").is_file():
                os.replace(candidate, best_dir)
                break
    for path in (tmp, old, *(run_dir / "checkpoints").glob(".step_*.tmp")):
        shutil.rmtree(path, ignore_errors=True)
    (run_dir / "checkpoints" / "latest.tmp").unlink(missing_ok=True)


def load_model(path: Path, model: nn.Module) -> None:
    """Load the weights into ``model``: the learner (model plus learned rates and the like).

    Checkpoints written before learners saved their own state hold the bare model's weights
    (no ``model.`` prefix); those load into ``model.model``.
    """
    try:
        weights = load_file(path / "model.safetensors")
    except (OSError, SafetensorError) as error:
        raise RunDirectoryError(f"{path / 'model.safetensors'} is unreadable ({_short(error)}); "
                                "the run directory is damaged.") from None
    inner = getattr(model, "model", None)
    if (isinstance(inner, nn.Module) and set(weights) != set(model.state_dict())
            and set(weights) == set(inner.state_dict())):
        inner.load_state_dict(weights)
        return
    model.load_state_dict(weights)


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
         generator: torch.Generator) -> dict[str, Any]:
    """Restore model, optimizer and random number generators; returns the loop state."""
    load_model(path, model)
    loop_state = json.loads((path / "state.json").read_text())
    tensors = load_file(path / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for index, scalars in loop_state["optimizer_scalars"].items():
        state[int(index)] = dict(scalars)
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": loop_state["param_groups"]})
    generator.set_state(_rng_from_text(loop_state["task_rng"]))
    torch.set_rng_state(_rng_from_text(loop_state["torch_rng"]))
    return loop_state


def save_best(run_dir: Path, learner: nn.Module, iteration: int, value: float) -> None:
    """Write ``best/`` (weights and a JSON) under a temporary name and rename it into place."""
    final, tmp = run_dir / "best", run_dir / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in learner.state_dict().items()},
              tmp / "model.safetensors")
    (tmp / "best.json").write_text(json.dumps({"iteration": iteration, "val_post": value}))
    for path in (*tmp.iterdir(), tmp):
        _sync(path)
    old = run_dir / ".best.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def best_value(run_dir: Path) -> float:
    """The validation value ``best/`` was kept for; -inf without one, or when it was kept after
    the latest checkpoint: a resume replays those iterations and finds it again (exactly) or
    finds another, as the uninterrupted run would have."""
    found = best(run_dir)
    last = latest(run_dir)
    if found is None or last is None or found[1] > int(last.name.split("_")[-1]):
        return -math.inf
    return _best_json(found[0])["val_post"]


def best(run_dir: Path) -> tuple[Path, int] | None:
    """``best/`` and the iteration it holds, if the run keeps one (meta-RL runs)."""
    path = run_dir / "best"
    if not (path / "model.safetensors").is_file():
        return None
    return path, _best_json(path)["iteration"]


def _best_json(path: Path) -> dict[str, Any]:
    """``best/best.json``, or RunDirectoryError in one sentence if it does not read back."""
    try:
        values = json.loads((path / "best.json").read_text())
        return {"iteration": int(values["iteration"]), "val_post": float(values["val_post"])}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
        raise RunDirectoryError(
            f"{path / 'best.json'} is unreadable ({_short(error)}); delete {path} and the run "
            "keeps its best model anew from the next validation.") from None
