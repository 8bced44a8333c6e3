"""The Omniglot task distribution of a run (``task: omniglot``): N-way K-shot tasks of
handwritten characters, with the paper's strided Conv4 or ResNet-12."""

from __future__ import annotations

from typing import Any

from torch import nn

from mamlkit.registry import ConfigError, TaskSpec, register
from mamlkit.tasks.classification import ClassificationTasks, image_network, omniglot_tasks

DRAWINGS = 20  # drawings per character: a task's support plus query images per class


def _check(config: Any) -> None:
    if config.ways < 2:
        raise ConfigError(f"Config key 'ways' must be at least 2 for {config.task} (a task "
                          f"tells classes apart), got {config.ways}.")
    examples = config.shots + (config.query_shots or config.shots)
    if examples > DRAWINGS:
        raise ConfigError(f"Config keys 'shots' and 'query_shots' ask for {examples} drawings "
                          f"per class, but Omniglot has {DRAWINGS} per character; lower "
                          f"them to at most {DRAWINGS} together.")


def _from_config(config: Any, split: str) -> ClassificationTasks:
    """Omniglot tasks; validation curves use the test characters (no model is selected on
    them)."""
    if config.data_root is None:
        raise ConfigError(
            "Omniglot needs its data: pass --data-root DIR (a folder holding "
            "images_background.zip and images_evaluation.zip), or add --set download=true."
        )
    try:
        return omniglot_tasks(config.data_root, config.ways, config.shots,
                              config.query_shots or config.shots,
                              split="train" if split == "train" else "test",
                              protocol=config.protocol, download=config.download)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _network(config: Any, tasks: ClassificationTasks) -> nn.Module:
    return image_network(config, tasks.data.image_shape, max_pool=False)


register(TaskSpec(name="omniglot", build=_from_config, network=_network,
                  models=("conv4", "resnet12"), classes=True, figure="images", check=_check,
                  keys=("ways", "data_root", "protocol", "download"),
                  doc="N-way K-shot Omniglot characters (Lake et al. 2015)"))
