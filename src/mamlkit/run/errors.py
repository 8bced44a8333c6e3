"""The ways a run stops with one sentence (the command line prints them without a traceback)."""

from __future__ import annotations

# The options a message may tell a user to change, named for the command line and for the
# Python calls that take them (run.loop.train, run.custom.train): one message serves both.
RESUME = "--resume (resume=True)"
OUT = "--out (run_dir)"
NEW_OUT = "--out (another run_dir)"


class TrainingDiverged(RuntimeError):
    """The meta-loss became NaN or infinite; the message names the last good checkpoint."""


class RunDirectoryError(RuntimeError):
    """The run directory is not usable as asked (exists without --resume, nothing to resume,
    in use by another process, an unreadable config.yaml or checkpoint)."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training; the message says what was kept for ``--resume``.

    Not a RuntimeError, so that ``except RuntimeError`` around a training call does not swallow
    a user's Ctrl-C; ``exit_code`` is the shell's convention (128 + signal number).
    """

    def __init__(self, message: str, signum: int, iteration: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.iteration = iteration

    def __reduce__(self):  # picklable with its fields (torchrun broadcasts errors)
        return type(self), (str(self), self.signum, self.iteration)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


__all__ = ["NEW_OUT", "OUT", "RESUME", "RunDirectoryError", "TrainingDiverged",
           "TrainingInterrupted"]
