"""N-way K-shot task sampling: shapes, balance, rotations, reproducibility, bad requests."""

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mamlkit.data import ClassImages, load_omniglot
from mamlkit.tasks import ClassificationTasks, TaskDistribution, omniglot_tasks

SHARED_OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
REAL_ROOT = Path(os.environ.get("MAMLKIT_OMNIGLOT_ROOT") or SHARED_OMNIGLOT)
HAVE_REAL = all(
    (REAL_ROOT / f"{n}.zip").is_file() for n in ("images_background", "images_evaluation")
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "default-cache"))


def random_images(counts, size=(6, 6), channels=None, seed=0):
    """Random (hence distinct) images, ``counts[c]`` of class c."""
    g = torch.Generator().manual_seed(seed)
    shape = (sum(counts), *((channels,) if channels else ()), *size)
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return ClassImages(images, labels, tuple(f"class{c}" for c in range(len(counts))))


def row_of(data):
    """Map an image (as float in [0, 1], any shape) back to its row in ``data``."""
    table = {data.images[i].flatten().numpy().tobytes(): i for i in range(len(data))}
    return lambda x: table[(x * 255).round().to(torch.uint8).flatten().numpy().tobytes()]


def test_shapes_dtypes_range_and_label_balance():
    data = random_images([7] * 10, size=(5, 5), channels=3)
    dist = ClassificationTasks(data, ways=4, shots=2, query_shots=3)
    assert isinstance(dist, TaskDistribution)
    assert (dist.loss, dist.metric, dist.num_classes) == ("cross_entropy", "accuracy", 10)
    batch = dist.sample(6, 0)
    (sx, sy), (qx, qy) = batch.support, batch.query
    assert sx.shape == (6, 8, 3, 5, 5) and qx.shape == (6, 12, 3, 5, 5)
    assert sx.dtype == qx.dtype == torch.float32 and sy.dtype == qy.dtype == torch.long
    assert 0.0 <= float(sx.min()) and float(sx.max()) <= 1.0
    for task in range(6):
        assert torch.bincount(sy[task], minlength=4).tolist() == [2] * 4
        assert torch.bincount(qy[task], minlength=4).tolist() == [3] * 4
    gray = ClassificationTasks(random_images([5] * 6), ways=3, shots=1, query_shots=2)
    assert gray.sample(2, 0).support[0].shape == (2, 3, 1, 6, 6)


def test_each_label_is_one_class_and_no_image_repeats_within_a_task():
    data = random_images([6, 9, 7, 8, 6, 10, 6, 7], seed=1)  # ragged classes
    find = row_of(data)
    dist = ClassificationTasks(data, ways=5, shots=2, query_shots=4)
    batch, classes = dist.sample_with_classes(50, 3)
    for t in range(50):
        assert len(set(classes[t].tolist())) == 5  # classes drawn without replacement
        rows = []
        for x, y in (batch.support, batch.query):
            for i in range(x.shape[1]):
                row = find(x[t, i])
                rows.append(row)
                assert int(data.labels[row]) == int(dist.base_classes[classes[t, y[t, i]]])
        assert len(set(rows)) == len(rows)  # shots and queries drawn without replacement
    # labels are assigned to classes at random: class 0 shows up under several labels
    labels_of_class0 = set(torch.nonzero(classes == 0)[:, 1].tolist())
    assert len(labels_of_class0) >= 3
    # every class gets drawn, every image of a ragged class can be picked
    assert set(classes.flatten().tolist()) == set(range(8))


def test_rotations_are_new_classes_made_of_rot90_images():
    data = random_images([4] * 3, size=(5, 5), seed=2)
    find_by_turn = [
        row_of(ClassImages(torch.rot90(data.images, k, (-2, -1)), data.labels, data.class_names))
        for k in range(4)
    ]
    dist = ClassificationTasks(data, ways=4, shots=1, query_shots=2, rotations=(0, 1, 2, 3))
    assert dist.num_classes == 12 and dist.class_names[:3] == ["class0", "class0@90", "class0@180"]
    batch, classes = dist.sample_with_classes(40, 5)
    same_character_twice = 0
    for t in range(40):
        base, turn = dist.base_classes[classes[t]], dist.turns[classes[t]]
        pairs = list(zip(base.tolist(), turn.tolist(), strict=True))
        assert len(set(pairs)) == 4  # a (character, rotation) class holds one label only
        same_character_twice += len(set(base.tolist())) < 4
        for x, y in (batch.support, batch.query):
            for i in range(x.shape[1]):
                label = int(y[t, i])
                row = find_by_turn[int(turn[label])](x[t, i, 0])
                assert int(data.labels[row]) == int(base[label])
                expected = torch.rot90(data.images[row], int(turn[label]), (-2, -1))
                assert torch.equal((x[t, i, 0] * 255).round().to(torch.uint8), expected)
    assert same_character_twice > 0  # one character under two rotations = two labels


def test_same_seed_same_tasks_other_seed_other_tasks():
    data = random_images([6] * 12, seed=3)
    dist = ClassificationTasks(data, ways=5, shots=1, query_shots=3, rotations=(0, 2))
    a, b = dist.sample(8, 11), dist.sample(8, torch.Generator().manual_seed(11))
    c = dist.sample(8, 12)
    same = lambda p, q: all(  # noqa: E731
        torch.equal(u, v)
        for u, v in zip((*p.support, *p.query), (*q.support, *q.query), strict=True)
    )
    assert same(a, b) and not same(a, c)
    assert same(a, dist.sample_with_classes(8, 11)[0])
    g = torch.Generator().manual_seed(11)
    first, second = dist.sample(8, g), dist.sample(8, g)
    assert same(first, a) and not same(first, second)


def test_bad_requests_say_what_to_change():
    data = random_images([5, 5, 3])
    with pytest.raises(
        ValueError, match="4-way tasks need 4 classes but only 3 are on offer; lower"
    ):
        ClassificationTasks(data, ways=4)
    with pytest.raises(
        ValueError, match=r"need 5 examples per class but class 'class2' has only 3"
    ):
        ClassificationTasks(data, ways=2, shots=1, query_shots=4)
    with pytest.raises(ValueError, match="shots must be at least 1"):
        ClassificationTasks(data, ways=2, shots=0)
    with pytest.raises(ValueError, match="quarter turns"):
        ClassificationTasks(data, ways=2, shots=1, query_shots=1, rotations=(0, 4))
    wide = ClassImages(torch.zeros(4, 3, 5, dtype=torch.uint8), torch.tensor([0, 0, 1, 1]), "ab")
    with pytest.raises(ValueError, match="Rotated classes need square images"):
        ClassificationTasks(wide, ways=2, shots=1, query_shots=1, rotations=(0, 1))
    ok = ClassificationTasks(data, ways=2, shots=1, query_shots=2, classes=[0, 2])
    assert ok.num_classes == 2
    with pytest.raises(ValueError, match="num_tasks must be at least 1"):
        ok.sample(0)


def test_omniglot_tasks_on_synthetic_zips(tmp_path):
    root = tmp_path / "omniglot"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, alphabets in (("images_background", ("A", "B")), ("images_evaluation", ("C",))):
        with zipfile.ZipFile(root / f"{name}.zip", "w") as zf:
            for alphabet in alphabets:
                for c in range(1, 4):
                    for d in range(1, 6):
                        out = io.BytesIO()
                        art = rng.integers(0, 2, (105, 105), dtype=np.uint8) * 255
                        Image.fromarray(art).convert("1").save(out, format="PNG")
                        zf.writestr(
                            f"{name}/{alphabet}/character{c:02d}/x_{d:02d}.png", out.getvalue()
                        )
    train = omniglot_tasks(root, 3, 2, 3, split="train", protocol="lake", cache_dir=tmp_path / "c")
    test = omniglot_tasks(root, 3, 2, 3, split="test", protocol="lake", cache_dir=tmp_path / "c")
    assert (train.num_classes, test.num_classes) == (6 * 4, 3)
    batch = train.sample(4, 0)
    assert batch.support[0].shape == (4, 6, 1, 28, 28) and batch.query[0].shape == (4, 9, 1, 28, 28)
    assert set(train.base_classes.tolist()).isdisjoint(test.base_classes.tolist())
    with pytest.raises(ValueError, match="need 8 examples per class but class 'C/character01'"):
        omniglot_tasks(root, 3, 5, 3, split="test", protocol="lake", cache_dir=tmp_path / "c")


# --------------------------------------------------------------------------------- real Omniglot
@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    """Shared with test_data_omniglot.py, so the real zips are decoded once per session."""
    if not HAVE_REAL:
        pytest.skip(f"real Omniglot zips not found in {REAL_ROOT} (set MAMLKIT_OMNIGLOT_ROOT)")
    return tmp_path_factory.getbasetemp() / "mamlkit-omniglot-cache"


@pytest.mark.slow
def test_real_finn_split_4800_rotated_train_classes_and_no_test_character_in_training(real_cache):
    def make(split, **options):
        return omniglot_tasks(REAL_ROOT, 5, 1, 15, split, cache_dir=real_cache, **options)

    train, test, val = make("train"), make("test"), make("val", num_val=100)
    assert (train.num_classes, test.num_classes) == (4800, 423)
    assert make("test", rotate=True).num_classes == 1692
    assert make("train", num_val=100).num_classes == 4400 and val.num_classes == 100
    train_chars, test_chars = set(train.base_classes.tolist()), set(test.base_classes.tolist())
    assert len(train_chars) == 1200 and train_chars.isdisjoint(test_chars)
    assert set(val.base_classes.tolist()) <= train_chars
    batch, classes = train.sample_with_classes(32, 0)
    assert batch.support[0].shape == (32, 5, 1, 28, 28) and batch.query[0].shape == (
        32,
        75,
        1,
        28,
        28,
    )
    assert set(train.base_classes[classes].flatten().tolist()).isdisjoint(test_chars)
    om = load_omniglot(REAL_ROOT, cache_dir=real_cache)
    first = (batch.support[0][0, 0, 0] * 255).round().to(torch.uint8)
    char, turn = int(train.base_classes[classes[0, 0]]), int(train.turns[classes[0, 0]])
    originals = torch.rot90(om.data.images[om.data.labels == char], turn, (-2, -1))
    assert (originals == first).flatten(1).all(1).any()


def test_real_lake_split_964_and_659_characters(real_cache):
    train = omniglot_tasks(REAL_ROOT, 20, 1, 5, "train", "lake", rotate=False, cache_dir=real_cache)
    test = omniglot_tasks(REAL_ROOT, 20, 1, 5, "test", "lake", cache_dir=real_cache)
    assert (train.num_classes, test.num_classes) == (964, 659)
    names = train.data.class_names
    assert names[int(train.base_classes[0])].startswith("Alphabet_of_the_Magi/")
    assert names[int(test.base_classes[0])].startswith("Angelic/")
    assert test.sample(2, 0).support[0].shape == (2, 20, 1, 28, 28)
