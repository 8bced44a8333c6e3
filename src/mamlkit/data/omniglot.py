"""Omniglot (Lake et al. 2015) read straight from its official zip files, and its splits.

``root`` holds ``images_background.zip`` (964 characters of 30 alphabets) and
``images_evaluation.zip`` (659 characters of 20 alphabets), 20 drawings of 105x105 1-bit PNGs
per character. ``load_omniglot`` decodes all 32,460 drawings once, resized to 28x28 with
Lanczos filtering and inverted so that strokes are bright (255) on a dark (0) background, as in
Finn et al. 2017 (``1 - image``), and caches the tensor under ``$MAMLKIT_CACHE``.
"""

from __future__ import annotations

import http.client
import os
import random
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mamlkit.data.cache import cache_root, file_digests, load_cached, save_cached
from mamlkit.data.class_images import ClassImages, DataError
from mamlkit.data.transforms import RESAMPLE, decode_image

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
ZIP_NAMES = (BACKGROUND, EVALUATION)
OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"

# Accepted checksums per zip: the official files of brendenlake/omniglot (MD5, the values
# torchvision checks as well) and the re-zipped copy with identical PNGs that mamlkit's own
# tests use (SHA-256). A file matching either is a known-good Omniglot.
CHECKSUMS: Mapping[str, frozenset[str]] = {
    BACKGROUND: frozenset(
        {
            "md5:68d2efa1b9178cc56df9314c21c6e718",
            "md5:73a32b052ac363d30231522d04a467a7",
            "sha256:9892d2170ed983d856e264844632d54814f01001b3731baa409c054caf292a5e",
        }
    ),
    EVALUATION: frozenset(
        {
            "md5:6b91aef0f799c5bb55b94e3f2daec811",
            "md5:9df472805a4eb039b6b626d97db801fc",
            "sha256:d2dff634dba4546a89a69750392f44ee03fd80d7a3ab19a71f0bc8d643652ede",
        }
    ),
}

NUM_CHARACTERS = 1623
FINN_NUM_TRAIN = 1200
SPLIT_SEED = 1
_CACHE_VERSION = 1


@dataclass(frozen=True)
class OmniglotCharacter:
    """One character (class): its alphabet, its folder name and which zip it comes from."""

    alphabet: str
    name: str
    background: bool  # True: images_background (Lake's training set); False: images_evaluation

    @property
    def full_name(self) -> str:
        return f"{self.alphabet}/{self.name}"


@dataclass(frozen=True, eq=False)
class Omniglot:
    """All Omniglot drawings: class ``i`` of ``data`` is character ``characters[i]``.

    Background characters come first (ids 0..963), then evaluation characters, each group sorted
    by alphabet and character folder name; drawings within a character by file name.
    """

    data: ClassImages
    characters: tuple[OmniglotCharacter, ...]

    @property
    def background(self) -> Tensor:
        """BoolTensor ``[characters]``: True where the character is in images_background."""
        return torch.tensor([c.background for c in self.characters], dtype=torch.bool)

    def split(self, split: str = "train", protocol: str = "finn", **options: int) -> Tensor:
        """Character ids of a split; see :func:`omniglot_split`."""
        return omniglot_split(self.background, split, protocol, **options)


def _matches(digests: Mapping[str, str], name: str, known: Mapping[str, frozenset[str]]) -> bool:
    return any(f"{kind}:{value}" in known.get(name, ()) for kind, value in digests.items())


def _short(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    return str(reason if reason is not None else err) or type(err).__name__


def download_omniglot(
    root: str | os.PathLike[str],
    *,
    base_url: str = OMNIGLOT_URL,
    checksums: Mapping[str, frozenset[str]] = CHECKSUMS,
    timeout: float = 60.0,
    force: bool = False,
) -> tuple[Path, Path]:
    """Fetch images_background.zip and images_evaluation.zip into ``root``; return their paths.

    Each file is streamed into a temporary file next to its target, checked against
    ``checksums`` (entries ``"md5:<hex>"`` or ``"sha256:<hex>"``) and only then renamed into
    place, so an interrupted or bad download never leaves a partial zip. Files already present
    are kept unless ``force``. Offline, raises :class:`DataError` saying where to put the zips.
    """
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"Could not create the Omniglot folder {root} ({_short(err)}).") from None
    paths = []
    for name in ZIP_NAMES:
        target = root / f"{name}.zip"
        paths.append(target)
        if target.is_file() and not force:
            continue
        url = base_url.rstrip("/") + f"/{name}.zip"
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while block := resp.read(1 << 20):
                    out.write(block)
            digests = file_digests(tmp)
            if not _matches(digests, name, checksums):
                raise DataError(
                    f"The download of {url} is corrupt (MD5 {digests['md5']} matches no known "
                    f"Omniglot file) and was discarded; run again, or put {name}.zip into {root}."
                )
            os.replace(tmp, target)
        except (OSError, http.client.HTTPException) as err:
            raise DataError(
                f"Could not download Omniglot ({url}: {_short(err)}). Put "
                f"images_background.zip and images_evaluation.zip into {root} and run again."
            ) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return paths[0], paths[1]


def _find_zips(root: Path, download: bool) -> tuple[Path, Path]:
    where = (
        f"put images_background.zip and images_evaluation.zip into {root} "
        "(or pass download=True to fetch them)"
    )
    if not root.exists() and not download:
        raise DataError(f"The Omniglot folder {root} does not exist; {where}.")
    if not root.is_dir() and root.exists():
        raise DataError(f"The Omniglot root {root} is not a folder; {where}.")
    missing = [name for name in ZIP_NAMES if not (root / f"{name}.zip").is_file()]
    if missing and download:
        return download_omniglot(root)
    if missing:
        raise DataError(f"{root / (missing[0] + '.zip')} is missing; {where}.")
    return root / f"{BACKGROUND}.zip", root / f"{EVALUATION}.zip"


def _read_zip(
    path: Path, size: int, resample: str, known: bool
) -> tuple[np.ndarray, list[tuple[str, str]], list[int]]:
    """Decode one Omniglot zip: images ``[n, size, size]``, (alphabet, character) list, labels."""
    hint = "" if known else " and its checksum matches no known Omniglot file"
    try:
        with zipfile.ZipFile(path) as archive:
            members = sorted(
                (
                    (tuple(info.filename.split("/")[-3:]), info)
                    for info in archive.infolist()
                    if info.filename.lower().endswith(".png")
                    and not info.filename.startswith("__MACOSX")
                    and info.filename.count("/") >= 2
                ),
                key=lambda member: member[0],
            )
            if not members:
                raise DataError(
                    f"{path} holds no Omniglot drawings (expected <Alphabet>/characterNN/*.png "
                    f"inside); replace it with the official {path.name}."
                )
            images = np.empty((len(members), size, size), dtype=np.uint8)
            characters: dict[tuple[str, str], int] = {}
            labels = []
            # the first run decodes ~32,000 drawings (about a minute); later runs read the cache
            shown = tqdm(members, desc=f"decoding {path.name} (once; cached after)",
                         unit="image", disable=None, leave=False, dynamic_ncols=True)
            for i, ((alphabet, character, _), info) in enumerate(shown):
                try:
                    images[i] = decode_image(
                        archive.read(info), size=(size, size), resample=resample, invert=True
                    )
                except (zipfile.BadZipFile, zlib.error, EOFError):
                    raise
                except Exception as err:
                    raise DataError(
                        f"{path} is corrupt: {info.filename} is not a readable image "
                        f"({_short(err)}){hint}; replace it with the official {path.name}."
                    ) from None
                labels.append(characters.setdefault((alphabet, character), len(characters)))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as err:
        raise DataError(
            f"{path} is not a valid zip file ({_short(err)}){hint}; delete it and download it "
            f"again (download=True) or copy the official {path.name} there."
        ) from None
    return images, list(characters), labels


def load_omniglot(
    root: str | os.PathLike[str],
    *,
    download: bool = False,
    image_size: int = 28,
    resample: str = "lanczos",
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> Omniglot:
    """All 1623 Omniglot characters as one uint8 tensor ``[32460, image_size, image_size]``.

    Reads ``root/images_background.zip`` and ``root/images_evaluation.zip`` (``download=True``
    fetches missing ones). Pixels are inverted: strokes 255, background 0. ``resample`` is a
    Pillow filter name; ``"lanczos"`` filters the grayscale image, ``"nearest"`` gives the binary
    images that Finn et al.'s resize script really produced (Pillow ignores Lanczos on 1-bit
    images). The decoded tensor is cached under ``cache_dir`` (default ``$MAMLKIT_CACHE`` or
    ``~/.cache/mamlkit``), keyed by the zips' sizes and SHA-256, so ``root`` may be read-only.
    ``verify=True`` refuses zips whose checksum matches no known Omniglot release.
    """
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE)}; got {resample!r}.")
    root = Path(root).expanduser()
    paths = _find_zips(root, download)
    digests = [file_digests(p) for p in paths]
    known = _check_checksums(paths, digests, verify)
    cache_file = _cache_file(paths, digests, image_size, resample, cache_dir)
    if cache and (cached := _load_from_cache(cache_file)) is not None:
        return cached
    stored = _decode_zips(paths, known, image_size, resample)
    if cache:
        save_cached(cache_file, stored)
    return _from_stored(stored)


def _check_checksums(
    paths: Sequence[Path], digests: Sequence[Mapping[str, str]], verify: bool
) -> list[bool]:
    """Which zips are known Omniglot releases; with ``verify``, refuse the first unknown one."""
    known = [_matches(d, n, CHECKSUMS) for d, n in zip(digests, ZIP_NAMES, strict=True)]
    if verify and not all(known):
        bad = paths[known.index(False)]
        raise DataError(
            f"{bad} does not match the official Omniglot checksum (MD5 "
            f"{digests[known.index(False)]['md5']}); replace it with the official {bad.name}."
        )
    return known


def _cache_file(
    paths: Sequence[Path],
    digests: Sequence[Mapping[str, str]],
    image_size: int,
    resample: str,
    cache_dir: str | os.PathLike[str] | None,
) -> Path:
    """Cache path keyed by the zips' sizes and SHA-256, so new zips never reuse an old cache."""
    key = "-".join(
        f"{p.stat().st_size}-{d['sha256'][:16]}" for p, d in zip(paths, digests, strict=True)
    )
    return (
        cache_root(cache_dir)
        / "omniglot"
        / f"omniglot-{image_size}px-{resample}-{key}-v{_CACHE_VERSION}.pt"
    )


def _load_from_cache(cache_file: Path) -> Omniglot | None:
    """The cached Omniglot, or None when absent or malformed (then the zips are decoded again)."""
    if (stored := load_cached(cache_file)) is not None:
        try:
            return _from_stored(stored)
        except (KeyError, ValueError, TypeError):
            pass  # a cache from elsewhere: rebuild it
    return None


def _decode_zips(
    paths: Sequence[Path], known: Sequence[bool], image_size: int, resample: str
) -> dict:
    """Decode both zips into the dict that is cached: evaluation labels follow background ones."""
    parts = [_read_zip(p, image_size, resample, k) for p, k in zip(paths, known, strict=True)]
    return {
        "images": torch.from_numpy(np.concatenate([images for images, _, _ in parts])),
        "labels": torch.tensor(
            parts[0][2] + [label + len(parts[0][1]) for label in parts[1][2]], dtype=torch.long
        ),
        "alphabets": [a for _, chars, _ in parts for a, _ in chars],
        "names": [c for _, chars, _ in parts for _, c in chars],
        "num_background": len(parts[0][1]),
    }


def _from_stored(stored: dict) -> Omniglot:
    nb = int(stored["num_background"])
    characters = tuple(
        OmniglotCharacter(alphabet, name, i < nb)
        for i, (alphabet, name) in enumerate(zip(stored["alphabets"], stored["names"], strict=True))
    )
    data = ClassImages(stored["images"], stored["labels"], tuple(c.full_name for c in characters))
    return Omniglot(data, characters)


def seeded_permutation(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` that depends on ``seed`` only, never on library versions.

    Fisher-Yates driven by ``random.Random(seed).random()``, whose sequence Python keeps stable.
    """
    rng = random.Random(seed)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


def finn_split(
    num_characters: int = NUM_CHARACTERS,
    *,
    num_train: int = FINN_NUM_TRAIN,
    num_val: int = 0,
    seed: int = SPLIT_SEED,
) -> dict[str, Tensor]:
    """Finn et al. 2017: ``num_train`` characters drawn with a fixed seed for meta-training.

    The remaining characters (423 of 1623) are for meta-testing. ``num_val`` characters are
    carved out of the training ones for validation, as in Finn's code (which uses 100), so
    ``train`` has ``num_train - num_val``. Returns sorted character ids per split.
    """
    if not 0 <= num_val <= num_train <= num_characters:
        raise ValueError(
            f"Need 0 <= num_val <= num_train <= {num_characters} characters; "
            f"got num_val={num_val}, num_train={num_train}."
        )
    order = torch.tensor(seeded_permutation(num_characters, seed), dtype=torch.long)
    cut = num_train - num_val
    parts = {"train": order[:cut], "val": order[cut:num_train], "test": order[num_train:]}
    return {name: ids.sort().values for name, ids in parts.items()}


def lake_split(
    background: Sequence[bool] | Tensor, *, num_val: int = 0, seed: int = SPLIT_SEED
) -> dict[str, Tensor]:
    """Lake et al.: background characters (964) train, evaluation characters (659) test.

    ``num_val`` background characters, drawn with ``seed``, are held out for validation.
    """
    background = torch.as_tensor(background, dtype=torch.bool)
    train = torch.nonzero(background).flatten()
    if not 0 <= num_val <= len(train):
        raise ValueError(f"num_val must lie in 0..{len(train)}; got {num_val}.")
    order = train[torch.tensor(seeded_permutation(len(train), seed), dtype=torch.long)]
    return {
        "train": order[num_val:].sort().values,
        "val": order[:num_val].sort().values,
        "test": torch.nonzero(~background).flatten(),
    }


def omniglot_split(
    background: Sequence[bool] | Tensor,
    split: str = "train",
    protocol: str = "finn",
    *,
    num_val: int = 0,
    seed: int = SPLIT_SEED,
    num_train: int = FINN_NUM_TRAIN,
) -> Tensor:
    """Character ids of ``split`` ("train", "val" or "test") under ``protocol`` ("finn"/"lake")."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test'; got {split!r}.")
    if protocol == "finn":
        splits = finn_split(len(background), num_train=num_train, num_val=num_val, seed=seed)
    elif protocol == "lake":
        splits = lake_split(background, num_val=num_val, seed=seed)
    else:
        raise ValueError(f"protocol must be 'finn' or 'lake'; got {protocol!r}.")
    if split == "val" and num_val == 0:
        raise ValueError(
            "split='val' is empty; pass num_val > 0 (e.g. 100) to hold characters out."
        )
    return splits[split]
