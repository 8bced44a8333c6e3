"""TensorBoard's view of ``metrics.jsonl``: the event files are rebuilt from it at every start.

``metrics.jsonl`` is the run's record; TensorBoard's events are a copy of it, for which a resume
is hard: a kill can stop the event files ahead of or behind the metrics, and the resume trims
the metrics to its checkpoint. TensorBoard's own answer (a purge marker at the resume's step)
leaves the event files holding records twice or, where marker and checkpoint disagree by one,
not at all. So every start (fresh or resumed, after ``metrics.jsonl`` was trimmed) writes one
new event file holding every record the metrics hold, then deletes the older files; the files
then hold each record once, whatever happened before. A kill between the two steps leaves the
old files beside a complete new one, whose first event (a restart at step 0) makes TensorBoard
drop what it read from the older files; the next start deletes them.

Events are written on the training thread, one ``write`` per record, so a full disk or a file
size limit is an ``OSError`` of the run (one sentence, exit 2) and not a traceback from a
writer thread; the records' wall times are kept from the older files where they hold them.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

PREFIX = "events.out.tfevents."


class EventLog:
    """One TensorBoard event file of scalars ``meta/<key>`` at step ``iteration``."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("xb", buffering=0)  # unbuffered: close() has nothing to flush
        self.framed = _Bytes()
        self.records = RecordWriter(self.framed)
        self._event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    @classmethod
    def rebuild(cls, directory: Path, records: list[dict[str, Any]]) -> EventLog:
        """A new event file in ``directory`` holding ``records``, the older files deleted."""
        directory.mkdir(parents=True, exist_ok=True)
        older = sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX))
        wall_times = _wall_times(older)
        path = directory / f"{PREFIX}{time.time_ns():020d}.{socket.gethostname()}.mamlkit"
        log = None
        try:
            log = cls(path)
            log._event(Event(wall_time=time.time(), step=0,
                             session_log=SessionLog(status=SessionLog.START)))
            for record in records:
                iteration = record.get("iteration")
                log.add(record, None if iteration is None else wall_times.get(iteration))
        except BaseException:  # a full disk: keep the older files, which TensorBoard shows
            if log is not None:
                log.close()
            path.unlink(missing_ok=True)
            raise
        for path in older:
            path.unlink(missing_ok=True)
        return log

    def add(self, record: dict[str, Any], wall_time: float | None = None) -> None:
        """The numbers of one ``metrics.jsonl`` record, as one event at its iteration."""
        values = [Summary.Value(tag=f"meta/{key}", simple_value=float(value))
                  for key, value in record.items()
                  if key != "iteration" and isinstance(value, int | float)]
        self._event(Event(wall_time=time.time() if wall_time is None else wall_time,
                          step=int(record["iteration"]), summary=Summary(value=values)))

    def _event(self, event: Event) -> None:
        """Frame ``event`` as TensorBoard's record format and write it in one go."""
        self.records.write(event.SerializeToString())
        data = memoryview(self.framed.take())
        while data:  # a regular file takes it all, or raises (full disk, size limit)
            data = data[self.file.write(data):]

    def close(self) -> None:
        self.file.close()


class _Bytes:
    """Where RecordWriter frames a record (length, checksums) before one write to the file."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def take(self) -> bytes:
        data, self.data = self.data, b""
        return data

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _wall_times(paths: list[Path]) -> dict[int, float]:
    """When each step's scalars were written, as the newest file holding them says."""
    times: dict[int, float] = {}
    for path in paths:
        try:
            for event in LegacyEventFileLoader(str(path)).Load():
                if event.HasField("summary"):
                    times[event.step] = event.wall_time
        except (OSError, DecodeError):
            continue  # a damaged file: those records get the time of the rebuild
    return times


__all__ = ["EventLog"]
