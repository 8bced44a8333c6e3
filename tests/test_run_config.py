"""Config sections, applicability, the sectioned config.yaml and 'mamlkit presets --show'."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from mamlkit.cli import main
from mamlkit.run import config as config_lib
from mamlkit.run.config import (
    SECTIONS,
    Config,
    ConfigError,
    applicable_keys,
    applicable_sections,
    load,
    preset_names,
    resolve,
    save,
    yaml_text,
)

RL_KEYS = {name for name, section in config_lib.key_sections().items() if section == "rl"}
LINE = re.compile(r"^[a-z_]+: \S")  # a flat key: value line


def saved(config: Config, tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    save(config, path)
    return path.read_text()


def test_every_key_has_a_section_and_a_one_line_doc():
    for f in dataclasses.fields(Config):
        assert f.metadata["section"] in SECTIONS, f.name
        doc = f.metadata["doc"]
        assert isinstance(doc, str) and 10 < len(doc) <= 100 and "\n" not in doc, f.name
    sections = config_lib.key_sections()
    assert set(sections.values()) == set(SECTIONS)
    assert set(config_lib._KEY_RULES) <= set(sections)
    assert set(config_lib._SECTION_RULES) <= set(SECTIONS)


def test_sections_of_representative_keys():
    sections = config_lib.key_sections()
    expected = {"seed": "run", "eval_steps": "run", "shots": "task", "data_root": "task",
                "hidden": "model", "inner_lr": "inner", "adapt": "inner", "meta_lr": "outer",
                "min_meta_lr": "outer", "msl": "family", "imaml_cg_steps": "family",
                "batching": "scale", "compile": "scale", "outer": "rl", "demonstrations": "rl"}
    assert {key: sections[key] for key in expected} == expected


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_round_trips_through_config_yaml(name, tmp_path):
    config = resolve(name, {})
    text = saved(config, tmp_path)
    assert load(tmp_path / "config.yaml") == config
    written = set(applicable_keys(config)) | set(config_lib.unused_keys(config))
    assert set(yaml.safe_load(text)) == written
    if not name.startswith(("nav2d-fo", "nav2d-mixed")):  # these inherit nav2d's cg_subsample
        assert config_lib.UNUSED not in text


@pytest.mark.parametrize("preset,overrides", [
    ("sinusoid", {"hidden": [64, 64], "time_limit": 1.5, "adapt": ["net.*"],
                  "description": "quotes ' \" and # and: colons", "batching": "stacked"}),
    ("sinusoid-mamlpp", {"msl": False, "fo_iterations": 7, "chunk_size": 3}),
    ("omniglot-5w1s", {"data_root": "/data/omni glot", "protocol": "lake", "download": True}),
    ("nav2d", {"outer": "ppo", "ppo_clip": 0.1, "ppo_epochs": 3, "horizon": 50}),
    ("nav2d-mixed", {"min_std": 1e-6}),
    ("sinusoid", {"description": "two\nlines, é"}),
])
def test_round_trip_with_overrides(preset, overrides, tmp_path):
    config = resolve(preset, overrides)
    text = saved(config, tmp_path)
    assert load(tmp_path / "config.yaml") == config
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(LINE.match(line) for line in body), body


def test_keys_that_do_not_apply_but_were_set_are_kept_apart(tmp_path):
    """An adam preset inherits TRPO's cg_subsample; a key set by hand that the run ignores:
    both are written under the 'unused' heading, so the file loads back the same Config (a
    new run refuses the second, see below; older runs hold such keys)."""
    config = resolve("nav2d-fo", {})
    text = saved(config, tmp_path)
    assert config_lib.unused_keys(config) == ["cg_subsample"]
    assert text.endswith(f"# --- {config_lib.UNUSED} ---\ncg_subsample: 0.25\n")
    config = config_lib.from_dict({"outer": "ppo", "policy_hidden": [8]},
                                  resolve("sinusoid", {}))  # an older run's config
    text = saved(config, tmp_path)
    unused = text.split(f"# --- {config_lib.UNUSED} ---\n")[1]
    assert unused == "policy_hidden: [8]\nouter: ppo\n"
    assert load(tmp_path / "config.yaml") == config


def test_sinusoid_file_is_sectioned_and_has_no_rl_or_family_keys(tmp_path):
    config = resolve("sinusoid", {})
    text = saved(config, tmp_path)
    keys = set(yaml.safe_load(text))
    assert not keys & RL_KEYS
    assert not keys & {"outer", "policy_hidden", "msl", "ways", "data_root", "protocol"}
    assert {"shots", "query_shots", "hidden", "inner_lr", "meta_batch_size", "adapt"} <= keys
    headings = [line for line in text.splitlines() if line.startswith("# ---")]
    assert headings == [f"# --- {s} ---" for s in applicable_sections(config)]
    assert applicable_sections(config) == ["run", "task", "model", "inner", "outer", "family",
                                           "scale"]
    # flat lines: the tooling that edits one line still works
    assert "inner_lr: 0.01\n" in text and "iterations: 20000\n" in text


def test_nav2d_file_has_rl_keys_and_no_supervised_ones(tmp_path):
    config = resolve("nav2d", {})
    keys = set(yaml.safe_load(saved(config, tmp_path)))
    assert {"policy_hidden", "outer", "max_kl", "cg_subsample", "trajectories"} <= keys
    assert {"algorithm", "batching"} <= keys  # the family and batching apply to RL tasks too
    assert not keys & {"ways", "shots", "model", "hidden", "device", "checkpoint_inner",
                       "ppo_clip", "meta_lr", "demonstrations"}
    assert {"task", "inner_lr", "meta_batch_size", "first_order", "eval_steps"} <= keys
    assert applicable_sections(config) == ["run", "task", "inner", "outer", "family", "scale",
                                           "rl"]


def test_applicability_follows_task_algorithm_and_outer_step():
    def keys(preset: str, **overrides) -> set[str]:
        return set(applicable_keys(resolve(preset, overrides)))

    family = {"msl", "msl_iterations", "lslr", "bnwb", "fo_iterations", "reptile_data",
              "imaml_lambda", "imaml_cg_steps", "imaml_max_grad_norm"}
    assert keys("sinusoid") & family == set()
    assert keys("sinusoid-mamlpp") & family == {"msl", "msl_iterations", "lslr", "bnwb",
                                                "fo_iterations"}
    assert keys("sinusoid-reptile") & family == {"reptile_data"}
    assert keys("sinusoid-imaml") & family == {"imaml_lambda", "imaml_cg_steps",
                                               "imaml_max_grad_norm"}
    assert "adapt" in keys("sinusoid-anil") and "adapt" not in keys("sinusoid-imaml")
    assert "first_order" not in keys("sinusoid-reptile") | keys("sinusoid-imaml")
    assert "min_meta_lr" in keys("sinusoid-mamlpp") and "min_meta_lr" not in keys("sinusoid")
    assert {"ways", "data_root", "protocol", "download"} <= keys("omniglot-5w1s")
    ppo = keys("nav2d", outer="ppo")
    assert {"ppo_clip", "ppo_epochs", "meta_lr"} <= ppo and "max_kl" not in ppo
    assert {"imitation_weight", "demonstrations"} <= keys("nav2d-mixed")
    assert "imitation_tasks" not in keys("cheetah-vel")
    assert "action_scale" in keys("nav2d") and "action_scale" not in keys("cheetah-dir")


def test_old_flat_files_with_every_key_still_load(tmp_path):
    for preset in ("sinusoid", "omniglot-5w1s-mamlpp", "nav2d"):
        config = resolve(preset, {})
        path = tmp_path / f"{preset}.yaml"
        path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))  # the old format
        assert load(path) == config
    # keys that do not apply are taken as written from an old file
    old = config_lib.from_dict({"outer": "ppo", "ways": 20}, resolve("sinusoid", {}))
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old.to_dict(), sort_keys=False))
    assert load(path) == old


def test_the_old_name_of_imaml_cg_steps_is_read_and_saved_under_the_new(tmp_path):
    old = tmp_path / "old.yaml"  # a run directory's config.yaml from before the rename
    old.write_text(yaml_text(resolve("sinusoid-imaml", {})).replace("imaml_cg_steps:",
                                                                    "cg_steps:"))
    assert "cg_steps: 5" in old.read_text() and load(old).imaml_cg_steps == 5
    assert resolve("sinusoid-imaml", {"cg_steps": 3}).imaml_cg_steps == 3
    save(load(old), tmp_path / "new.yaml")
    assert "imaml_cg_steps: 5" in (tmp_path / "new.yaml").read_text()
    with pytest.raises(ConfigError, match="set only 'imaml_cg_steps'"):
        resolve("sinusoid-imaml", {"cg_steps": 3, "imaml_cg_steps": 4})


def test_choices_follow_the_learners():
    for batching in config_lib.BATCHINGS:
        assert resolve("sinusoid", {"batching": batching}).batching == batching
    assert "stacked" in config_lib.BATCHINGS
    for key, value in [("batching", "magic"), ("policy_activation", "gelu"), ("outer", "sgd"),
                       ("algorithm", "protonet"), ("reptile_data", "query"), ("task", "mnist"),
                       ("protocol", "x"), ("model", "resnet"), ("device", "tpu")]:
        with pytest.raises(ConfigError, match=f"'{key}' must be one of"):
            resolve("sinusoid", {key: value})


def _shown(name: str, capsys) -> str:
    assert main(["presets", "--show", name]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["sinusoid", "nav2d"])
def test_presets_show_prints_the_resolved_config_with_docs(name, capsys, tmp_path):
    out = _shown(name, capsys)
    config = resolve(name, {})
    lines = out.splitlines()
    body = [line for line in lines if not line.startswith("#")]
    docs = config_lib.key_docs()
    assert [line.split(":")[0] for line in body] == [
        key for section in SECTIONS for key in applicable_keys(config)
        if config_lib.key_sections()[key] == section]
    assert all(line.endswith(f"  # {docs[line.split(':')[0]]}") for line in body)
    assert [line for line in lines if line.startswith("# ---")] == [
        f"# --- {s} ---" for s in applicable_sections(config)]
    # the output is itself a config.yaml that gives back the resolved preset
    (tmp_path / "shown.yaml").write_text(out)
    assert load(tmp_path / "shown.yaml") == config
    keys = set(yaml.safe_load(out))
    if name == "nav2d":
        assert "policy_hidden" in keys and "ways" not in keys and "hidden" not in keys
    else:
        assert not keys & RL_KEYS and "hidden" in keys and "msl" not in keys


def test_presets_show_follows_base_inheritance(capsys):
    values = yaml.safe_load(_shown("nav2d-mixed", capsys))
    assert values["task"] == "nav2d" and values["outer"] == "adam"  # from nav2d and nav2d-fo
    assert values["imitation_tasks"] == 10


def test_presets_show_of_an_unknown_preset_is_one_sentence(capsys):
    assert main(["presets", "--show", "nope"]) == 2
    err = capsys.readouterr().err
    assert "Unknown preset 'nope'; run 'mamlkit presets' to list them" in err
    assert len(err.strip().splitlines()) == 1


def test_presets_alone_still_lists(capsys):
    assert main(["presets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == preset_names()


def test_keys_that_do_not_apply_are_refused_naming_what_they_belong_to():
    with pytest.raises(ConfigError) as caught:
        resolve("sinusoid", {"ways": 7, "max_kl": 0.02})
    message = str(caught.value)
    assert "'ways' (for tasks folder and omniglot)" in message
    assert "'max_kl' (for RL tasks with outer=trpo)" in message
    assert "task sinusoid" in message and message.endswith("; remove them.")
    with pytest.raises(ConfigError, match=r"'msl' \(for algorithm mamlpp\)"):
        resolve("sinusoid", {"msl": False})
    with pytest.raises(ConfigError, match=r"'ppo_clip' \(for RL tasks with outer=ppo\)"):
        resolve("nav2d", {"ppo_clip": 0.1})  # nav2d's outer step is trpo


def test_keys_at_their_default_and_inherited_keys_are_not_refused(tmp_path):
    resolve("sinusoid", {"ways": 5, "max_kl": 0.01})  # the defaults, as every old file holds
    # nav2d sets cg_subsample for its TRPO step; switching the outer step does not refuse it
    assert resolve("nav2d", {"outer": "adam"}).cg_subsample == resolve("nav2d", {}).cg_subsample
    # a config file is refused like overrides, a base it starts from is not
    (tmp_path / "mine.yaml").write_text("base: sinusoid\nways: 20\n")
    with pytest.raises(ConfigError, match=r"'ways' .*\(in config file"):
        resolve(str(tmp_path / "mine.yaml"), {})
    (tmp_path / "part.yaml").write_text("ways: 20\nshots: 1\n")
    (tmp_path / "child.yaml").write_text("base: part.yaml\ntask: omniglot\nmodel: conv4\n"
                                         "hidden: [64]\n")
    assert resolve(str(tmp_path / "child.yaml"), {}).ways == 20


def test_cli_refuses_keys_that_do_not_apply_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sinusoid", "--out", str(out), "--set", "ways=7",
                 "--set", "max_kl=0.02"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mamlkit: error: Config keys 'ways'") and err.count("\n") == 1
    assert not out.exists()


def test_a_runs_config_yaml_trains_again_as_a_config_file(tmp_path):
    """What config.yaml merely records (its unused group, every key of the old flat format) is
    not refused; a key added by hand is."""
    config = resolve("nav2d-fo", {})  # records nav2d's cg_subsample as unused
    save(config, tmp_path / "config.yaml")
    assert resolve(str(tmp_path / "config.yaml"), {}) == config
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert resolve(str(flat), {}) == config
    edited = tmp_path / "edited.yaml"
    edited.write_text("max_kl: 0.05\n" + (tmp_path / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="'max_kl'"):
        resolve(str(edited), {})


def test_a_resume_refuses_a_resumable_key_the_run_does_not_read():
    from mamlkit.run.rundir import apply_changes

    saved_config = resolve("sinusoid", {})
    with pytest.raises(ConfigError, match=r"'max_kl' \(for RL tasks with outer=trpo\)"):
        apply_changes(saved_config, {"max_kl": 0.02})
    assert apply_changes(saved_config, {"meta_lr": 0.002})[1] == {"meta_lr": 0.002}
