"""A class-indexed image set: the one type every few-shot dataset in mamlkit becomes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


class DataError(Exception):
    """A dataset is missing, corrupt or unreadable; the message says what to change."""


@dataclass(frozen=True, eq=False, repr=False)
class ClassImages:
    """Images of several classes stacked in one uint8 tensor, with a class id per image.

    ``images`` is ``[N, H, W]`` (one channel) or ``[N, C, H, W]``, ``labels`` is a LongTensor
    ``[N]`` of class ids in ``0 .. len(class_names) - 1``. ``rows`` lists, for every class, the
    image rows that belong to it, so that samplers pick images by tensor indexing alone.
    """

    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.images.dtype != torch.uint8 or self.images.dim() not in (3, 4):
            raise ValueError(
                "ClassImages.images must be a uint8 tensor [N, H, W] or [N, C, H, W]; "
                f"got {self.images.dtype} of shape {tuple(self.images.shape)}."
            )
        if self.labels.dtype != torch.long or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"ClassImages.labels must be a LongTensor [{self.images.shape[0]}]; "
                f"got {self.labels.dtype} of shape {tuple(self.labels.shape)}."
            )
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise ValueError(
                f"ClassImages.labels must lie in 0..{len(self.class_names) - 1} "
                "(one name per class)."
            )

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape))
        return f"ClassImages({shape} uint8 images, {self.num_classes} classes)"

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image; grayscale images stored as ``[N, H, W]`` have C = 1."""
        shape = tuple(self.images.shape[1:])
        return (1, *shape) if len(shape) == 2 else shape  # type: ignore[return-value]

    @cached_property
    def counts(self) -> Tensor:
        """Images per class, LongTensor ``[num_classes]``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    @cached_property
    def rows(self) -> Tensor:
        """LongTensor ``[num_classes, max_count]``: the image rows of each class, padded with -1."""
        counts = self.counts
        width = int(counts.max()) if len(counts) else 0
        order = torch.argsort(self.labels, stable=True)
        sorted_labels = self.labels[order]
        starts = torch.cumsum(counts, 0) - counts
        position = torch.arange(len(order)) - starts[sorted_labels]
        rows = torch.full((self.num_classes, width), -1, dtype=torch.long)
        rows[sorted_labels, position] = order
        return rows

    def select(self, classes: Sequence[int] | Tensor) -> ClassImages:
        """Only the given classes, relabelled ``0 .. len(classes) - 1`` in the order given."""
        classes = torch.as_tensor(classes, dtype=torch.long).flatten()
        if len(torch.unique(classes)) != len(classes):
            raise ValueError("ClassImages.select needs distinct class ids.")
        new_id = torch.full((self.num_classes,), -1, dtype=torch.long)
        new_id[classes] = torch.arange(len(classes))
        keep = new_id[self.labels] >= 0
        names = tuple(self.class_names[int(c)] for c in classes)
        return ClassImages(self.images[keep], new_id[self.labels[keep]], names)
