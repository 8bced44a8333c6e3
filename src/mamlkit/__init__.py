"""mamlkit: model-agnostic meta-learning for any PyTorch nn.Module, on torch.func.

The names below load on first use, so that ``import mamlkit.functional`` (the calculus) loads
torch alone, not the data, environment and plotting layers. The gymnasium ids in
``GYMNASIUM_IDS`` are registered as soon as both mamlkit and gymnasium are imported, in either
order, by entry-point strings: ``import mamlkit`` loads neither gymnasium nor MuJoCo nor torch,
and ``gymnasium.make`` loads the environment's module.
"""

import sys
from importlib import import_module
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from importlib.util import find_spec
from types import ModuleType

__version__ = "0.1.0"

_LAZY = {
    "MAML": "mamlkit.algorithms", "MetaSGD": "mamlkit.algorithms", "ANIL": "mamlkit.algorithms",
    "MAMLpp": "mamlkit.algorithms", "Reptile": "mamlkit.algorithms",
    "IMAML": "mamlkit.algorithms", "TaskBatch": "mamlkit.functional",
    "StepData": "mamlkit.functional", "Sinusoid": "mamlkit.tasks", "load": "mamlkit.run.load",
}

__all__ = [*sorted(_LAZY), "GYMNASIUM_IDS", "__version__"]

# gymnasium id -> (entry point, episode length): the single environments of mamlkit.envs
GYMNASIUM_IDS = {
    "mamlkit/Navigation2D-v0": ("mamlkit.envs.navigation_gym:Navigation2D", 100),
    "mamlkit/HalfCheetahVel-v0": ("mamlkit.envs.half_cheetah:HalfCheetahVel", 200),
    "mamlkit/HalfCheetahDir-v0": ("mamlkit.envs.half_cheetah:HalfCheetahDir", 200),
    "mamlkit/AntVel-v0": ("mamlkit.envs.ant:AntVel", 200),
    "mamlkit/AntDir-v0": ("mamlkit.envs.ant:AntDir", 200),
}


def _register_with_gymnasium() -> None:
    gymnasium = sys.modules["gymnasium"]
    for env_id, (entry_point, steps) in GYMNASIUM_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, max_episode_steps=steps)


class _RegisterWhenGymnasiumLoads(MetaPathFinder):
    """Finds nothing itself: when gymnasium is first imported, wraps the loader that the other
    finders give so that our ids are registered right after gymnasium's own code has run."""

    searching = False

    def find_spec(self, fullname: str, path: object, target: object = None) -> ModuleSpec | None:
        if fullname != "gymnasium" or self.searching:
            return None
        self.searching = True
        try:
            spec = find_spec(fullname)  # the other finders (this one answers None meanwhile)
        finally:
            self.searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_gymnasium = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_gymnasium(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_with_gymnasium()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's own
        return spec


if sys.modules.get("gymnasium") is not None:  # None: an import of it failed or is blocked
    _register_with_gymnasium()
elif not any(isinstance(f, _RegisterWhenGymnasiumLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenGymnasiumLoads())


# Sub-packages that ``mamlkit.<name>`` loads on first use (``mamlkit.tasks.omniglot_tasks``)
_PACKAGES = ("algorithms", "data", "envs", "functional", "models", "rl", "run", "tasks")


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _PACKAGES:
        return import_module(f"mamlkit.{name}")
    raise AttributeError(f"module 'mamlkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_PACKAGES})
