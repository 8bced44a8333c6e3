"""Datasets for few-shot learning: Omniglot from its official zips, any folder of class folders,
any labelled torch Dataset.

Everything becomes a :class:`ClassImages` (one uint8 image tensor plus a class id per image);
every failure a user can fix raises :class:`DataError` with one sentence saying what to do.
"""

from mamlkit.data.cache import CACHE_ENV, cache_root
from mamlkit.data.class_images import ClassImages, DataError
from mamlkit.data.dataset import class_images_from_dataset
from mamlkit.data.folder import IMAGE_EXTENSIONS, load_image_folder
from mamlkit.data.omniglot import (
    CHECKSUMS,
    OMNIGLOT_URL,
    Omniglot,
    OmniglotCharacter,
    download_omniglot,
    finn_split,
    lake_split,
    load_omniglot,
    omniglot_split,
)
from mamlkit.data.transforms import decode_image

__all__ = [
    "CACHE_ENV",
    "CHECKSUMS",
    "IMAGE_EXTENSIONS",
    "OMNIGLOT_URL",
    "ClassImages",
    "DataError",
    "Omniglot",
    "OmniglotCharacter",
    "cache_root",
    "class_images_from_dataset",
    "decode_image",
    "download_omniglot",
    "finn_split",
    "lake_split",
    "load_image_folder",
    "load_omniglot",
    "omniglot_split",
]
