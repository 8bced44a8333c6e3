"""The registries: every learner, task distribution and environment is named in its own module
only (and in its presets), its keys are config keys, and a name is registered once."""

import ast
import dataclasses
from pathlib import Path

import pytest
from package_files import module_name

import mamlkit
from mamlkit import registry
from mamlkit.run import components
from mamlkit.run.config import Config, ConfigError, applicable_keys, resolve

PACKAGE = Path(mamlkit.__file__).parent

# (module, name): the string literals that must stay outside the name's own module, and why.
ALLOWED = {
    # Config's defaults: a config file that names no task or algorithm trains MAML on sinusoids,
    # as every such file (and old run directory) always has.
    ("mamlkit.run.config", "sinusoid"): "the default of the task key",
    ("mamlkit.run.config", "maml"): "the default of the algorithm key, and of the estimator "
                                    "key (below)",
    # The RL meta-gradient estimator named after the MAML paper is another namespace
    # (estimator: maml | dice | lvc), not the learner.
    ("mamlkit.rl.estimators", "maml"): "the estimator's name",
    # The data layer keeps the Omniglot zips under a folder of the dataset's name.
    ("mamlkit.data.omniglot", "omniglot"): "the dataset's cache folder",
}


def registered_homes() -> dict[str, set[str]]:
    """Each registered name and the modules it belongs to (a learner and a task may share a
    name, in two namespaces)."""
    homes: dict[str, set[str]] = {}
    for spec in [*components.learners().values(), *components.tasks().values()]:
        homes.setdefault(spec.name, set()).add(registry.home(spec))
    return homes


def name_literals(package_dir: Path, names: set[str]) -> dict[str, set[str]]:
    """Module -> the registered names that appear in it as whole string literals."""
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.setdefault(module_name(path, package_dir), set()).add(node.value)
    return found


def misplaced_names(package_dir: Path, homes: dict[str, set[str]],
                    allowed: dict[tuple[str, str], str]) -> list[str]:
    """``module names 'name'`` for every literal of a name outside its home and the allow-list."""
    return [f"{module} names {name!r}"
            for module, found in name_literals(package_dir, set(homes)).items()
            for name in sorted(found)
            if module not in homes[name] and (module, name) not in allowed]


def test_no_component_is_named_outside_its_own_module():
    assert not misplaced_names(PACKAGE, registered_homes(), ALLOWED), (
        "dispatch on a name (look it up in mamlkit.run.components instead):\n"
        + "\n".join(misplaced_names(PACKAGE, registered_homes(), ALLOWED)))


def test_every_allowance_is_still_needed():
    found = name_literals(PACKAGE, set(registered_homes()))
    assert [key for key in ALLOWED if key[1] not in found.get(key[0], set())] == []


def test_the_name_check_reads_the_registrations_and_catches_a_dispatch(tmp_path):
    homes = registered_homes()
    assert {"maml", "pretrained", "sinusoid", "omniglot", "folder", "custom", "nav2d",
            "cheetah-vel", "ant-dir"} <= set(homes)
    assert homes["nav2d"] == {"mamlkit.envs.navigation"}
    assert "nav2d" in name_literals(PACKAGE, {"nav2d"})["mamlkit.envs.navigation"]
    package = tmp_path / "mamlkit"
    (package / "run").mkdir(parents=True)
    (package / "run" / "plots.py").write_text(
        '"""Plots."""\n\ndef f(config):\n    return config.task == "nav2d"  # a dispatch\n')
    assert misplaced_names(package, homes, ALLOWED) == ["mamlkit.run.plots names 'nav2d'"]


def test_components_claim_config_keys_only():
    fields = {f.name for f in dataclasses.fields(Config)}
    for spec in [*components.learners().values(), *components.tasks().values()]:
        assert set(spec.keys) <= fields, (spec.name, set(spec.keys) - fields)


def test_a_name_is_registered_by_one_module():
    spec = components.learner("maml")
    with pytest.raises(ValueError, match="'maml' is registered already"):
        registry.register(dataclasses.replace(spec))  # from this module, not maml's
    assert components.learner("maml") is spec
    with pytest.raises(ValueError, match="'nav2d' is registered already"):  # one namespace
        registry.register(registry.TaskSpec(name="nav2d", doc="", build=lambda config, split: 0,
                                            network=lambda config, tasks: 0))


def test_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"'task' must be one of .*nav2d.*got 'mnist'"):
        components.task("mnist")
    with pytest.raises(ConfigError, match=r"'algorithm' must be one of .*imaml"):
        resolve("sinusoid", {"algorithm": "protonet"})


def test_a_registered_component_brings_its_keys_and_rules():
    """A learner registered from here: its keys apply to its runs only, its check runs."""
    def refuse(config):
        if config.inner_steps > 3:
            raise ConfigError("at most 3 steps")

    maml = components.learner("maml")
    spec = registry.register(dataclasses.replace(maml, name="maml-lite", keys=("first_order",),
                                                 check=refuse, rl=False))
    try:
        config = resolve("sinusoid", {"algorithm": "maml-lite"})
        assert "first_order" in applicable_keys(config) and "adapt" not in applicable_keys(config)
        with pytest.raises(ConfigError, match="at most 3 steps"):
            resolve("sinusoid", {"algorithm": "maml-lite", "inner_steps": 4})
        with pytest.raises(ConfigError, match="maml-lite has no meta-RL form"):
            resolve("nav2d", {"algorithm": "maml-lite"})
        with pytest.raises(ConfigError, match=r"'adapt' \(for algorithms maml, anil"):
            resolve("sinusoid", {"algorithm": "maml-lite", "adapt": ["net.*"]})
    finally:
        registry.unregister(spec)
    assert "maml-lite" not in components.learners()


def test_discovery_imports_the_modules_that_register_and_no_other(tmp_path, monkeypatch):
    """A new module dropped into a component package is found with no other file edited; a
    module that does not register (a simulator wrapper) is not imported."""
    package = tmp_path / "plugins_under_test"
    package.mkdir()
    (package / "__init__.py").write_text('"""Imports none of its modules."""\n')
    (package / "lite.py").write_text(
        "import dataclasses\n\nfrom mamlkit.registry import LEARNERS, register\n\n"
        "SPEC = register(dataclasses.replace(LEARNERS['maml'], name='maml-discovered'))\n")
    (package / "wrapper.py").write_text(
        '"""Says register(spec) only in text; gymnasium.register(...) is no call of ours."""\n'
        "import gymnasium\ngymnasium.register(id='x')\n"
        "raise ImportError('a simulator that is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    components.learners()  # the package's own components first, so that maml is there
    assert registry.registering_modules("plugins_under_test") == ["plugins_under_test.lite"]
    registry.discover("plugins_under_test")
    try:
        assert components.learner("maml-discovered").name == "maml-discovered"
        assert registry.home(components.learner("maml-discovered")) == "plugins_under_test.lite"
    finally:
        registry.unregister(components.learner("maml-discovered"))


def test_the_package_finds_its_components_without_simulators():
    """Every component package lists its registering modules, and no gymnasium wrapper."""
    assert "mamlkit.envs.locomotion" in registry.registering_modules("mamlkit.envs")
    assert "mamlkit.envs.half_cheetah" not in registry.registering_modules("mamlkit.envs")
    assert "mamlkit.tasks.omniglot" in registry.registering_modules("mamlkit.tasks")
    assert "mamlkit.algorithms.reptile" in registry.registering_modules("mamlkit.algorithms")
