"""Any labelled dataset as class-indexed images: the adapter for torchvision-style datasets.

A ``torch.utils.data.Dataset`` of ``(image, label)`` pairs (PIL images, numpy arrays, uint8 or
float tensors in [0, 1]) becomes a :class:`ClassImages`, so N-way K-shot tasks can be drawn
from it like from Omniglot or a folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mamlkit.data.class_images import ClassImages, DataError


def _as_uint8(image: Any, index: int) -> Tensor:
    """One image as uint8 ``[H, W]`` or ``[C, H, W]`` (channels first, as torch keeps them)."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        array = np.asarray(image)
        tensor = torch.from_numpy(array.copy())
        return tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor
    tensor = torch.as_tensor(image)
    if tensor.is_floating_point():
        if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
            raise DataError(f"Image {index} of the dataset holds values outside [0, 1]; give "
                            "uint8 images or floats in [0, 1] (undo any normalisation).")
        tensor = (tensor * 255).round()
    if tensor.dim() not in (2, 3):
        raise DataError(f"Image {index} of the dataset has shape {list(tensor.shape)}; an "
                        "image is [H, W] or [C, H, W].")
    return tensor.to(torch.uint8)


def class_images_from_dataset(dataset: Any, class_names: Sequence[str] | None = None,
                              max_per_class: int | None = None) -> ClassImages:
    """The images of ``dataset`` (``len`` and ``[i] -> (image, label)``) grouped by label.

    Labels may be ints or strings; class names come from ``class_names``, the dataset's
    ``classes`` attribute (torchvision's convention) or the labels themselves. All images must
    share one shape (resize them in the dataset's transform). ``max_per_class`` keeps the first
    images of each class only.
    """
    images: list[Tensor] = []
    labels: list[Any] = []
    seen: dict[Any, int] = {}  # images per label (an int or a string)
    for index in range(len(dataset)):
        image, label = dataset[index][:2]
        label = label.item() if isinstance(label, Tensor) else label
        if max_per_class is not None and seen.get(label, 0) >= max_per_class:
            continue
        seen[label] = seen.get(label, 0) + 1
        images.append(_as_uint8(image, index))
        labels.append(label)
    if not images:
        raise DataError("The dataset holds no images.")
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise DataError(f"The dataset's images come in several shapes ({sorted(shapes)[:3]}); "
                        "resize them to one size in the dataset's transform.")
    order = sorted(seen, key=lambda k: (str(type(k)), k))
    names = list(class_names or getattr(dataset, "classes", None) or [])
    if names and all(isinstance(k, int) for k in order) and max(order) < len(names):
        order = sorted(order)
        names = [str(names[k]) for k in order]
    else:
        names = [str(k) for k in order]
    ids = {k: i for i, k in enumerate(order)}
    return ClassImages(torch.stack(images), torch.tensor([ids[k] for k in labels]),
                       tuple(names))


__all__ = ["class_images_from_dataset"]
