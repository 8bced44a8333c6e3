"""The ``loggers`` key: metrics.jsonl always, TensorBoard and Weights & Biases on request; the
loop hands every record to each logger. W&B is tested offline (``WANDB_MODE=offline``) and
skipped where its optional extra is not installed."""

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest

from mamlkit.run.config import Config, ConfigError, resolve
from mamlkit.run.loop import train
from mamlkit.run.metrics import read_metrics

SMALL = {"iterations": 8, "meta_batch_size": 2, "log_every": 2, "val_every": 4, "val_tasks": 2,
         "checkpoint_every": 4, "shots": 5}


def test_loggers_without_jsonl_are_refused():
    with pytest.raises(ConfigError) as refused:
        resolve("sinusoid", {"loggers": ["tensorboard"]})
    assert str(refused.value) == (
        "Config key 'loggers' must hold jsonl (metrics.jsonl is the record that resume, eval "
        "and plot read), got ['tensorboard']; add jsonl, e.g. loggers=[jsonl,tensorboard].")


def test_an_unknown_logger_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"'loggers' holds 'mlfow', which is no logger; "
                                          r"choose among jsonl, tensorboard, wandb\.$"):
        resolve("sinusoid", {"loggers": ["jsonl", "mlfow"]})


def test_the_default_loggers_are_jsonl_and_tensorboard_where_it_is_installed():
    expected = ["jsonl", "tensorboard"] if importlib.util.find_spec("tensorboard") else ["jsonl"]
    assert Config().loggers == expected


def test_a_resume_may_add_a_logger_which_then_holds_every_record(tmp_path):
    """Loggers change where records go, not what is learned: TensorBoard added on resume is
    built from metrics.jsonl, so it holds the records from iteration 1."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from test_records import tensorboard_scalars

    run = tmp_path / "run"
    train(resolve("sinusoid", {**SMALL, "loggers": ["jsonl"]}), run, progress=False,
          stop_after=5)
    assert not (run / "tensorboard").exists()
    train(None, run, resume=True, progress=False, overrides={"loggers": ["jsonl", "tensorboard"]})
    losses = [(r["iteration"], r["loss"]) for r in read_metrics(run)]
    assert [i for i, _ in losses] == [2, 4, 6, 8]
    assert [(i, pytest.approx(v)) for i, v in tensorboard_scalars(run)["meta/loss"]] == losses


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's ``.wandb`` file (a LevelDB-style log: 7-byte
    header, then 32 KiB blocks of checksum, length, type and data)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, parts, records = path.read_bytes(), 32768, 7, b"", []
    assert data.startswith(b":W&B"), path
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if (length, kind) == (0, 0):
            break
        parts += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def wandb_sessions(run: Path) -> list[dict]:
    """Per offline session, in order: its run id, project, name, config and history rows."""
    sessions = []
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        session = {"history": []}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                session.update(id=record.run.run_id, project=record.run.project,
                               name=record.run.display_name,
                               config={i.key: json.loads(i.value_json)
                                       for i in record.run.config.update})
            elif kind == "history":
                session["history"].append({".".join(i.nested_key) or i.key: json.loads(i.value_json)
                                           for i in record.history.item})
        sessions.append(session)
    return sessions


def test_wandb_offline_logs_config_and_records_and_a_resume_continues_its_run(tmp_path,
                                                                              monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed "
                                        "(pip install 'mamlkit[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "home"))
    run = tmp_path / "runs" / "sine"
    config = resolve("sinusoid", {**SMALL, "loggers": ["jsonl", "wandb"]})
    train(config, run, progress=False, stop_after=6)  # killed after 6; checkpoint 4
    stored = (run / "wandb" / "mamlkit-run-id").read_text().strip()
    train(None, run, resume=True, progress=False)
    wandb.teardown()  # W&B's service writes the offline file after finish(); wait for it

    first, second = wandb_sessions(run)
    assert first["id"] == second["id"] == stored
    assert (first["project"], first["name"]) == ("runs", "sine")
    assert first["config"]["inner_lr"] == config.inner_lr
    assert first["config"]["loggers"] == ["jsonl", "wandb"]
    logged = {row["_step"]: row for session in (first, second) for row in session["history"]}
    records = read_metrics(run)
    assert sorted(logged) == [r["iteration"] for r in records] == [2, 4, 6, 8]
    for record in records:  # each record's numbers, at its iteration; the last from the resume
        assert {key: logged[record["iteration"]][key] for key in record
                if key != "iteration"} == {k: v for k, v in record.items() if k != "iteration"}
    assert [row["_step"] for row in second["history"]] == [6, 8]


def test_a_wandb_run_that_does_not_start_is_one_sentence_and_the_start_can_be_rerun(
        tmp_path, monkeypatch, capsys):
    """W&B refusing to start (no login, no network) stops the run with one line; the directory
    holds no record, so the same command runs once W&B is left out or fixed."""
    import types

    from mamlkit.cli import main

    def refuse(**settings):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=...)")

    fake = types.SimpleNamespace(init=refuse, Settings=dict)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "run"
    args = ["train", "sinusoid", "--out", str(run), "--no-progress", "--set", "iterations=2"]
    assert main([*args, "--set", "loggers=[jsonl,wandb]"]) == 2
    err = capsys.readouterr().err
    assert err == ("mamlkit: error: W&B did not start a run (api_key not configured (no-tty). "
                   "call wandb.login(key=...)); log in with 'wandb login', set "
                   "WANDB_MODE=offline, or leave wandb out of loggers.\n")
    assert main([*args, "--set", "loggers=[jsonl]"]) == 0
