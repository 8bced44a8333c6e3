"""benchmarks/gpu_paper_runs.sh --smoke: the GPU script's every step, end to end on the CPU.

The script is run rarely and on a machine we hold for minutes, so a broken step there costs the
whole run; here it runs at toy sizes on the real Omniglot zips (skipped where they are absent),
and what it leaves is checked the way the later session will use it: unpacked and re-evaluated.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_plan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("MAMLKIT_OMNIGLOT_ROOT",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))
HAVE_DATA = (ROOT / "images_background.zip").is_file() and (
    ROOT / "images_evaluation.zip").is_file()
PRESETS = ("omniglot-20w1s", "omniglot-20w5s")
RETURNED = {"gpu_paper_runs.log", "summary.json", "choice.json", "any_model.json",
            "any_model.md", *(f"{p}.tar.gz" for p in PRESETS)}
RUN_FILES = {"config.yaml", "metrics.jsonl", "run.json", "eval.json", "checkpoints/latest",
             "checkpoints/step_00000002/model.safetensors",
             "checkpoints/step_00000002/optimizer.safetensors",
             "checkpoints/step_00000002/state.json",
             "checkpoints/step_00000002/config.yaml",  # the config it was trained with
             "checkpoints/step_00000002/SHA256SUMS"}  # each file's sha256, checked on reading


def decoded_cache(request, base: Path) -> Path:
    """Where the decoded zips are cached: pytest's cache folder, so that decoding them (12 s of
    CPU, a third of this test) happens once per checkout, not per run; a fresh folder where
    pytest keeps no cache."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("mamlkit-decoded") if cache is not None else base / "cache"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, request) -> tuple[Path, str]:
    """The --smoke run's output folder and data cache (one run for all the checks below)."""
    if shutil.which("bash") is None or shutil.which("tar") is None:
        pytest.skip("needs bash and tar")
    base = tmp_path_factory.mktemp("gpu_paper_runs")
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(base),
           "MAMLKIT_CACHE": str(decoded_cache(request, base))}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_paper_runs.sh"), "--smoke", "--data-root",
         str(ROOT), "--out", str(base / "out")], cwd=base, env=env, capture_output=True,
        text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return base / "out", env["MAMLKIT_CACHE"]


@pytest.fixture
def smoke(smoke_run) -> Path:
    return smoke_run[0]


needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"real Omniglot zips not found in {ROOT}")


@pytest.mark.slow
@needs_data
def test_the_returned_files_fit_what_comes_back_from_the_device(smoke):
    files = {p.name for p in smoke.iterdir()}
    assert files == RETURNED
    assert len(files) <= 8 and all((smoke / f).stat().st_size <= 16 * 2**20 for f in files)
    log = (smoke / "gpu_paper_runs.log").read_text()
    for marker in ("1. environment", "2. the fastest batching", "3. train", "3. mamlkit eval",
                   "4. any-model", "summary", "finished in"):
        assert marker in log


@pytest.mark.slow
@needs_data
def test_summary_choice_and_benchmark_are_well_formed(smoke):
    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["failures"] == [] and summary["smoke"] is True
    assert summary["env"]["supervised_imports_without_gymnasium"] is True
    for preset in PRESETS:
        run = summary["runs"][preset]
        assert run["iterations"] == 2 and run["batching"] in ("stacked", "vmap")
        assert run["eval"]["num_tasks"] == 4
    rows = json.loads((smoke / "choice.json").read_text())["conv4-1"]["rows"]
    assert {"mamlkit-stacked", "mamlkit-vmap"} <= set(rows)
    assert all(r["ms"] > 0 and r["first_ms"] > 0 for r in rows.values())
    bench = json.loads((smoke / "any_model.json").read_text())
    names = {r["implementation"] for r in bench}
    assert {"mamlkit auto", "plain loop", "mamlkit stacked"} <= names
    assert all(r["ms"] > 0 and r["device"] for r in bench)
    assert (smoke / "any_model.md").read_text().startswith("| workload | implementation |")


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("preset", PRESETS)
def test_a_packed_run_holds_its_files_and_re_evaluates_to_its_eval_json(smoke_run, preset,
                                                                        tmp_path):
    smoke, cache = smoke_run
    with tarfile.open(smoke / f"{preset}.tar.gz") as tar:
        assert {m.name for m in tar.getmembers() if m.isfile()} == RUN_FILES
        tar.extractall(tmp_path / preset, filter="data")
    run = tmp_path / preset
    saved = json.loads((run / "eval.json").read_text())
    assert {"metric", "num_tasks", "inner_lr", "checkpoint", "iteration", "steps",
            "per_task"} <= set(saved)
    assert saved["metric"] == "accuracy" and saved["num_tasks"] == 4
    assert saved["iteration"] == 2 and set(saved["steps"]) == {"0", "1"}
    assert all(set(v) == {"mean", "ci95"} for v in saved["steps"].values())
    if preset != PRESETS[0]:
        return  # one re-evaluation is enough to show the packed run is whole (and saves time)
    env = {**os.environ, "MAMLKIT_CACHE": cache, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "mamlkit", "eval", str(run), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = json.loads((run / "eval.json").read_text())
    assert again["steps"] == saved["steps"] and again["per_task"] == saved["per_task"]


def _row(ms: float, first_ms: float | None = None, peak: float | None = None) -> dict:
    return {"ms": ms, "first_ms": first_ms or ms, "cuda_peak_mb": peak}


def test_the_plan_takes_the_most_meta_steps_compilation_paid_first():
    rows = {"mamlkit-stacked": _row(100), "mamlkit-vmap": _row(80),
            "mamlkit-vmap+compile": _row(40, first_ms=60_000)}
    assert gpu_plan.choose(rows, 300, None).batching == "vmap"
    assert not gpu_plan.choose(rows, 100, None).compile  # 60 s of compiling for 100 s: no
    long = gpu_plan.choose(rows, 600, None)  # 540 s at 40 ms beat 600 s at 80 ms
    assert (long.batching, long.compile) == ("vmap", True)
    assert gpu_plan.choose({}, 300, None).batching == "auto"


def test_the_plan_keeps_within_the_gpu_memory_and_trains_apart_when_both_do_not_fit(tmp_path):
    env = {"gpu_memory_gib": 80}
    rows = {"mamlkit-stacked": _row(100, peak=10_000), "mamlkit-vmap": _row(80, peak=50_000)}
    choice = {"a": {"rows": rows}, "b": {"rows": rows}}
    chosen, mode = gpu_plan.plan(choice, env, 300, {"p1": "a", "p2": "b"}, None)
    assert chosen["p1"].batching == "stacked" and mode == "parallel"  # 50 GB > 45% of 80 GiB
    big = {"mamlkit-stacked": _row(100, peak=60_000), "mamlkit-vmap": _row(80, peak=70_000)}
    chosen, mode = gpu_plan.plan({"a": {"rows": big}, "b": {"rows": big}}, env, 300,
                                 {"p1": "a", "p2": "b"}, None)
    assert chosen["p1"].batching == "stacked" and mode == "serial"  # the leanest, one by one
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "config.yaml").write_text("scale:\n  batching: vmap\n  compile: false\n")
    chosen, mode = gpu_plan.plan(choice, env, 300, {"p1": "a", "p2": "b"}, tmp_path)
    assert (chosen["p1"].kind, chosen["p1"].batching) == ("resume", "vmap")  # as it started
    assert chosen["p2"].batching == "stacked" and mode == "parallel"  # 50 + 10 GB < 85%
    rows["mamlkit-stacked"]["cuda_peak_mb"] = 25_000
    chosen, mode = gpu_plan.plan(choice, env, 300, {"p1": "a", "p2": "b"}, tmp_path)
    assert chosen["p2"].batching == "stacked" and mode == "serial"  # 50 + 25 GB > 85%
