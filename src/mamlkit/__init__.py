"""mamlkit: model-agnostic meta-learning for any PyTorch nn.Module, on torch.func.

The names below load on first use, so that ``import mamlkit.functional`` (the calculus) loads
torch alone, not the data, environment and plotting layers.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "MAML": "mamlkit.algorithms", "MetaSGD": "mamlkit.algorithms", "ANIL": "mamlkit.algorithms",
    "MAMLpp": "mamlkit.algorithms", "Reptile": "mamlkit.algorithms",
    "IMAML": "mamlkit.algorithms", "TaskBatch": "mamlkit.functional",
    "StepData": "mamlkit.functional", "Sinusoid": "mamlkit.tasks", "load": "mamlkit.run.load",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mamlkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
