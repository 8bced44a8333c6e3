"""Your own data: a folder of class sub-folders from the command line, any labelled Dataset,
an augmentation hook, class splits by fractions or by names."""

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from mamlkit.cli import main
from mamlkit.data import DataError, class_images_from_dataset
from mamlkit.tasks import ClassificationTasks, folder_tasks, split_classes

ROOT = Path(os.environ.get("MAMLKIT_OMNIGLOT_ROOT",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))
HAVE_DATA = (ROOT / "images_background.zip").is_file()
TINY = ["--set", "iterations=6", "--set", "meta_batch_size=2", "--set", "log_every=3",
        "--set", "val_every=6", "--set", "val_tasks=4", "--set", "checkpoint_every=3",
        "--set", "eval_tasks=10", "--set", "hidden=[8]", "--no-progress"]


def colour_folder(root: Path, classes: int = 12, per_class: int = 6, size: int = 12) -> Path:
    """Classes of coloured squares with noise: a small RGB dataset in the folder layout."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        colour = torch.rand(3, generator=g) * 255
        (root / f"class_{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            noise = torch.randn(size, size, 3, generator=g) * 20
            pixels = (colour + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class_{c:02d}" / f"{i}.png")
    return root


def test_a_folder_trains_and_evaluates_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    data = colour_folder(tmp_path / "images", classes=30, per_class=4)
    run = tmp_path / "run"
    assert main(["train", "folder-5w1s", "--data-root", str(data), "--out", str(run),
                 "--set", "image_size=8", "--set", "query_shots=2", *TINY]) == 0
    assert "class_split: [0.64, 0.16, 0.2]" in (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metric"] == "accuracy" and 0 <= result["steps"]["1"]["mean"] <= 1
    assert main(["train", "folder-5w1s", "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "--data-root" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DATA, reason=f"real Omniglot zips not found in {ROOT}")
def test_a_folder_of_omniglot_pngs_learns(tmp_path, monkeypatch, capsys):
    """40 characters unpacked as class folders: grayscale, 28x28, inverted like Omniglot."""
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "characters"
    with zipfile.ZipFile(ROOT / "images_background.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        characters = sorted({str(Path(n).parent) for n in names})[:40]
        for n in names:
            if str(Path(n).parent) in characters:
                folder = target / str(Path(n).parent).replace("/", "_")
                folder.mkdir(parents=True, exist_ok=True)
                (folder / Path(n).name).write_bytes(archive.read(n))
    run = tmp_path / "run"
    # 300 iterations: at 60 the one-step gain was 0.08-0.21 depending on the CPU's float order
    # (AMD passed, Intel failed); at 300 it is 0.34-0.44 over seeds 0-3 on one machine.
    args = ["--set", "iterations=300", "--set", "meta_batch_size=4", "--set", "log_every=100",
            "--set", "val_every=300", "--set", "val_tasks=10", "--set", "checkpoint_every=300",
            "--set", "eval_tasks=50", "--set", "hidden=[16]", "--set", "channels=1",
            "--set", "invert=true", "--set", "class_split=[0.5, 0.25, 0.25]", "--no-progress"]
    assert main(["train", "folder-5w1s", "--data-root", str(target), "--out", str(run),
                 *args]) == 0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    steps = json.loads((run / "eval.json").read_text())["steps"]
    assert steps["1"]["mean"] > steps["0"]["mean"] + 0.2  # chance is 0.2


def test_any_labelled_dataset_becomes_class_images():
    class Dataset:  # torchvision's convention: (image, label) items and a classes list
        classes = ["cat", "dog", "eel"]

        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.items = [(torch.rand(1, 6, 6, generator=g), i % 3) for i in range(12)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    data = class_images_from_dataset(Dataset())
    assert data.class_names == ("cat", "dog", "eel") and data.images.shape == (12, 1, 6, 6)
    assert data.images.dtype == torch.uint8 and data.counts.tolist() == [4, 4, 4]
    tasks = ClassificationTasks(data, ways=3, shots=1, query_shots=2)
    batch = tasks.sample(5, 0)
    assert batch.support[0].shape == (5, 3, 1, 6, 6)
    pil = [(Image.new("RGB", (5, 5), (i * 20, 0, 0)), f"c{i % 2}") for i in range(4)]
    assert class_images_from_dataset(pil).images.shape == (4, 3, 5, 5)
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):
        class_images_from_dataset([(torch.full((2, 2), 3.0), 0)])
    with pytest.raises(DataError, match="several shapes"):
        class_images_from_dataset([(torch.zeros(2, 2), 0), (torch.zeros(3, 3), 1)])


def test_augmentation_hook_is_applied_and_reproducible(tmp_path):
    data = class_images_from_dataset([(torch.rand(1, 4, 4), i % 4) for i in range(16)])
    def flip(images, generator):
        keep = torch.rand(images.shape[:2], generator=generator) < 0.5
        return torch.where(keep[..., None, None, None], images, images.flip(-1))

    plain = ClassificationTasks(data, ways=2, shots=1, query_shots=1).sample(8, 3)
    a = ClassificationTasks(data, ways=2, shots=1, query_shots=1, augment=flip).sample(8, 3)
    b = ClassificationTasks(data, ways=2, shots=1, query_shots=1, augment=flip).sample(8, 3)
    assert torch.equal(a.support[0], b.support[0])
    assert not torch.equal(a.support[0], plain.support[0])
    assert torch.equal(a.support[0].flip(-1).sort().values.sum(),
                       plain.support[0].sort().values.sum())


def test_class_splits_by_fractions_and_by_names(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    names = [f"c{i}" for i in range(10)]
    parts = split_classes(names, (0.6, 0.2, 0.2))
    assert sorted(sum(parts.values(), [])) == list(range(10))
    assert [len(parts[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert split_classes(names, (0.6, 0.2, 0.2)) == parts  # fixed permutation
    by_name = split_classes(names, {"train": ["c1", "c2"], "test": ["c3"]})
    assert by_name == {"train": [1, 2], "val": [], "test": [3]}
    with pytest.raises(DataError, match="'c99'"):
        split_classes(names, {"train": ["c99"]})
    data = colour_folder(tmp_path / "images", classes=6)
    tasks = folder_tasks(data, ways=2, shots=1, query_shots=1, split="test",
                         class_split={"train": ["class_00", "class_01"],
                                      "test": ["class_04", "class_05"]})
    assert tasks.class_names == ["class_04", "class_05"]
    with pytest.raises(DataError, match="fewer than ways=5"):
        folder_tasks(data, ways=5, split="val")


def test_a_custom_task_distribution_trains_through_the_loop_from_python(tmp_path, capsys):
    """Time series with a Conv1d model: checkpoints, exact resume, eval; the CLI refuses it."""
    from torch import nn

    from mamlkit import TaskBatch
    from mamlkit.run import custom

    class Waves:  # each task: y = sin(f * t + phase) sampled on a window; predict the next value
        loss, metric = "mse", "mse"

        def sample(self, num_tasks, generator):
            f = torch.rand(num_tasks, 1, 1, generator=generator) * 2 + 0.5
            phase = torch.rand(num_tasks, 1, 1, generator=generator) * 6.28
            start = torch.rand(num_tasks, 20, 1, generator=generator) * 10
            t = start + torch.arange(9.0) * 0.3
            series = torch.sin(f * t + phase)
            x, y = series[..., :8].unsqueeze(2), series[..., 8:]
            return TaskBatch((x[:, :10], y[:, :10]), (x[:, 10:], y[:, 10:]))

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv1d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 1))

    config = custom.config(iterations=12, meta_batch_size=4, log_every=4, val_every=6,
                           val_tasks=8, checkpoint_every=4, eval_tasks=40, inner_lr=0.1)
    custom.train(config, tmp_path / "whole", tasks=Waves(), model=net(), progress=False)
    assert (tmp_path / "whole" / "config.yaml").is_file()
    short = custom.config(iterations=8, meta_batch_size=4, log_every=4, val_every=6,
                          val_tasks=8, checkpoint_every=4, eval_tasks=40, inner_lr=0.1)
    custom.train(short, tmp_path / "split", tasks=Waves(), model=net(), progress=False)
    assert main(["train", "x", "--out", str(tmp_path / "split"), "--resume",
                 "--set", "iterations=12", "--no-progress"]) == 2  # the CLI cannot build it
    assert "mamlkit.run.custom" in capsys.readouterr().err
    path = tmp_path / "split" / "config.yaml"
    path.write_text(path.read_text().replace("iterations: 8", "iterations: 12"))
    custom.train(None, tmp_path / "split", tasks=Waves(), model=net(), resume=True,
                 progress=False)
    a = custom.load(tmp_path / "whole", tasks=Waves(), model=net())
    b = custom.load(tmp_path / "split", tasks=Waves(), model=net())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    result = custom.evaluate(a, tasks=Waves())
    assert result["metric"] == "mse" and result["num_tasks"] == 40
    assert result["steps"]["1"]["mean"] < result["steps"]["0"]["mean"]
    assert repr(result).startswith("MSE on 40 held-out tasks") and len(repr(result)) < 500


def test_a_task_distribution_without_loss_or_metric_is_told_what_to_add(tmp_path):
    from torch import nn

    from mamlkit.run import custom

    class NoLoss:
        metric = "mse"

        def sample(self, num_tasks, generator):
            raise AssertionError("not reached")

    config = custom.config(iterations=2)
    for tasks, missing in ((NoLoss(), "loss"), (type("NoMetric", (NoLoss,), {"loss": "mse",
                                                                             "metric": None})(),
                                                "metric")):
        with pytest.raises(TypeError, match=rf"^The task distribution {type(tasks).__name__} "
                                            rf"has no {missing} attribute; give it {missing} ="):
            custom.train(config, tmp_path / "run", tasks=tasks, model=nn.Linear(1, 1),
                         progress=False)
    assert not (tmp_path / "run").exists()


def test_custom_components_are_passed_explicitly_to_the_builders():
    """The builders take a custom run's tasks and model as an argument (no state between calls);
    without them the registered ``custom`` task says in one sentence where they come from."""
    from torch import nn

    from mamlkit.run import custom
    from mamlkit.run.build import build_network, build_tasks
    from mamlkit.run.config import ConfigError

    class Tasks:
        loss, metric = "mse", "mse"

        def sample(self, num_tasks, generator):
            raise AssertionError("not reached")

    train, val, model = Tasks(), Tasks(), nn.Linear(1, 1)
    given = custom.Components(train, model, val_tasks=val)
    config = custom.config()
    assert build_tasks(config, "train", given) is train
    assert build_tasks(config, "val", given) is val and build_tasks(config, "test", given) is val
    assert build_network(config, train, given) is model
    for build in (lambda: build_tasks(config, "train"), lambda: build_network(config, train)):
        with pytest.raises(ConfigError, match=r"^This run's tasks and model come from Python "
                                              r"\(task: custom\); .*mamlkit\.run\.custom\."):
            build()
