"""Checkpoints that resume exactly: safetensors weights plus a JSON of optimizer and loop state.

Each checkpoint is a directory written under a temporary name, synced and renamed into place, and
the ``latest`` pointer is replaced atomically, so a kill never leaves a half-written checkpoint.
Every file of a checkpoint (and of ``best/``) has its sha256 recorded in ``SHA256SUMS`` (the
format of ``sha256sum -c``) when written, and each read checks it: a power cut, a full disk or a
flipped bit that leaves the files parseable but wrong is found, and ``usable`` falls back to the
previous checkpoint kept. Checkpoints written before sums were recorded have none; they load
unverified, but every value is still parse-checked. A checkpoint also keeps the ``config.yaml``
it was trained with, so a run's own ``config.yaml`` can be matched against it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as tensors_to_bytes
from torch import nn

from mamlkit.run import config as config_lib
from mamlkit.run.atomic import sync, temporaries, write_atomic
from mamlkit.run.errors import NEW_OUT, RESUME, RunDirectoryError


class Stateful(Protocol):
    """What a checkpoint saves and loads: a learner (``run.learner.Learner``), any module."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any: ...


KEEP = 2
SUMS, CONFIG = "SHA256SUMS", "config.yaml"
_NAME = re.compile(r"step_\d{8}")
_FILES = ("model.safetensors", "optimizer.safetensors", "state.json")
_STATE_KEYS = ("iteration", "param_groups", "optimizer_scalars", "task_rng", "torch_rng")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Each file synced to disk, then ``SHA256SUMS`` of them all, then the folder's entries.

    Written with Python's own file objects, so a full disk or a file-size limit is an OSError
    like any other (safetensors' own writer turns it into a SafetensorError).
    """
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                   for name, data in sorted(files.items()))
    for name, data in [*files.items(), (SUMS, sums.encode())]:
        with open(folder / name, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    sync(folder)


def _read_sums(folder: Path) -> dict[str, str] | None:
    """``SHA256SUMS`` as {file name: sha256}; None where none was written (older checkpoints)."""
    try:
        text = (folder / SUMS).read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise RunDirectoryError(f"{SUMS}: {_short(error)}") from None
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if not _DIGEST.fullmatch(digest) or not name:
            raise RunDirectoryError(f"{SUMS}: a line is not 'sha256  file' ({line[:40]!r})")
        sums[name] = digest
    return sums


def _read_files(folder: Path, names: tuple[str, ...],
                optional: tuple[str, ...] = ()) -> dict[str, bytes]:
    """The bytes of ``names`` (and of each ``optional`` one the sums list), each checked
    against the folder's ``SHA256SUMS`` where it has one.

    RunDirectoryError ``"<file>: <why>"`` for the first file missing, unreadable or changed.
    """
    sums = _read_sums(folder)
    listed = [name for name in optional if sums is not None and name in sums]
    files = {}
    for name in (*names, *listed):
        try:
            data = (folder / name).read_bytes()
        except OSError as error:
            raise RunDirectoryError(f"{name}: {_short(error)}") from None
        if sums is not None and name not in sums:
            raise RunDirectoryError(f"{SUMS}: lists no sha256 of {name}")
        if sums is not None and hashlib.sha256(data).hexdigest() != sums[name]:
            raise RunDirectoryError(f"{name}: its bytes do not match the sha256 recorded in "
                                    f"{SUMS}")
        files[name] = data
    return files


def _rng_to_text(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _rng_from_text(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def save(run_dir: Path, iteration: int, model: Stateful, optimizer: torch.optim.Optimizer,
         generator: torch.Generator, extra: dict[str, Any] | None = None,
         config: config_lib.Config | None = None) -> Path:
    """Write checkpoint ``iteration`` and point ``latest`` at it; keep the last KEEP of them
    (and none past ``iteration``).

    ``model`` is the module whose whole state is saved: the learner, so that meta-parameters
    beyond the network's weights (Meta-SGD rates, MAML++ per-step parameters) resume exactly;
    ``config``, the run's, is kept beside it. A write that fails (a full disk, a file-size
    limit) leaves the checkpoints before as they were and raises RunDirectoryError in one
    sentence.
    """
    root = run_dir / "checkpoints"
    final = root / f"step_{iteration:08d}"
    tmp = root / f".step_{iteration:08d}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_files(tmp, _checkpoint_files(iteration, model, optimizer, generator, extra,
                                            config))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        sync(root)
        write_atomic(root / "latest", final.name)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _unwritten(run_dir, final, error) from None
    # newer ones are from a branch a resume abandoned (say a damaged checkpoint skipped)
    newer = [p for p in kept(run_dir) if p.name > final.name]
    older = [p for p in kept(run_dir) if p.name <= final.name][KEEP:]
    for old in newer + older:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoint_files(iteration: int, model: Stateful, optimizer: torch.optim.Optimizer,
                      generator: torch.Generator, extra: dict[str, Any] | None,
                      config: config_lib.Config | None) -> dict[str, bytes]:
    """A checkpoint's files as bytes: weights, optimizer tensors, loop state, config."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        state_meta[str(index)] = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                state_meta[str(index)][key] = value
    loop_state = {
        "iteration": iteration,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": state_meta,
        "task_rng": _rng_to_text(generator.get_state()),
        "torch_rng": _rng_to_text(torch.get_rng_state()),
        **(extra or {}),
    }
    files = {"model.safetensors": _weights_bytes(model),
             "optimizer.safetensors": tensors_to_bytes(tensors),
             "state.json": json.dumps(loop_state).encode()}
    if config is not None:
        files[CONFIG] = config_lib.yaml_text(config).encode()
    return files


def _weights_bytes(model: Stateful) -> bytes:
    return tensors_to_bytes({k: v.detach().cpu().contiguous()
                             for k, v in model.state_dict().items()})


def _unwritten(run_dir: Path, final: Path, error: OSError) -> RunDirectoryError:
    """The one sentence for a checkpoint that could not be written."""
    previous = latest(run_dir)
    then = (f"{RESUME} goes on from {previous.name}" if previous is not None
            else f"{RESUME} trains it again from iteration 0")
    return RunDirectoryError(f"Could not write checkpoint {final.name} into {final.parent} "
                             f"({_short(error)}); {_remedy(error, run_dir)}, then {then}.")


def _remedy(error: OSError, run_dir: Path) -> str:
    """What to change after a failed write, by its cause."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space"
    if error.errno == errno.EFBIG:
        return "raise the file-size limit (ulimit -f)"
    return f"make {run_dir} writable"


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


class Contents(NamedTuple):
    """A checkpoint read back whole: its loop state, tensors and the config it was trained
    with (None in checkpoints written before a copy was kept)."""

    state: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    config: str | None


def read(path: Path) -> Contents:
    """Every file of checkpoint ``path``, checked against its sums and parsed.

    Raises RunDirectoryError naming the first damaged file and why (missing, truncated,
    changed since it was written, or a value no checkpoint holds).
    """
    files = _read_files(path, _FILES, optional=(CONFIG,))
    weights = _tensors(files, "model.safetensors")
    optimizer = _tensors(files, "optimizer.safetensors")
    state = _loop_state(files["state.json"], path.name)
    if any(not re.fullmatch(r"\d+\..+", key) for key in optimizer):
        raise RunDirectoryError("optimizer.safetensors: holds tensors of no parameter")
    config = files[CONFIG].decode("utf-8", errors="replace") if CONFIG in files else None
    return Contents(state, weights, optimizer, config)


def verify(path: Path) -> dict[str, Any]:
    """The loop state of checkpoint ``path`` if each of its files reads back whole."""
    return read(path).state


def _tensors(files: dict[str, bytes], name: str) -> dict[str, torch.Tensor]:
    try:
        return tensors_from_bytes(files[name])
    except (SafetensorError, ValueError, TypeError) as error:
        raise RunDirectoryError(f"{name}: {_short(error)}") from None


def _loop_state(data: bytes, name: str) -> dict[str, Any]:
    """``state.json`` parsed, with each value of the type and form a checkpoint writes."""
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirectoryError(f"state.json: {_short(error)}") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunDirectoryError(f"state.json: lacks {', '.join(missing)}")
    problem = _state_problem(state, name)
    if problem:
        raise RunDirectoryError(f"state.json: {problem}")
    return state


def _state_problem(state: dict[str, Any], name: str) -> str | None:
    """What is wrong with a loop state's values, or None."""
    iteration = state["iteration"]
    if type(iteration) is not int or iteration < 0:
        return f"iteration is {iteration!r}, not a count of iterations"
    if _NAME.fullmatch(name) and iteration != int(name[5:]):
        return f"iteration {iteration} is not the checkpoint's {int(name[5:])}"
    groups = state["param_groups"]
    if not isinstance(groups, list) or not groups or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list)
            and all(type(i) is int for i in g["params"]) for g in groups):
        return "param_groups is not a list of parameter groups"
    scalars = state["optimizer_scalars"]
    if not isinstance(scalars, dict) or not all(
            k.isdigit() and isinstance(v, dict) for k, v in scalars.items()):
        return "optimizer_scalars is not a mapping of parameter indices"
    for key in ("task_rng", "torch_rng"):
        if not _is_rng_state(state[key]):
            return f"{key} is not the state of a random number generator"
    return None


def _is_rng_state(text: Any) -> bool:
    """Whether ``text`` is base64 of a CPU generator's state (the length torch accepts)."""
    if not isinstance(text, str):
        return False
    try:
        state = torch.frombuffer(bytearray(base64.b64decode(text, validate=True)),
                                 dtype=torch.uint8)
        torch.Generator().set_state(state.clone())
    except (binascii.Error, ValueError, RuntimeError):
        return False
    return True


class Usable(NamedTuple):
    """The checkpoint a resume starts from, its iteration, those skipped (and why), and the
    config text it was trained with (None where it keeps none)."""

    path: Path | None
    iteration: int
    skipped: list[str]
    config: str | None = None


def usable(run_dir: Path) -> Usable:
    """The newest checkpoint that reads back whole: the ``latest`` pointer's first, then the
    others, newest first (a garbled pointer only costs the order).

    ``Usable(None, 0, [])`` when the run holds no checkpoint; RunDirectoryError in one sentence
    when it holds some but none reads back.
    """
    pointed = latest(run_dir)
    candidates = [pointed] if pointed is not None else []
    candidates += [p for p in kept(run_dir) if p != pointed]
    skipped = []
    for path in candidates:
        try:
            contents = read(path)
        except RunDirectoryError as error:
            skipped.append(f"{path.name} ({error})")
            continue
        return Usable(path, contents.state["iteration"], skipped, contents.config)
    if skipped:
        raise RunDirectoryError(f"No usable checkpoint in {run_dir / 'checkpoints'}: "
                                f"{'; '.join(skipped)}; restore one or train into {NEW_OUT}.")
    return Usable(None, 0, [])


def skipped_note(found: Usable, going_on: str) -> str | None:
    """The warning for damaged checkpoints ``usable`` passed over (``going_on``: "resuming
    from", "using"), or None."""
    if not found.skipped or found.path is None:
        return None
    return (f"skipped the damaged checkpoint {'; '.join(found.skipped)}; {going_on} "
            f"{found.path.name}")


def _short(error: BaseException) -> str:
    """An exception's message on one line, for sentences about a damaged file."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(text.split())


def remove_partial(run_dir: Path) -> None:
    """Delete what a kill in the middle of ``save`` or ``save_best`` can leave behind.

    A ``best/`` written whole under its temporary name, or the previous one moved aside, is
    renamed back into place first, so no kept model is lost.
    """
    best_dir, tmp, old = run_dir / "best", run_dir / ".best.tmp", run_dir / ".best.old"
    if not best_dir.exists():
        for candidate in (tmp, old):
            if _reads_back(candidate):
                os.replace(candidate, best_dir)
                break
    for path in (tmp, old, *(run_dir / "checkpoints").glob(".step_*.tmp")):
        shutil.rmtree(path, ignore_errors=True)
    checkpoints = run_dir / "checkpoints"
    for path in [checkpoints / "latest.tmp", *temporaries(checkpoints)]:  # and older versions'
        path.unlink(missing_ok=True)


def _reads_back(best_dir: Path) -> bool:
    try:
        _read_files(best_dir, ("model.safetensors", "best.json"))
    except RunDirectoryError:
        return False
    return True


def load_model(path: Path, model: Stateful) -> None:
    """Load the weights of ``path`` (a checkpoint or ``best/``) into ``model``: the learner
    (model plus learned rates and the like), checked against the folder's sums."""
    try:
        weights = _tensors(_read_files(path, ("model.safetensors",)), "model.safetensors")
    except RunDirectoryError as error:
        raise _damaged(path, error) from None
    _load_weights(path, weights, model)


def _load_weights(path: Path, weights: dict[str, torch.Tensor], model: Stateful) -> None:
    """Checkpoints written before learners saved their own state hold the bare model's
    weights (no ``model.`` prefix); those load into ``model.model``."""
    inner = getattr(model, "model", None)
    try:
        if (isinstance(inner, nn.Module) and set(weights) != set(model.state_dict())
                and set(weights) == set(inner.state_dict())):
            inner.load_state_dict(weights)
            return
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise _misfit(path, error) from None


def _damaged(path: Path, error: RunDirectoryError) -> RunDirectoryError:
    if path.name == "best":
        return RunDirectoryError(f"{path} is damaged ({error}); delete {path} and the run "
                                 "keeps its best model anew from the next validation.")
    return RunDirectoryError(f"{path} is damaged ({error}); delete it and the checkpoint "
                             "before is used.")


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape "
                            r"torch\.Size\((\[[^]]*\])\) from checkpoint, the shape in current "
                            r"model is torch\.Size\((\[[^]]*\])\)")


def _misfit(path: Path, error: BaseException) -> RunDirectoryError:
    """Weights or optimizer state that read back whole but fit another model than the one the
    run's ``config.yaml`` describes: one sentence naming the first tensor that differs."""
    text = str(error)
    mismatch = _SIZE_MISMATCH.search(text)
    if mismatch:
        name, saved, built = mismatch.groups()
        detail = f"{name} is {saved} in the checkpoint and {built} in the model"
    else:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        detail = " ".join(lines[:2]).rstrip(".:") if lines else type(error).__name__
    return RunDirectoryError(f"{path} does not fit the model that config.yaml describes "
                             f"({detail}); restore config.yaml or train into {NEW_OUT}.")


def load(path: Path, model: Stateful, optimizer: torch.optim.Optimizer,
         generator: torch.Generator) -> dict[str, Any]:
    """Restore model, optimizer and random number generators; returns the loop state."""
    contents = read(path)
    _load_weights(path, contents.weights, model)
    loop_state = contents.state
    state: dict[int, dict[str, Any]] = {}
    for index, scalars in loop_state["optimizer_scalars"].items():
        state[int(index)] = dict(scalars)
    for key, value in contents.optimizer.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": loop_state["param_groups"]})
    except (RuntimeError, KeyError, ValueError) as error:
        raise _misfit(path, error) from None
    generator.set_state(_rng_from_text(loop_state["task_rng"]))
    torch.set_rng_state(_rng_from_text(loop_state["torch_rng"]))
    return loop_state


def save_best(run_dir: Path, learner: Stateful, iteration: int, value: float) -> None:
    """Write ``best/`` (weights, a JSON and their sums) under a temporary name and rename it
    into place; a failed write leaves the ``best/`` before as it was."""
    final, tmp = run_dir / "best", run_dir / ".best.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_files(tmp, {"model.safetensors": _weights_bytes(learner),
                           "best.json": json.dumps({"iteration": iteration,
                                                    "val_post": value}).encode()})
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunDirectoryError(f"Could not write the best model into {final} "
                                f"({_short(error)}); {_remedy(error, run_dir)}, then continue "
                                "with --resume.") from None
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
    """``best/best.json``, checked against the sums, or RunDirectoryError in one sentence."""
    try:
        values = json.loads(_read_files(path, ("best.json",))["best.json"])
        return {"iteration": int(values["iteration"]), "val_post": float(values["val_post"])}
    except RunDirectoryError as error:
        raise _damaged(path, error) from None
    except (UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
        raise RunDirectoryError(
            f"{path / 'best.json'} is unreadable ({_short(error)}); delete {path} and the run "
            "keeps its best model anew from the next validation.") from None
