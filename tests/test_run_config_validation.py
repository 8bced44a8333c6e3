"""Every bad value is refused when the config is resolved: one sentence, exit 2, nothing written;
YAML config files as well as presets; --version and plain help texts; atomic config saves."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path

import pytest
import torch
import yaml

import mamlkit
from mamlkit import cli
from mamlkit.cli import main
from mamlkit.run import config as config_lib
from mamlkit.run.config import Config, ConfigError, load, resolve, save

TINY = {"iterations": 3, "meta_batch_size": 2, "log_every": 1, "val_every": 3, "val_tasks": 2,
        "checkpoint_every": 3, "eval_tasks": 2}


def refused(argv: list[str], tmp_path: Path, capsys) -> str:
    """Run the CLI with ``--out tmp_path/x``: exit 2, one error line, nothing written."""
    out = tmp_path / "x"
    assert main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("mamlkit: error: ") and "Traceback" not in captured.err
    assert not out.exists()
    return lines[0]


def refused_set(pairs: list[str], tmp_path: Path, capsys, preset: str = "sinusoid") -> str:
    return refused(["train", preset, *(a for p in pairs for a in ("--set", p))], tmp_path, capsys)


@pytest.mark.parametrize("pairs,key,hint", [
    (["eval_steps=[0, -1]"], "eval_steps", "integers >= 0"),
    (["eval_steps=[]"], "eval_steps", "at least one entry"),
    (["hidden=[-5]"], "hidden", "integers >= 1"),
    (["hidden=[]"], "hidden", "at least one layer width for model mlp"),
    (["policy_hidden=[0]"], "policy_hidden", "integers >= 1"),
    (["policy_hidden=[64, -1]"], "policy_hidden", "integers >= 1"),
    (["seed=-1"], "seed", "9223372036854775807"),
    ([f"seed={2**63}"], "seed", "9223372036854775807"),
    (["model=conv4"], "model", "use model=mlp"),
    (["task=omniglot"], "model", "use model=conv4"),
    (["task=omniglot", "model=conv4"], "hidden", "hidden=[64]"),
    (["task=omniglot", "model=conv4", "hidden=[64]", "ways=1"], "ways", "at least 2"),
    (["task=omniglot", "model=conv4", "hidden=[64]", "shots=15"], "query_shots", "at most 20"),
    (["meta_lr=nan"], "meta_lr", "finite number > 0"),
    (["meta_lr=inf"], "meta_lr", "finite number > 0"),
    (["meta_lr=-.inf"], "meta_lr", "finite number > 0"),
    (["inner_lr=nan"], "inner_lr", "finite number >= 0"),
    (["inner_lr=.inf"], "inner_lr", "finite number >= 0"),
    (["time_limit=0"], "time_limit", "> 0 (or null)"),
    (["time_limit=-3"], "time_limit", "> 0 (or null)"),
    (["eval_inner_lr=-0.1"], "eval_inner_lr", ">= 0"),
    (["chunk_size=0"], "chunk_size", ">= 1 (or null)"),
    (["val_tasks=0"], "val_tasks", ">= 1"),
    (["eval_tasks=0"], "eval_tasks", ">= 1"),
    (["adapt=[]"], "adapt", "null to adapt every parameter"),
    (["data_root=' '"], "data_root", "non-blank"),
    (["min_meta_lr=0.5"], "min_meta_lr", "must not exceed meta_lr"),
    (["cg_damping=-1"], "cg_damping", ">= 0"),
    (["ppo_clip=1"], "ppo_clip", "< 1"),
    (["hidden=abc"], "hidden", "list of int"),
    (["iterations=2.5"], "iterations", "type int"),
])
def test_bad_values_are_one_sentence_before_anything_is_written(pairs, key, hint, tmp_path,
                                                                 capsys):
    line = refused_set(pairs, tmp_path, capsys)
    assert f"'{key}'" in line and hint in line, line


def test_bad_rl_values_are_refused_on_an_rl_preset(tmp_path, capsys):
    assert "'policy_hidden'" in refused_set(["policy_hidden=[-2]"], tmp_path, capsys, "nav2d")
    assert "'discount'" in refused_set(["discount=0"], tmp_path, capsys, "nav2d")


def test_cuda_without_cuda_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused_set(["device=cuda"], tmp_path, capsys)
    assert "'device'" in line and "use device=cpu or auto" in line
    assert "no CUDA" in line
    with pytest.raises(ConfigError, match=r"'device' \(for supervised tasks \(meta-RL runs on"):
        resolve("nav2d", {"device": "cuda"})  # meta-RL runs on the CPU: the key does not apply


def _outside(bounds: config_lib.Bounds, integer: bool) -> list[float]:
    """Values just outside ``bounds`` (and nan, inf for float keys)."""
    step = 1 if integer else 0.5
    values: list[float] = [] if integer else [math.nan, math.inf]
    if bounds.low is not None:
        values.append(bounds.low if bounds.low_open else bounds.low - step)
    if bounds.high is not None:
        values.append(bounds.high if bounds.high_open else bounds.high + step)
    return values


def _numeric_fields() -> list[tuple[str, bool, bool]]:
    """(name, integer, list) of every field whose values are numbers."""
    found = []
    for name, kind in config_lib.field_types().items():
        options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
        for option in options:
            is_list = typing.get_origin(option) is list
            base = typing.get_args(option)[0] if is_list else option
            if base in (int, float):
                found.append((name, base is int, is_list))
    return found


def test_every_key_has_a_range_or_choices():
    """Numbers carry bounds, strings choices (but free text), lists say whether they may be empty:
    a new key without a check fails here."""
    numeric = {name for name, _, _ in _numeric_fields()}
    assert {"seed", "eval_steps", "hidden", "policy_hidden", "time_limit", "meta_lr"} <= numeric
    free_text = {"description", "data_root"}
    registered = {"task", "algorithm"}  # names checked against mamlkit.registry (test_registry)
    for f in dataclasses.fields(Config):
        kind = config_lib.field_types()[f.name]
        if f.name in numeric:
            assert f.metadata["bounds"] is not None, f.name
        elif kind is str and f.name not in free_text | registered:
            assert f.metadata["choices"], f.name
    assert Config.__dataclass_fields__["adapt"].metadata["nonempty"]


@pytest.mark.parametrize("name,integer,is_list", _numeric_fields())
def test_every_numeric_key_refuses_values_outside_its_range(name, integer, is_list):
    bounds = Config.__dataclass_fields__[name].metadata["bounds"]
    values = _outside(bounds, integer)
    assert values, f"'{name}' has no bound to step outside of"
    for value in values:
        bad = [value] if is_list else value
        with pytest.raises(ConfigError, match=f"'{name}'"):
            resolve("sinusoid", {name: bad})


def test_every_preset_passes_the_checks():
    names = config_lib.preset_names()
    # not vacuous: the presets of every kind of task are found (an empty list checks nothing)
    assert {"sinusoid", "omniglot-5w1s", "folder-5w1s", "custom", "nav2d", "cheetah-dir",
            "ant-vel"} <= set(names), names
    for name in names:
        config_lib.check(resolve(name, {}))


def test_unknown_key_suggests_the_closest_before_the_list(tmp_path, capsys):
    line = refused_set(["inner_rl=0.1"], tmp_path, capsys)
    assert "did you mean 'inner_lr'?" in line
    assert line.index("did you mean") < line.index("adapt, algorithm")
    line = refused_set(["policy-hidden=[8]"], tmp_path, capsys)
    assert "did you mean 'policy_hidden'?" in line
    line = refused_set(["zzzzzz=1"], tmp_path, capsys)
    assert "did you mean" not in line and "valid keys are: action_scale, adapt" in line
    line = refused(["train", "sinusiod"], tmp_path, capsys)
    assert "Unknown preset 'sinusiod'" in line and "did you mean 'sinusoid'?" in line


def write(path: Path, values: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(values if isinstance(values, str) else yaml.safe_dump(values))
    return path


def test_train_from_a_config_file_names_the_run_after_it(tmp_path, capsys, monkeypatch):
    write(tmp_path / "tiny.yaml", {"base": "sinusoid", **TINY, "hidden": [8]})
    monkeypatch.chdir(tmp_path)
    assert main(["train", "tiny.yaml", "--no-progress"]) == 0
    assert "runs/tiny" in capsys.readouterr().out
    config = load(tmp_path / "runs" / "tiny" / "config.yaml")
    assert config.iterations == 3 and config.hidden == [8] and config.shots == 10
    assert cli._run_name("configs/my-exp.yml", ["seed=1"]).startswith("my-exp-")
    assert cli._run_name("sinusoid", []) == "sinusoid"


def test_a_config_file_may_start_from_another_file_and_be_shown(tmp_path, capsys):
    write(tmp_path / "base.yaml", {"base": "sinusoid", "inner_lr": 0.05, **TINY})
    child = write(tmp_path / "exp" / "child.yml", {"base": "../base.yaml", "seed": 3})
    config = resolve(str(child), {"meta_lr": 0.01})
    assert (config.inner_lr, config.seed, config.meta_lr, config.iterations) == (0.05, 3, 0.01, 3)
    assert config.eval_inner_lr == 0.05
    no_suffix = write(tmp_path / "plain", {"iterations": 5})
    assert resolve(str(no_suffix), {}).iterations == 5  # an existing file, no preset's name
    assert main(["presets", "--show", str(child)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == 3


@pytest.mark.parametrize("text,hint", [
    ("base: sinusoid\niterations: three\n", "'iterations' needs a value of type int"),
    ("base: sinusoid\ninner_rl: 0.1\n", "did you mean 'inner_lr'?"),
    ("base: sinusoid\niterations: [3\n", "does not parse at line"),
    ("- iterations\n", "must be 'key: value' lines"),
    ("base: 3\n", "base: of config file"),
    ("base: nope\n", "Unknown preset 'nope'"),
    ("base: missing.yaml\n", "missing.yaml' does not exist"),
    ("base: sinusoid\nhidden: [-5]\n", "'hidden' must hold integers >= 1"),
])
def test_bad_config_files_are_one_sentence(text, hint, tmp_path, capsys):
    path = write(tmp_path / "bad.yaml", text)
    line = refused(["train", str(path)], tmp_path, capsys)
    assert hint in line, line


def test_a_missing_config_file_is_one_sentence(tmp_path, capsys):
    line = refused(["train", str(tmp_path / "nope.yaml")], tmp_path, capsys)
    assert "nope.yaml' does not exist" in line and "mamlkit presets" in line


def test_base_cycles_are_refused(tmp_path, capsys, monkeypatch):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    write(tmp_path / "self.yaml", {"base": "self.yaml"})
    line = refused(["train", str(tmp_path / "a.yaml")], tmp_path, capsys)
    assert "go round in a circle" in line and "a.yaml -> b.yaml -> a.yaml" in line
    assert "go round in a circle" in refused(["train", str(tmp_path / "self.yaml")], tmp_path,
                                             capsys)
    presets = tmp_path / "presets"
    write(presets / "loop.yaml", {"base": "loop"})
    write(presets / "one.yaml", {"base": "two"})
    write(presets / "two.yaml", {"base": "one"})
    monkeypatch.setattr(config_lib, "preset_dir", lambda: presets)
    with pytest.raises(ConfigError, match=r"\(loop -> loop\)"):
        resolve("loop", {})
    with pytest.raises(ConfigError, match=r"\(one -> two -> one\)"):
        resolve("one", {})


def test_version_prints_mamlkit_and_torch(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"mamlkit {mamlkit.__version__} (torch {torch.__version__})\n"


def test_help_texts_are_plain():
    p = cli.parser()
    texts = [p.format_help()]
    sub = next(a for a in p._actions if a.choices and "train" in a.choices)
    texts += [s.format_help() for s in sub.choices.values()]
    assert all("``" not in t and ":func:" not in t for t in texts)
    assert "mamlkit command" in texts[0]


@pytest.mark.parametrize("count", ["0", "-5", "two"])
def test_eval_tasks_must_be_a_positive_integer(count, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(tmp_path), "--tasks", count])
    assert exit_.value.code == 2
    assert "positive whole number" in capsys.readouterr().err
    assert cli.positive_int("7") == 7


def test_save_replaces_the_file_in_one_step(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    save(resolve("sinusoid", {}), path)
    before = path.read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save(resolve("sinusoid", {"seed": 5}), path)
    assert path.read_text() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary left over
    monkeypatch.undo()
    save(resolve("sinusoid", {"seed": 5}), path)
    assert load(path).seed == 5 and oct(path.stat().st_mode & 0o777) == "0o644"
