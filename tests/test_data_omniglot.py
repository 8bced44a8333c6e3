"""The data layer: Omniglot from its zips (real and synthetic), its splits, class folders."""

import hashlib
import io
import os
import time
import urllib.error
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mamlkit.data.omniglot as omniglot_module
from mamlkit.data import (
    CHECKSUMS,
    ClassImages,
    DataError,
    download_omniglot,
    finn_split,
    lake_split,
    load_image_folder,
    load_omniglot,
    omniglot_split,
)
from mamlkit.data.omniglot import seeded_permutation

SHARED_OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
REAL_ROOT = Path(os.environ.get("MAMLKIT_OMNIGLOT_ROOT") or SHARED_OMNIGLOT)
HAVE_REAL = all((REAL_ROOT / f"{n}.zip").is_file() for n in omniglot_module.ZIP_NAMES)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """No test writes into the user's ~/.cache."""
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "default-cache"))


# --------------------------------------------------------------------- synthetic Omniglot zips
def png_bytes(array: np.ndarray, mode: str = "1") -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).convert(mode).save(out, format="PNG")
    return out.getvalue()


def make_omniglot_zips(root, background=None, evaluation=None, drawings=4, seed=0):
    """Omniglot-like zips: ``{alphabet: characters}`` per zip, 105x105 1-bit PNG drawings.

    Returns the 105x105 uint8 drawings (0 or 255, white background) in load order.
    """
    background = background or {"Beta": 2, "Alpha": 3}
    evaluation = evaluation or {"Gamma": 2}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, alphabets in (("images_background", background), ("images_evaluation", evaluation)):
        with zipfile.ZipFile(root / f"{name}.zip", "w", zipfile.ZIP_STORED) as zf:
            for alphabet in sorted(alphabets):
                for c in range(1, alphabets[alphabet] + 1):
                    for d in range(1, drawings + 1):
                        art = np.full((105, 105), 255, np.uint8)
                        y, x = rng.integers(5, 60, size=2)
                        art[y : y + 40, x : x + 8] = 0  # a black stroke on white
                        drawn.append(art)
                        path = f"{name}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png"
                        zf.writestr(path, png_bytes(art))
    return drawn


@pytest.fixture
def fake_root(tmp_path):
    root = tmp_path / "omniglot"
    drawn = make_omniglot_zips(root)
    return root, drawn


def test_synthetic_zips_load_with_metadata_and_inverted_lanczos_images(fake_root, tmp_path):
    root, drawn = fake_root
    om = load_omniglot(root, cache_dir=tmp_path / "cache")
    data = om.data
    assert data.images.shape == (7 * 4, 28, 28) and data.images.dtype == torch.uint8
    assert data.num_classes == 7 and data.counts.tolist() == [4] * 7
    assert data.labels.tolist() == [c for c in range(7) for _ in range(4)]
    assert [(c.alphabet, c.name, c.background) for c in om.characters] == [
        ("Alpha", "character01", True),
        ("Alpha", "character02", True),
        ("Alpha", "character03", True),
        ("Beta", "character01", True),
        ("Beta", "character02", True),
        ("Gamma", "character01", False),
        ("Gamma", "character02", False),
    ]
    assert data.class_names[3] == "Beta/character01"
    assert om.background.tolist() == [True] * 5 + [False] * 2
    # strokes bright: 255 - Lanczos(grayscale drawing), as Finn et al.'s "1 - image"
    for i in (0, 13, 27):
        expected = 255 - np.asarray(
            Image.fromarray(drawn[i]).resize((28, 28), Image.Resampling.LANCZOS)
        )
        assert np.array_equal(data.images[i].numpy(), expected)
    nearest = load_omniglot(root, cache_dir=tmp_path / "cache", resample="nearest")
    assert set(nearest.data.images.unique().tolist()) <= {0, 255}


def test_second_load_comes_from_the_cache_and_writes_nothing_into_root(
    fake_root, tmp_path, monkeypatch
):
    root, _ = fake_root
    before = sorted(os.listdir(root))
    cache = tmp_path / "cache"
    first = load_omniglot(root, cache_dir=cache)
    assert len(list((cache / "omniglot").glob("*.pt"))) == 1
    assert sorted(os.listdir(root)) == before

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(omniglot_module, "_read_zip", no_decoding)
    second = load_omniglot(root, cache_dir=cache)
    assert torch.equal(first.data.images, second.data.images)
    assert torch.equal(first.data.labels, second.data.labels)
    assert first.characters == second.characters


def test_cache_follows_env_var_and_changes_with_the_zip(fake_root, tmp_path, monkeypatch):
    root, _ = fake_root
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "env-cache"))
    first = load_omniglot(root)
    assert len(list((tmp_path / "env-cache" / "omniglot").glob("*.pt"))) == 1
    make_omniglot_zips(root, seed=1)  # same layout, other drawings
    second = load_omniglot(root)
    assert not torch.equal(first.data.images, second.data.images)
    assert len(list((tmp_path / "env-cache" / "omniglot").glob("*.pt"))) == 2
    assert load_omniglot(root, cache=False).data.images.equal(second.data.images)


def test_unwritable_cache_only_warns(fake_root, tmp_path):
    root, _ = fake_root
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="MAMLKIT_CACHE"):
        om = load_omniglot(root, cache_dir=blocker)
    assert om.data.num_classes == 7


def test_missing_root_or_zip_says_where_to_put_the_zips(tmp_path):
    with pytest.raises(DataError, match="does not exist; put images_background.zip and"):
        load_omniglot(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"images_background\.zip is missing; put .* download=True"):
        load_omniglot(tmp_path / "empty")


def test_corrupt_zips_give_a_clear_message(fake_root, tmp_path):
    root, _ = fake_root
    cache = tmp_path / "cache"
    (root / "images_evaluation.zip").write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(DataError, match=r"images_evaluation\.zip is not a valid zip file .*delete"):
        load_omniglot(root, cache_dir=cache)
    # a readable directory but damaged drawing bytes: the CRC check catches it
    make_omniglot_zips(root)
    raw = bytearray((root / "images_background.zip").read_bytes())
    at = raw.index(b"IDAT") + 8
    raw[at : at + 16] = bytes(16)
    (root / "images_background.zip").write_bytes(bytes(raw))
    with pytest.raises(
        DataError, match=r"images_background\.zip is not a valid zip file \(Bad CRC"
    ):
        load_omniglot(root, cache_dir=cache)
    # a zip without Omniglot drawings inside
    with zipfile.ZipFile(root / "images_background.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match="holds no Omniglot drawings"):
        load_omniglot(root, cache_dir=cache)


def test_verify_refuses_zips_with_unknown_checksums(fake_root, tmp_path):
    root, _ = fake_root
    with pytest.raises(DataError, match="does not match the official Omniglot checksum"):
        load_omniglot(root, cache_dir=tmp_path / "cache", verify=True)


def test_offline_download_fails_with_one_sentence_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(omniglot_module.urllib.request, "urlopen", offline)
    root = tmp_path / "new"
    with pytest.raises(DataError) as err:
        download_omniglot(root)
    message = str(err.value)
    assert message.startswith("Could not download Omniglot (https://raw.githubusercontent.com/")
    assert message.endswith(
        f"Put images_background.zip and images_evaluation.zip into {root} and run again."
    )
    assert "\n" not in message and os.listdir(root) == []
    with pytest.raises(DataError, match="Could not download Omniglot"):
        load_omniglot(tmp_path / "other", download=True, cache_dir=tmp_path / "cache")


def test_download_checks_checksums_and_writes_atomically(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    make_omniglot_zips(source)
    url = source.as_uri()
    with pytest.raises(DataError, match="is corrupt .* and was discarded"):
        download_omniglot(tmp_path / "a", base_url=url)
    assert os.listdir(tmp_path / "a") == []
    sums = {
        name: frozenset(
            {"sha256:" + hashlib.sha256((source / f"{name}.zip").read_bytes()).hexdigest()}
        )
        for name in omniglot_module.ZIP_NAMES
    }
    paths = download_omniglot(tmp_path / "b", base_url=url, checksums=sums)
    assert [p.name for p in paths] == ["images_background.zip", "images_evaluation.zip"]
    assert sorted(os.listdir(tmp_path / "b")) == ["images_background.zip", "images_evaluation.zip"]
    assert paths[0].read_bytes() == (source / "images_background.zip").read_bytes()
    # load_omniglot(download=True) fetches what is missing
    monkeypatch.setattr(
        omniglot_module,
        "download_omniglot",
        partial(download_omniglot, base_url=url, checksums=sums),
    )
    om = load_omniglot(tmp_path / "c", download=True, cache_dir=tmp_path / "cache")
    assert om.data.num_classes == 7


def test_checksum_table_holds_the_official_md5s():
    assert "md5:68d2efa1b9178cc56df9314c21c6e718" in CHECKSUMS["images_background"]
    assert "md5:6b91aef0f799c5bb55b94e3f2daec811" in CHECKSUMS["images_evaluation"]


# --------------------------------------------------------------------------------- splits
def test_finn_split_sizes_disjoint_and_pinned():
    split = finn_split()
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (1200, 0, 423)
    everything = torch.cat(list(split.values())).sort().values
    assert torch.equal(everything, torch.arange(1623))
    # the split never changes between library, Python or torch versions
    assert seeded_permutation(1623, 1)[:8] == [1128, 1130, 1294, 198, 426, 32, 1193, 1544]
    digest = hashlib.sha256(str(split["test"].tolist()).encode()).hexdigest()[:16]
    assert digest == "12241d9fc6af5983"
    with_val = finn_split(num_val=100)
    assert [len(with_val[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert torch.equal(with_val["test"], split["test"])
    assert set(with_val["val"].tolist()) <= set(split["train"].tolist())
    assert not torch.equal(finn_split(seed=2)["test"], split["test"])


def test_lake_split_uses_background_and_evaluation_alphabets():
    background = torch.tensor([True] * 964 + [False] * 659)
    split = lake_split(background)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (964, 0, 659)
    assert torch.equal(split["test"], torch.arange(964, 1623))
    with_val = lake_split(background, num_val=100)
    assert len(with_val["train"]) == 864 and len(with_val["val"]) == 100
    assert set(with_val["val"].tolist()) | set(with_val["train"].tolist()) == set(range(964))
    with pytest.raises(ValueError, match="pass num_val > 0"):
        omniglot_split(background, "val", "lake")
    with pytest.raises(ValueError, match="protocol must be 'finn' or 'lake'"):
        omniglot_split(background, "train", "vinyals")


# --------------------------------------------------------------------------------- class folders
def make_class_folder(root):
    rng = np.random.default_rng(0)
    layout = {"cat": 3, "dog": 2, "eel": 4}
    for name, count in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            size = (20 + i, 16) if name != "eel" else (16, 16)
            img = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
            img.save(root / name / f"{i}.{'jpg' if i == 1 else 'png'}")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"skipped")
    return layout


def test_class_folder_and_its_zip_become_the_same_class_images(tmp_path):
    root = tmp_path / "pets"
    make_class_folder(root)
    gray = load_image_folder(root, image_size=12)
    assert gray.class_names == ("cat", "dog", "eel")
    assert gray.images.shape == (9, 12, 12) and gray.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    rgb = load_image_folder(root, image_size=(10, 14), mode="RGB")
    assert rgb.images.shape == (9, 3, 10, 14) and rgb.image_shape == (3, 10, 14)
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # wrapped in one top folder, as zips often are
        for path in sorted(root.rglob("*")):
            zf.write(path, "pets/" + path.relative_to(root).as_posix())
    zipped = load_image_folder(archive, image_size=12)
    assert zipped.class_names == gray.class_names and torch.equal(zipped.images, gray.images)
    cached = load_image_folder(root, image_size=12, cache=True, cache_dir=tmp_path / "c")
    again = load_image_folder(root, image_size=12, cache=True, cache_dir=tmp_path / "c")
    assert torch.equal(cached.images, again.images) and torch.equal(cached.images, gray.images)
    assert len(list((tmp_path / "c" / "folders").glob("*.pt"))) == 1


def test_class_folder_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match=r"No images found in .*<class>/<image>\.png"):
        load_image_folder(tmp_path / "empty")
    root = tmp_path / "pets"
    make_class_folder(root)
    with pytest.raises(DataError, match="pass image_size to resize them"):
        load_image_folder(root)
    (root / "loose.png").write_bytes(png_bytes(np.zeros((16, 16), np.uint8), "L"))
    with pytest.raises(DataError, match="loose.png is not inside a class folder"):
        load_image_folder(root, image_size=8)
    (root / "loose.png").unlink()
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"Could not read image .*broken\.png .*remove or replace"):
        load_image_folder(root, image_size=8)
    (tmp_path / "bad.zip").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.zip"):
        load_image_folder(tmp_path / "bad.zip")


def test_class_images_rows_select_and_validation():
    labels = torch.tensor([2, 0, 2, 1, 2, 0])
    data = ClassImages(torch.zeros(6, 4, 4, dtype=torch.uint8), labels, ("a", "b", "c"))
    assert data.counts.tolist() == [2, 1, 3]
    assert data.rows.tolist() == [[1, 5, -1], [3, -1, -1], [0, 2, 4]]
    sub = data.select([2, 0])
    assert sub.class_names == ("c", "a") and sub.labels.tolist() == [0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="uint8"):
        ClassImages(torch.zeros(6, 4, 4), labels, ("a", "b", "c"))
    with pytest.raises(ValueError, match="one name per class"):
        ClassImages(torch.zeros(6, 4, 4, dtype=torch.uint8), labels, ("a", "b"))


# --------------------------------------------------------------------------------- real Omniglot
@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    """One cache per test session, shared by the test files, so the zips are decoded once."""
    if not HAVE_REAL:
        pytest.skip(f"real Omniglot zips not found in {REAL_ROOT} (set MAMLKIT_OMNIGLOT_ROOT)")
    return tmp_path_factory.getbasetemp() / "mamlkit-omniglot-cache"


@pytest.mark.slow  # decodes all 32,460 real images once
def test_real_omniglot_counts_checksums_and_fast_cached_load(real_cache):
    om = load_omniglot(REAL_ROOT, cache_dir=real_cache, verify=True)
    start = time.perf_counter()
    again = load_omniglot(REAL_ROOT, cache_dir=real_cache, verify=True)
    assert time.perf_counter() - start < 1.0
    assert torch.equal(om.data.images, again.data.images)
    data = om.data
    assert data.images.shape == (32460, 28, 28) and data.num_classes == 1623
    assert data.counts.unique().tolist() == [20]
    assert int(om.background.sum()) == 964
    assert len({c.alphabet for c in om.characters if c.background}) == 30
    assert len({c.alphabet for c in om.characters if not c.background}) == 20
    assert om.characters[0].full_name == "Alphabet_of_the_Magi/character01"
    assert data.images.float().mean() < 40  # strokes bright on a dark background
    assert [len(om.split(s)) for s in ("train", "test")] == [1200, 423]
    assert [len(om.split(s, "lake")) for s in ("train", "test")] == [964, 659]
    with zipfile.ZipFile(REAL_ROOT / "images_evaluation.zip") as zf:
        first = zf.read(sorted(n for n in zf.namelist() if n.endswith(".png"))[0])
    expected = 255 - np.asarray(
        Image.open(io.BytesIO(first)).convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    )
    assert np.array_equal(data.images[data.labels == 964][0].numpy(), expected)


def test_load_image_folder_takes_channels_as_the_command_line_does(tmp_path):
    root = tmp_path / "pets"
    make_class_folder(root)
    gray, rgb = (load_image_folder(root, image_size=12, channels=c) for c in (1, 3))
    assert torch.equal(gray.images, load_image_folder(root, image_size=12, mode="L").images)
    assert torch.equal(rgb.images, load_image_folder(root, image_size=12, mode="RGB").images)
    with pytest.raises(ValueError, match=r"^channels must be 1 \(grayscale\) or 3 \(RGB\); "
                                         r"got 2\.$"):
        load_image_folder(root, channels=2)
    with pytest.raises(ValueError, match=r"^channels=1 and mode='RGB' disagree; give one of "
                                         r"them\.$"):
        load_image_folder(root, channels=1, mode="RGB")
