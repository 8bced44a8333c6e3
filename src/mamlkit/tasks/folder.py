"""The task distribution of a folder of images (``task: folder``): N-way K-shot tasks over
any folder (or .zip) with one sub-folder per class, its classes split into train, val, test."""

from __future__ import annotations

from typing import Any

import yaml
from torch import nn

from mamlkit.data import DataError
from mamlkit.registry import ConfigError, TaskSpec, register
from mamlkit.tasks.classification import ClassificationTasks, folder_tasks, image_network


def _check(config: Any) -> None:
    """Where the images are, how many channels, a split that adds up, classes to tell apart."""
    if config.channels not in (1, 3):
        raise ConfigError(f"Config key 'channels' must be 1 (grayscale) or 3 (RGB), got "
                          f"{config.channels}.")
    if len(config.class_split) != 3 or abs(sum(config.class_split) - 1) > 1e-6:
        raise ConfigError(f"Config key 'class_split' needs three fractions (train, val, test) "
                          f"that add up to 1, got {config.class_split}.")
    if config.ways < 2:
        raise ConfigError(f"Config key 'ways' must be at least 2 for {config.task} (a task "
                          f"tells classes apart), got {config.ways}.")


def _class_split(config: Any) -> list[float] | dict:
    """``class_split``, or the class names of ``class_split_file`` where one is named."""
    if config.class_split_file is None:
        return config.class_split
    try:
        with open(config.class_split_file, encoding="utf-8") as stream:
            class_split = yaml.safe_load(stream)
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"class_split_file {config.class_split_file!r} could not be read "
                          f"({error}).") from None
    if not isinstance(class_split, dict):
        raise ConfigError(f"class_split_file {config.class_split_file!r} must map train, "
                          "val and test to lists of class names.")
    return class_split


def _from_config(config: Any, split: str) -> ClassificationTasks:
    if config.data_root is None:
        raise ConfigError("task folder needs its images: pass --data-root DIR (a folder, or a "
                          ".zip, with one sub-folder of images per class).")
    class_split = _class_split(config)
    try:
        return folder_tasks(config.data_root, config.ways, config.shots,
                            config.query_shots or config.shots, split=split,
                            class_split=class_split, image_size=config.image_size,
                            channels=config.channels, invert=config.invert)
    except (ValueError, DataError) as error:
        raise ConfigError(str(error)) from None


def _network(config: Any, tasks: ClassificationTasks) -> nn.Module:
    """The max-pool Conv4 (the paper's MiniImagenet network) sized to the images, or ResNet-12."""
    return image_network(config, tasks.data.image_shape, max_pool=True)


register(TaskSpec(name="folder", build=_from_config, network=_network,
                  models=("conv4", "resnet12"), classes=True, figure="images", check=_check,
                  keys=("ways", "data_root", "image_size", "channels", "invert", "class_split",
                        "class_split_file"),
                  doc="N-way K-shot tasks over a folder of class sub-folders of images"))
