"""Any folder of class sub-folders of images (or a .zip of one) as a class-indexed image set.

``root/<class>/<image>`` becomes class ``<class>`` (classes sorted by name, images by path;
images may sit deeper inside a class folder). A single folder wrapping all class folders, as
zips often have, is looked through. Hidden files, ``__MACOSX`` and non-image files are skipped.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mamlkit.data.cache import cache_root, file_digests, load_cached, save_cached
from mamlkit.data.class_images import ClassImages, DataError
from mamlkit.data.transforms import RESAMPLE, decode_image, image_size_pair

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_CACHE_VERSION = 1


def _is_image(parts: tuple[str, ...]) -> bool:
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def _strip_wrapper(files: list[tuple[str, ...]]) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """Drop leading folders shared by every file while class folders still remain below them."""
    prefix: tuple[str, ...] = ()
    while files and all(len(f) >= 3 for f in files) and len({f[0] for f in files}) == 1:
        prefix += (files[0][0],)
        files = [f[1:] for f in files]
    return files, prefix


def _listing(
    root: Path, stack: ExitStack
) -> tuple[list[tuple[str, ...]], Callable[[tuple[str, ...]], bytes], str]:
    """Relative image paths, a reader for them, and a key that changes when the files change."""
    if root.is_dir():
        files = sorted(
            f for p in root.rglob("*") if _is_image(f := p.relative_to(root).parts) and p.is_file()
        )
        stats = [(f, (root.joinpath(*f)).stat()) for f in files]
        key = repr([(f, s.st_size, s.st_mtime_ns) for f, s in stats]).encode()
        return files, lambda f: root.joinpath(*f).read_bytes(), hashlib.sha256(key).hexdigest()
    archive = stack.enter_context(zipfile.ZipFile(root))
    names = {tuple(i.filename.split("/")): i for i in archive.infolist() if not i.is_dir()}
    files = sorted(f for f in names if _is_image(f))
    return files, lambda f: archive.read(names[f]), file_digests(root)["sha256"]


def image_mode(mode: str | None, channels: int | None) -> str:
    """PIL's mode from ``mode`` or ``channels`` (1 or 3), which must agree if both are given."""
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels}.")
    if mode is not None and mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' (grayscale) or 'RGB'; got {mode!r}.")
    from_channels = None if channels is None else ("L" if channels == 1 else "RGB")
    if mode is not None and from_channels is not None and mode != from_channels:
        raise ValueError(f"channels={channels} and mode={mode!r} disagree; give one of them.")
    return mode or from_channels or "L"


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | tuple[int, int] | None = None,
    mode: str | None = None,
    resample: str = "lanczos",
    invert: bool = False,
    cache: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    channels: int | None = None,
) -> ClassImages:
    """Read ``root`` (a folder or a .zip) into uint8 images, one class per sub-folder.

    ``mode="L"`` (or ``channels=1``, the default) gives grayscale ``[N, H, W]``, ``mode="RGB"``
    (or ``channels=3``, as the command line's key says it) gives ``[N, 3, H, W]``.
    ``image_size`` (an int or ``(height, width)``) resizes every image with ``resample``; without
    it all images must share one size. ``invert`` maps v to 255 - v (dark strokes become bright).
    ``cache=True`` stores the decoded tensor under ``cache_dir`` (default ``$MAMLKIT_CACHE``),
    keyed by the files' names, sizes and modification times (a zip: its SHA-256).
    """
    mode = image_mode(mode, channels)
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE)}; got {resample!r}.")
    size = image_size_pair(image_size)
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"The dataset folder {root} does not exist; check the path.")
    with ExitStack() as stack:
        return _load(root, stack, size, mode, resample, invert, cache, cache_dir)


def _load(
    root: Path,
    stack: ExitStack,
    size: tuple[int, int] | None,
    mode: str,
    resample: str,
    invert: bool,
    cache: bool,
    cache_dir: str | os.PathLike[str] | None,
) -> ClassImages:
    """List, check, then decode ``root`` (or take it from the cache), in that order."""
    files, read, key = _open_listing(root, stack)
    files, prefix = _strip_wrapper(files)
    _check_layout(root, files, prefix)
    decoded = _decoded_bytes(files, prefix, read, size, mode)
    cache_file = None
    if cache:
        cache_file = _cache_file(root, size, mode, resample, invert, key, cache_dir)
        if cache_file.is_file():  # the cached tensor, read whole
            _check_memory(root, len(files), decoded, 1, size, mode)
        cached = _load_from_cache(cache_file)
        if cached is not None:
            return cached
    # the decoded images and their stacked copy, both held until the stack is made
    _check_memory(root, len(files), decoded, 2, size, mode)
    arrays = _decode_all(root, files, prefix, read, size, mode, resample, invert)
    return _assemble(files, arrays, cache_file)


def _open_listing(
    root: Path, stack: ExitStack
) -> tuple[list[tuple[str, ...]], Callable[[tuple[str, ...]], bytes], str]:
    """:func:`_listing`, with unreadable folders and broken zips turned into a clear DataError."""
    try:
        return _listing(root, stack)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise DataError(
            f"Could not read {root} ({err}); pass a folder of class sub-folders or a valid .zip."
        ) from None


def _check_layout(root: Path, files: list[tuple[str, ...]], prefix: tuple[str, ...]) -> None:
    """Fail early, naming the path, when there are no images or some lie outside class folders."""
    if not files:
        raise DataError(
            f"No images found in {root}; expected class sub-folders of images, "
            f"e.g. {root}/<class>/<image>.png."
        )
    loose = [f for f in files if len(f) == 1]
    if loose:
        raise DataError(
            f"{root / '/'.join(prefix + loose[0])} is not inside a class folder; put every "
            f"image into a sub-folder named after its class."
        )


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes the kernel says new allocations can get without swapping (``MemAvailable``), or
    None where it does not say (not Linux, a kernel before 3.14): then nothing is refused."""
    try:
        for line in meminfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "MemAvailable":
                number, _, unit = value.strip().partition(" ")
                return int(number) * (1024 if unit.strip() == "kB" else 1)
    except (OSError, ValueError):
        pass
    return None


def _decoded_bytes(
    files: list[tuple[str, ...]],
    prefix: tuple[str, ...],
    read: Callable[[tuple[str, ...]], bytes],
    size: tuple[int, int] | None,
    mode: str,
) -> int | None:
    """The uint8 tensor the images decode to: images x channels x height x width bytes, the
    size being ``size`` or else the first image's (read from its header, not decoded; all
    must share it). None where that header does not read (decoding then names the file)."""
    if size is None:
        try:
            with Image.open(io.BytesIO(read(prefix + files[0]))) as first:
                size = (first.height, first.width)
        except Exception:  # Pillow raises many kinds; the decoding names the file
            return None
    channels = 1 if mode == "L" else 3
    return len(files) * channels * size[0] * size[1]


def _bytes_text(count: int) -> str:
    """``7.2 MB``, ``36.0 TB``: a byte count in decimal units, as free and df print them."""
    value, unit = float(count), "bytes"
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB", "EB"):
        if value < 1000 or unit == "EB":
            break
        value /= 1000
    return f"{value:.1f} {unit}" if unit != "bytes" else f"{count} bytes"


def _check_memory(
    root: Path,
    count: int,
    decoded: int | None,
    copies: int,
    size: tuple[int, int] | None,
    mode: str,
) -> None:
    """Refuse, in one sentence naming image_size, a load that needs more memory than is
    available, before any image is decoded: the kernel would otherwise kill the process
    without a word once it runs out (say image_size=100000, 30 GB an RGB image)."""
    available = available_memory()
    if decoded is None or available is None or copies * decoded <= available:
        return
    need = copies * decoded
    change = "lower image_size" if size is not None else "set image_size to resize them smaller"
    raise DataError(
        f"The {count} images of {root} need {_bytes_text(need)} of memory to load "
        f"({_bytes_text(decoded)} decoded), more than the {_bytes_text(available)} available; "
        f"{change}{' (or use 1 channel)' if mode == 'RGB' else ''}."
    )


def _cache_file(
    root: Path,
    size: tuple[int, int] | None,
    mode: str,
    resample: str,
    invert: bool,
    key: str,
    cache_dir: str | os.PathLike[str] | None,
) -> Path:
    """Cache path that changes with every decoding option and with the files themselves."""
    name = f"{root.name}-{size}-{mode}-{resample}-{invert}-{key[:24]}-v{_CACHE_VERSION}.pt"
    return cache_root(cache_dir) / "folders" / name.replace(" ", "")


def _load_from_cache(cache_file: Path) -> ClassImages | None:
    """The cached images, or None when absent or malformed (then they are decoded again)."""
    stored = load_cached(cache_file)
    if stored is not None:
        try:
            return ClassImages(stored["images"], stored["labels"], stored["class_names"])
        except (KeyError, ValueError, TypeError):
            pass
    return None


def _decode_all(
    root: Path,
    files: list[tuple[str, ...]],
    prefix: tuple[str, ...],
    read: Callable[[tuple[str, ...]], bytes],
    size: tuple[int, int] | None,
    mode: str,
    resample: str,
    invert: bool,
) -> list[np.ndarray]:
    """Decode every image, naming the first unreadable one or the first of another size."""
    arrays = []
    for f in files:
        where = root / "/".join(prefix + f)
        try:
            arrays.append(
                decode_image(
                    read(prefix + f), size=size, mode=mode, resample=resample, invert=invert
                )
            )
        except Exception as err:
            raise DataError(
                f"Could not read image {where} ({err}); remove or replace that file."
            ) from None
        if arrays[-1].shape != arrays[0].shape:
            raise DataError(
                f"Images differ in size ({where} is {arrays[-1].shape[-2:]}, the first one "
                f"{arrays[0].shape[-2:]}); pass image_size to resize them all to one size."
            )
    return arrays


def _assemble(
    files: list[tuple[str, ...]], arrays: list[np.ndarray], cache_file: Path | None
) -> ClassImages:
    """Stack the images, label them by class folder (sorted by name), and cache them if asked."""
    class_names = sorted({f[0] for f in files})
    class_id = {name: i for i, name in enumerate(class_names)}
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([class_id[f[0]] for f in files], dtype=torch.long)
    data = ClassImages(images, labels, tuple(class_names))
    if cache_file is not None:
        save_cached(
            cache_file, {"images": images, "labels": labels, "class_names": list(class_names)}
        )
    return data
