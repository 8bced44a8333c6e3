"""N-way K-shot classification over any class-indexed image set (Omniglot, a class folder, ...).

Each task draws ``ways`` classes without replacement, assigns them the labels ``0..ways-1`` in
random order, and draws ``shots`` support plus ``query_shots`` query images per class without
replacement. A class may be rotated by quarter turns: ``(class, k)`` for each ``k`` in
``rotations`` is a class of its own (Omniglot's 1200 characters give 4800 training classes),
stored rotated with ``torch.rot90(image, k, dims=(-2, -1))``. A whole meta-batch is drawn
with a few tensor operations (a loop over the ``ways``, none over tasks or images).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.data import ClassImages, DataError, load_image_folder, load_omniglot
from mamlkit.data.omniglot import seeded_permutation
from mamlkit.functional.seeding import generator_from
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.models.conv4 import Conv4
from mamlkit.models.resnet12 import ResNet12
from mamlkit.registry import ConfigError


@dataclass(frozen=True, eq=False)
class ClassificationTasks:
    """p(T) for N-way K-shot classification; ``sample`` returns a :class:`TaskBatch`.

    ``support = (x [tasks, ways*shots, C, H, W] float32 in [0, 1], y [tasks, ways*shots] long)``
    and ``query`` likewise with ``query_shots``; examples are grouped by label (label 0 first).
    ``classes`` restricts the base classes of ``data`` (default: all of them); ``rotations``
    lists the quarter turns that make classes, ``(0,)`` for none, ``(0, 1, 2, 3)`` for four.
    ``augment(images [tasks, n, C, H, W] float in [0, 1], generator) -> images`` transforms the
    sampled support and query images (draw any randomness from ``generator``, so that runs
    reproduce); ``None`` leaves them as they are.
    """

    data: ClassImages
    ways: int = 5
    shots: int = 1
    query_shots: int = 15
    classes: Sequence[int] | Tensor | None = None
    rotations: tuple[int, ...] = (0,)
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    loss: str = "cross_entropy"
    metric: str = "accuracy"
    _base: Tensor = field(init=False, repr=False)
    _turns: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        data = self.data
        classes = (
            torch.arange(data.num_classes)
            if self.classes is None
            else torch.as_tensor(self.classes, dtype=torch.long).flatten()
        )
        object.__setattr__(self, "classes", classes)
        rotations = tuple(int(k) for k in self.rotations)
        object.__setattr__(self, "rotations", rotations)
        for name in ("ways", "shots", "query_shots"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}.")
        if not rotations or sorted(set(rotations)) != sorted(rotations) or min(rotations) < 0:
            raise ValueError(
                f"rotations must be distinct quarter turns from 0..3; got {rotations}."
            )
        if max(rotations) > 3:
            raise ValueError(
                f"rotations must be distinct quarter turns from 0..3; got {rotations}."
            )
        _, height, width = data.image_shape
        if rotations != (0,) and height != width:
            raise ValueError(
                f"Rotated classes need square images; these are {height}x{width}, "
                "so use rotations=(0,) or resize them to a square."
            )
        if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= data.num_classes):
            raise ValueError(f"classes must be ids in 0..{data.num_classes - 1}.")
        if len(torch.unique(classes)) != len(classes):
            raise ValueError("classes must not repeat; each id names one class.")
        num_classes = len(classes) * len(rotations)
        if self.ways > num_classes:
            raise ValueError(
                f"{self.ways}-way tasks need {self.ways} classes but only {num_classes} are on "
                f"offer; lower ways to at most {num_classes} or use more classes."
            )
        per_task_class = self.shots + self.query_shots
        counts = data.counts[classes]
        fewest = int(counts.argmin())
        if per_task_class > int(counts[fewest]):
            name = data.class_names[int(classes[fewest])]
            raise ValueError(
                f"{self.shots} shots + {self.query_shots} queries need {per_task_class} examples "
                f"per class but class {name!r} has only {int(counts[fewest])}; lower shots or "
                f"query_shots so that they add up to at most {int(counts[fewest])}."
            )
        turns = torch.tensor(rotations, dtype=torch.long)
        object.__setattr__(self, "_base", classes.repeat_interleave(len(rotations)))
        object.__setattr__(self, "_turns", turns.repeat(len(classes)))

    @property
    def num_classes(self) -> int:
        """Classes on offer: base classes times rotations."""
        return len(self._base)

    @property
    def base_classes(self) -> Tensor:
        """LongTensor ``[num_classes]``: the class of ``data`` behind each class on offer."""
        return self._base

    @property
    def turns(self) -> Tensor:
        """LongTensor ``[num_classes]``: the quarter turns applied to each class on offer."""
        return self._turns

    @property
    def class_names(self) -> list[str]:
        """Names of the classes on offer, ``"<name>@<degrees>"`` for rotated ones."""
        names = self.data.class_names
        return [
            names[int(c)] + (f"@{90 * int(k)}" if k else "")
            for c, k in zip(self._base, self._turns, strict=True)
        ]

    @cached_property
    def _table(self) -> tuple[Tensor, Tensor]:
        """Images as rows ``[n, C*H*W]`` and, per class on offer, its rows ``[classes, max]``.

        Without rotations this is ``data`` itself. With rotations, the images of the classes in
        use are stored once per quarter turn (built on the first ``sample``; memory: the used
        images times ``len(rotations)``), so that sampling stays one ``index_select``.
        """
        data = self.data
        base_rows = data.rows[self.classes]  # [base classes, max], -1 pads
        if self.rotations == (0,):
            return data.images.reshape(len(data), -1), base_rows
        valid = base_rows >= 0
        used = base_rows[valid]
        compact = torch.full_like(base_rows, -1)
        compact[valid] = torch.arange(len(used))
        images = data.images[used]
        table = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in self.rotations])
        offsets = len(used) * torch.arange(len(self.rotations))
        class_rows = torch.where(
            compact[:, None, :] >= 0, compact[:, None, :] + offsets[None, :, None], -1
        )
        return table.reshape(len(table), -1), class_rows.reshape(self.num_classes, -1)

    def _draw_classes(self, num_tasks: int, g: torch.Generator) -> Tensor:
        """``[tasks, ways]`` distinct classes per task in random order (Floyd's algorithm)."""
        total, ways = self.num_classes, self.ways
        chosen = torch.empty(num_tasks, ways, dtype=torch.long)
        for j in range(ways):  # a loop over ways, vectorised over tasks
            top = total - ways + j
            draw = torch.randint(0, top + 1, (num_tasks,), generator=g)
            taken = (chosen[:, :j] == draw[:, None]).any(dim=1)
            chosen[:, j] = torch.where(taken, top, draw)
        order = torch.rand(num_tasks, ways, generator=g).argsort(dim=1)
        return chosen.gather(1, order)

    def sample_with_classes(
        self, num_tasks: int, generator: torch.Generator | int | None = None
    ) -> tuple[TaskBatch, Tensor]:
        """Like :meth:`sample`, plus ``[tasks, ways]`` ids of the classes on offer per label.

        ``base_classes[ids]`` and ``turns[ids]`` say which class of ``data`` and which rotation
        each label of each task shows. Same random stream as ``sample``: same seed, same tasks.
        """
        if int(num_tasks) < 1:
            raise ValueError(f"num_tasks must be at least 1; got {num_tasks}.")
        g = generator_from(generator)
        table, class_rows = self._table
        task_classes = self._draw_classes(num_tasks, g)
        rows = class_rows[task_classes]  # [tasks, ways, max]
        keys = torch.rand(rows.shape, generator=g).masked_fill_(rows < 0, -1.0)
        k, q = self.shots, self.query_shots
        picked = rows.gather(-1, keys.topk(k + q, dim=-1, sorted=True).indices)
        c, h, w = self.data.image_shape

        def images(r: Tensor) -> Tensor:
            x = table.index_select(0, r.reshape(-1)).view(num_tasks, -1, c, h, w)
            x = torch.div(x, 255.0)  # uint8 / float scalar: float32 in one pass
            return x if self.augment is None else self.augment(x, g)

        labels = torch.arange(self.ways)
        support_y = labels.repeat_interleave(k).expand(num_tasks, -1).contiguous()
        query_y = labels.repeat_interleave(q).expand(num_tasks, -1).contiguous()
        batch = TaskBatch(
            support=(images(picked[..., :k]), support_y),
            query=(images(picked[..., k:]), query_y),
        )
        return batch, task_classes

    def sample(self, num_tasks: int, generator: torch.Generator | int | None = None) -> TaskBatch:
        """``num_tasks`` tasks from ``generator`` (a seed works too); see the class docstring."""
        return self.sample_with_classes(num_tasks, generator)[0]


def omniglot_tasks(
    root: str | os.PathLike[str],
    ways: int = 5,
    shots: int = 1,
    query_shots: int = 15,
    split: str = "train",
    protocol: str = "finn",
    *,
    rotate: bool | None = None,
    num_val: int = 0,
    download: bool = False,
    image_size: int = 28,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ClassificationTasks:
    """N-way K-shot Omniglot tasks of one split, read from the official zips in ``root``.

    ``protocol="finn"``: 1200 characters drawn with a fixed seed train, the other 423 test;
    ``"lake"``: the 964 background characters train, the 659 evaluation characters test.
    ``num_val`` characters of the training ones form ``split="val"``. ``rotate`` (default: only
    for ``"train"``) makes each of the four quarter turns of a character a class of its own.
    """
    omniglot = load_omniglot(root, download=download, image_size=image_size, cache_dir=cache_dir)
    characters = omniglot.split(split, protocol, num_val=num_val)
    if rotate is None:
        rotate = split == "train"
    return ClassificationTasks(
        omniglot.data,
        ways=ways,
        shots=shots,
        query_shots=query_shots,
        classes=characters,
        rotations=(0, 1, 2, 3) if rotate else (0,),
    )


SPLITS = ("train", "val", "test")


def split_classes(names: Sequence[str], class_split: Sequence[float] | Mapping[str, Sequence[str]],
                  seed: int = 0) -> dict[str, list[int]]:
    """Class ids of the train, val and test splits.

    ``class_split`` is three fractions (train, val, test) of the classes, cut from a fixed
    permutation of ``seed`` (the same on every machine), or a mapping from split name to class
    names.
    """
    if isinstance(class_split, Mapping):
        index = {name: i for i, name in enumerate(names)}
        unknown = [n for part in class_split.values() for n in part if n not in index]
        if unknown:
            raise DataError(f"class_split names class {unknown[0]!r}, which the dataset does "
                            f"not have; its classes are: {', '.join(list(names)[:10])} ...")
        return {split: [index[n] for n in class_split.get(split, [])] for split in SPLITS}
    fractions = [float(f) for f in class_split]
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"class_split needs three fractions (train, val, test) that add up to "
                        f"1, got {list(class_split)}.")
    order = seeded_permutation(len(names), seed)
    cuts = [round(len(names) * sum(fractions[:i])) for i in range(4)]
    return {split: sorted(order[cuts[i]:cuts[i + 1]]) for i, split in enumerate(SPLITS)}


def folder_tasks(
    root: str | os.PathLike[str],
    ways: int = 5,
    shots: int = 1,
    query_shots: int = 15,
    split: str = "train",
    *,
    class_split: Sequence[float] | Mapping[str, Sequence[str]] = (0.64, 0.16, 0.20),
    image_size: int | None = None,
    channels: int = 3,
    invert: bool = False,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    cache: bool = True,
) -> ClassificationTasks:
    """N-way K-shot tasks of one split of a folder (or .zip) with one sub-folder per class.

    Images are read once (``channels`` 1 or 3, resized to ``image_size`` if given; cached under
    ``$MAMLKIT_CACHE``); the classes are split into train, val and test by ``class_split``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}.")
    data = load_image_folder(root, image_size=image_size, channels=channels, invert=invert,
                             cache=cache)
    classes = split_classes(data.class_names, class_split)[split]
    if len(classes) < ways:
        raise DataError(f"The {split} split holds {len(classes)} of the folder's "
                        f"{data.num_classes} classes, fewer than ways={ways}; lower ways or "
                        "change class_split.")
    return ClassificationTasks(data, ways=ways, shots=shots, query_shots=query_shots,
                               classes=classes, augment=augment)


def image_network(config: Any, image_shape: tuple[int, int, int], max_pool: bool) -> nn.Module:
    """The config's image model for its N-way tasks: ``conv4`` (``hidden``: its filters), the
    paper's strided form or, with ``max_pool``, its max-pool form sized to square images (the
    paper's MiniImagenet network); or ``resnet12``."""
    channels, height, width = image_shape
    if config.model == "resnet12":
        return ResNet12(config.ways, in_channels=channels)
    hidden = config.hidden[0] if config.hidden else 64
    if not max_pool:
        return Conv4(ways=config.ways, hidden=hidden)
    if height != width:
        raise ConfigError(f"conv4 needs square images; these are {height}x{width}: set "
                          "image_size to resize them.")
    return Conv4(ways=config.ways, in_channels=channels, hidden=hidden, image_size=height,
                 max_pool=True)
