"""The MuJoCo locomotion tasks of Finn et al. 2017 (section 5.3) as a run names them: the
half-cheetah and the ant, each running at a goal velocity or in a goal direction.

Registered here, not in ``half_cheetah.py`` and ``ant.py``, because those load MuJoCo and
gymnasium: the registry lists these tasks on every install, and the simulators load when one is
built.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from mamlkit.registry import EnvSpec, register


def _half_cheetah(kind: str, **options: Any) -> Any:
    from mamlkit.envs.half_cheetah import HalfCheetahBatch

    return HalfCheetahBatch(kind, **options)


def _ant(kind: str, **options: Any) -> Any:
    from mamlkit.envs.ant import AntBatch

    return AntBatch(kind, **options)


def _options(config: Any) -> dict[str, Any]:
    """The run's CPU threads step the simulators too (``threads``; 1 is the default), and
    ``frame_skip`` where the config sets it (null: the robot's gymnasium default)."""
    options: dict[str, Any] = {} if config.threads == 1 else {"threads": config.threads}
    if config.frame_skip is not None:
        options["frame_skip"] = config.frame_skip
    return options


def _locomotion(name: str, make: Any, kind: str, doc: str) -> None:
    register(EnvSpec(name=name, make=partial(make, kind), requires=("gymnasium", "mujoco"),
                     options=_options, keys=("frame_skip",), doc=doc))


_locomotion("cheetah-vel", _half_cheetah, "velocity", "MuJoCo half-cheetah at a goal velocity")
_locomotion("cheetah-dir", _half_cheetah, "direction",
            "MuJoCo half-cheetah running forward or backward")
_locomotion("ant-vel", _ant, "velocity", "MuJoCo ant at a goal velocity")
_locomotion("ant-dir", _ant, "direction", "MuJoCo ant running forward or backward")
