"""The ways a run stops with one sentence (the command line prints them without a traceback)."""


class TrainingDiverged(RuntimeError):
    """The meta-loss became NaN or infinite; the message names the last good checkpoint."""


class RunDirectoryError(RuntimeError):
    """The run directory is not usable as asked (exists without --resume, nothing to resume)."""


__all__ = ["RunDirectoryError", "TrainingDiverged"]
