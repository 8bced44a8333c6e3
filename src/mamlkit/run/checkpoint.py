"""Checkpoints that resume exactly: safetensors weights plus a JSON of optimizer and loop state.

Each checkpoint is a directory written under a temporary name and renamed into place, and the
``latest`` pointer is replaced atomically, so a kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

KEEP = 2


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rng_to_text(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _rng_from_text(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def save(run_dir: Path, iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer,
         generator: torch.Generator, extra: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``iteration`` and point ``latest`` at it; keep the last KEEP of them.

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
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_text_atomic(root / "latest", final.name)
    for old in sorted(root.glob("step_*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_model(path: Path, model: nn.Module) -> None:
    """Load the weights into ``model``: the learner (model plus learned rates and the like).

    Checkpoints written before learners saved their own state hold the bare model's weights
    (no ``model.`` prefix); those load into ``model.model``.
    """
    weights = load_file(path / "model.safetensors")
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
    old = run_dir / ".best.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def best_value(run_dir: Path) -> float:
    """The validation value ``best/`` was kept for (-inf without one)."""
    path = run_dir / "best" / "best.json"
    return json.loads(path.read_text())["val_post"] if path.is_file() else -float("inf")


def best(run_dir: Path) -> tuple[Path, int] | None:
    """``best/`` and the iteration it holds, if the run keeps one (meta-RL runs)."""
    path = run_dir / "best"
    if not (path / "model.safetensors").is_file():
        return None
    return path, int(json.loads((path / "best.json").read_text())["iteration"])
