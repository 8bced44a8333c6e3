"""The ``mamlkit`` command: presets, train, eval, plot, compare."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

# Nothing heavier than the config (yaml) at import: the console script imports this module
# before ``main`` runs, and torch loads inside ``main``, where a Ctrl-C becomes one line.
from mamlkit.run import config as config_lib

SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for ``seq``, ``cat`` ... | head -1


class StdoutClosed(Exception):
    """Standard output's reader has gone (``mamlkit eval RUN | head -1``)."""


class StdoutFailed(Exception):
    """Standard output cannot be written (a full disk); the message says why."""


def say(*lines: str) -> None:
    """Print ``lines`` to standard output at once (flushed), after the command has written
    its files: a closed pipe or a full disk then surfaces here, where ``main`` ends it in one
    line, never at interpreter exit and never before a result is safe on disk."""
    try:
        print(*lines, sep="\n", flush=True)
    except BrokenPipeError:
        _stdout_to_devnull()
        raise StdoutClosed from None
    except OSError as error:
        _stdout_to_devnull()
        raise StdoutFailed(error.strerror or str(error)) from None


def _stdout_to_devnull() -> None:
    """Point file descriptor 1 at /dev/null, so that the interpreter's last flush of what is
    still buffered cannot fail a second time and print its own traceback at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured, closed)
        pass


def _run_name(preset: str, overrides: list[str]) -> str:
    """The default run directory name: the preset (or config file's stem), and with ``--set``
    a short hash of the overrides (``sinusoid-1a2b3c4d``): short however many there are, the
    same for the same values in any order; the values themselves are in ``config.yaml``."""
    if config_lib.is_config_file(preset):
        preset = Path(preset).stem
    preset = preset.replace("/", "_")
    if not overrides:
        return preset
    values = config_lib.parse_overrides(overrides)
    typed = config_lib.from_dict(values)  # 0 and 0.0 of a float key are one value
    text = json.dumps({key: getattr(typed, key) for key in values}, sort_keys=True)
    return f"{preset}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def cmd_presets(args: argparse.Namespace) -> int:
    """List the presets, or with ``--show NAME`` print one (or a config file) resolved, keys
    explained: after ``base:`` inheritance and the checks, as train uses it."""
    if args.show is not None:
        config = config_lib.resolve(args.show, {})
        kind = "config file" if config_lib.is_config_file(args.show) else "preset"
        say(f"# {kind} {args.show}, resolved: the keys that apply, each with its doc",
            config_lib.format_sections(config, docs=True).rstrip("\n"))
        return 0
    names = config_lib.preset_names()
    width = max(len(n) for n in names)
    say(*(f"{name.ljust(width)}  {config_lib.load_preset(name).description}" for name in names))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train, or with ``--resume`` continue, a run; ``--resume`` takes ``--set`` and
    ``--data-root`` for the keys a resume may change (say ``iterations`` to extend a run)."""
    from mamlkit.run import distributed
    from mamlkit.run.loop import train
    from mamlkit.run.rundir import RESUMABLE

    overrides = config_lib.parse_overrides(args.set)
    if args.data_root:
        overrides["data_root"] = args.data_root
    overrides = config_lib.absolute_paths(overrides)
    names = [_run_name(args.preset, args.set)]
    # '--resume --set iterations=N' appended to the first command continues its run
    for cut in range(len(args.set) - 1, -1, -1) if args.resume else ():
        if args.set[cut].partition("=")[0].strip() not in RESUMABLE:
            break
        names.append(_run_name(args.preset, args.set[:cut]))
    runs = [Path(args.out)] if args.out else [Path("runs") / name for name in names]
    out = next((run for run in runs if run.is_dir()), runs[0])
    if args.resume:
        _check_resumed_kind(args.preset, overrides, out)
    config = None if args.resume else config_lib.with_absolute_paths(
        config_lib.resolve(args.preset, overrides))
    with distributed.leave_group_after():  # under torchrun, train() joins the process group
        result = train(config, out, resume=args.resume, progress=not args.no_progress,
                       overrides=overrides if args.resume else None)
        is_main = distributed.is_main()
    if is_main:
        say(f"trained {result.iteration} iterations in {result.seconds:.1f} s; run directory: "
            f"{out}", f"next: mamlkit eval {out}   and   mamlkit plot {out}")
    return 0


def _check_resumed_kind(preset: str, overrides: dict, out: Path) -> None:
    """``--resume`` continues the run in ``out`` as its config.yaml says; a CONFIG (with the
    typed ``--set``) of another task means the wrong directory or the wrong preset, so it is
    refused before anything runs instead of training the other run silently. Other
    differences are expected: the first command's ``--set`` need not be repeated."""
    from mamlkit.run import components
    from mamlkit.run.errors import RunDirectoryError
    from mamlkit.run.rundir import CONFIG, read_config

    if not (out / CONFIG).is_file():
        return  # train() says that there is nothing to resume
    saved = read_config(out / CONFIG)
    if components.task(saved.task).in_python:
        return  # built in Python, by no preset: train() says how to resume it
    try:
        named = config_lib.from_dict(overrides, config_lib.load_source(preset))
    except config_lib.ConfigError:
        return  # a preset renamed or a config file moved since: config.yaml is what counts
    differences = config_lib.kind_differences(named, saved)
    if differences:
        label = (f"config file '{preset}'" if config_lib.is_config_file(preset)
                 else f"preset '{preset}'")
        raise RunDirectoryError(
            f"{out} holds a run of task {saved.task}, but {label} trains "
            f"{' and '.join(differences)}; resume it with its own preset or "
            f"config file, or train {preset} into a new --out.")


def _moved_data(runs: list[Path], data_root: str | None) -> None:
    """One sentence, naming ``--data-root``, for a run whose dataset is no longer where its
    config.yaml says (moved, another machine, or a relative path kept by an older mamlkit)."""
    if data_root is not None:
        return
    for run in runs:
        try:
            config = config_lib.load(run / "config.yaml")
        except (config_lib.ConfigError, OSError):
            continue  # load() names what is wrong with the run itself
        missing = (config.data_root is not None and not config.download
                   and "data_root" in config_lib.applicable_keys(config)
                   and not Path(config.data_root).expanduser().exists())
        if missing:
            raise config_lib.ConfigError(
                f"The dataset of {run} is not at {config.data_root} any more; pass --data-root "
                "DIR where it is now.")


def cmd_eval(args: argparse.Namespace) -> int:
    """The same held-out tasks for every run; RL runs get their untrained policy beside them.

    Each ``eval.json`` is written before the table is printed, so a closed or full standard
    output loses no result; a run directory that cannot be written still shows its table (and
    then exits 2 with one sentence).
    """
    import torch

    from mamlkit.run import evaluate
    from mamlkit.run.compare import unique_names
    from mamlkit.run.components import is_rl
    from mamlkit.run.load import load, untrained

    runs = [Path(r) for r in args.runs]
    data_root = config_lib.absolute_path(args.data_root)
    _moved_data(runs, data_root)
    learners = {name: (run, load(run, data_root=data_root))
                for name, run in unique_names(runs).items()}
    kinds = {is_rl(learner.config) for _, learner in learners.values()}
    if len(kinds) > 1:
        raise config_lib.ConfigError("These runs report different metrics (return and a "
                                     "supervised metric); evaluate RL and supervised runs "
                                     "separately.")
    progress = not args.no_progress and sys.stderr.isatty()
    results: dict[str, dict[str, Any]] = {}
    random_policy = None
    for name, (_, learner) in learners.items():
        # the run's measured thread count: small models slow down badly with more threads
        torch.set_num_threads(learner.config.threads)
        result = evaluate.evaluate(learner, args.tasks, progress=progress, desc=name)
        if is_rl(learner.config):
            result["random_policy"] = evaluate.evaluate(untrained(learner.config), args.tasks,
                                                        progress=progress, desc=f"{name} random")
            random_policy = random_policy or result["random_policy"]
        results[name] = result
    table = {**results, "random (untrained init)": random_policy} if random_policy else results
    written = _write_evaluations(learners, results)
    say(evaluate.format_table(table))
    status = 0
    for run, outcome in written.items():
        if isinstance(outcome, OSError):
            print(f"mamlkit: error: could not write the evaluation into {run} "
                  f"({outcome.strerror or outcome}); the table above is its result.",
                  file=sys.stderr)
            status = 2
        else:
            say(f"wrote {outcome}")
    return status


def _write_evaluations(learners: dict, results: dict) -> dict[Path, Path | OSError]:
    """Each run's ``eval.json`` (or ``eval-N.json``), or the error that kept it unwritten."""
    from mamlkit.run import evaluate

    written: dict[Path, Path | OSError] = {}
    for name, (run, learner) in learners.items():
        try:
            written[run] = evaluate.write(run, results[name], learner.config.eval_tasks)
        except OSError as error:
            written[run] = error
    return written


def cmd_plot(args: argparse.Namespace) -> int:
    """Figures of the runs (seeds of one experiment as one curve), as PNG and PDF."""
    from mamlkit.run import plots
    from mamlkit.run.compare import check_runs, unique_names

    runs = unique_names(check_runs(args.runs))  # before anything is created
    baseline = check_runs([args.baseline])[0] if args.baseline else None
    out_dir = Path(args.out) if args.out else Path(args.runs[0])
    data_root = config_lib.absolute_path(args.data_root)
    _moved_data(list(runs.values()), data_root)
    written = plots.plot_runs(runs, out_dir, baseline, data_root=data_root)
    say(*(f"wrote {path}" for path in written))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """One table over the runs' ``eval.json``, seeds of one experiment as mean ± 95% CI."""
    from mamlkit.run import compare

    if args.paired:
        return _compare_paired(args)
    say(compare.compare(args.runs, args.format, compare.parse_steps(args.steps)))
    return 0


def _compare_paired(args: argparse.Namespace) -> int:
    """Two runs' difference task by task (``--paired``)."""
    from mamlkit.run.compare import check_runs
    from mamlkit.run.paired import paired_difference, paired_text

    if len(args.runs) != 2 or args.format != "md" or args.steps:
        raise config_lib.ConfigError("--paired compares exactly two runs, as a markdown table "
                                     "of every evaluated step (no --format or --steps).")
    first, second = check_runs(args.runs)
    say(paired_text(paired_difference(first, second)))
    return 0


def _plain(text: str | None) -> str:
    """Help text without reST markup (``name`` and :role:`name` become name): argparse prints
    descriptions as they are, and backquotes read as noise in a terminal."""
    text = re.sub(r":[a-z]+:`([^`]*)`", r"\1", text or "")
    return re.sub(r"``([^`]*)``", r"\1", text).strip()


def _version() -> str:
    """``mamlkit X (torch Y)``: both versions, since a run's numbers depend on torch's too."""
    import torch

    from mamlkit import __version__

    return f"mamlkit {__version__} (torch {torch.__version__})"


def positive_int(text: str) -> int:
    """argparse type for counts such as --tasks: a whole number of at least 1, else one line."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a positive whole number (1, 2, ...), got {text!r}")
    return value


_TRAIN_HELP = ("Meta-train into a run directory. CONFIG is a preset name (see 'mamlkit presets') "
               "or the path of a YAML config file of key: value lines; such a file may start "
               "from a preset or another file with 'base: NAME', and its keys are checked like a "
               "preset's. Every value is checked before anything is built or written.")


_DATA_ROOT_HELP = ("the dataset folder, where it has moved since training (instead of the "
                   "run's data_root; config.yaml is left as it is)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mamlkit", description=_plain(__doc__))
    p.add_argument("--version", action="version", version=_version(),
                   help="print the versions of mamlkit and torch, then exit")
    sub = p.add_subparsers(dest="command", required=True)
    ps = sub.add_parser("presets", help="list the presets, or show one's resolved config",
                        description="List the presets, or print one resolved, by section.")
    ps.add_argument("--show", metavar="NAME",
                    help="print the resolved config of a preset (or a YAML config file) by "
                         "section, each key with its doc")
    ps.set_defaults(func=cmd_presets)
    t = sub.add_parser("train", help="meta-train a preset or a YAML config file into a run "
                       "directory", description=_TRAIN_HELP)
    t.add_argument("preset", metavar="CONFIG", help="preset name or path to a .yaml config file")
    t.add_argument("--out", help="run directory (default runs/<preset or file stem>, with "
                   "--set runs/<preset>-<8-digit hash of the overrides>)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set inner_lr=0 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--data-root", help="dataset folder (omniglot: the two official zips)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar: a line at most every 30 s instead (validations are "
                        "printed either way)")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate runs on the same held-out tasks")
    e.add_argument("runs", nargs="+")
    e.add_argument("--tasks", type=positive_int, default=None,
                   help="held-out tasks (default the run's eval_tasks, 600 in the presets; "
                        "another count writes eval-N.json once eval.json holds the full one)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--data-root", help=_DATA_ROOT_HELP)
    e.set_defaults(func=cmd_eval)
    pl = sub.add_parser("plot", help="learning curves and adaptation pictures as PNG and PDF")
    pl.add_argument("runs", nargs="+",
                    help="run directories; runs differing only in seed become one curve")
    pl.add_argument("--out", help="folder for the figures (default: the first run directory)")
    pl.add_argument("--baseline", metavar="RUN",
                    help="a sinusoid run (e.g. trained with --set inner_lr=0) drawn beside the "
                         "runs on the same tasks, as in Finn et al. 2017, Fig. 2")
    pl.add_argument("--data-root", help=_DATA_ROOT_HELP)
    pl.set_defaults(func=cmd_plot)
    c = sub.add_parser("compare", help="one table over the runs' eval.json (seeds grouped)")
    c.add_argument("runs", nargs="+", help="evaluated run directories (mamlkit eval first)")
    c.add_argument("--format", choices=["md", "csv", "latex"], default="md",
                   help="markdown (default), CSV or a LaTeX booktabs tabular")
    c.add_argument("--steps", metavar="K,K,...",
                   help="inner steps to show, e.g. 0,1,5 (default: all evaluated)")
    c.add_argument("--paired", action="store_true",
                   help="two runs: their difference task by task on the same held-out tasks, "
                        "and each one's gain over 0 steps (mean ± 95%% CI)")
    c.set_defaults(func=cmd_compare)
    return p


def known_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can cause, each printed as its one sentence."""
    from mamlkit.data import DataError
    from mamlkit.run.errors import RunDirectoryError, TrainingDiverged

    return (config_lib.ConfigError, RunDirectoryError, TrainingDiverged, FileNotFoundError,
            DataError)


def _out_of_memory(error: BaseException) -> bool:
    """torch's CPU and CUDA allocators and Python itself say it in these ways."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or (
        "can't allocate memory" in text)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. Every error a user can cause is one line on stderr.

    A Ctrl-C at any moment, also while torch loads in the first seconds, is one line and 130;
    a standard output closed by its reader (``| head -1``) ends quietly with 141, after the
    command's files are written.
    """
    try:
        return _command(argv)
    except StdoutClosed:
        return SIGPIPE_EXIT
    except KeyboardInterrupt:  # outside the training loop, which stops on its own
        print("mamlkit: interrupted", file=sys.stderr)
        return 130


def _command(argv: list[str] | None) -> int:
    """Parse ``argv`` and run the command, its errors turned into one line and status 2."""
    from mamlkit.run.errors import TrainingInterrupted

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as interrupted:  # the loop has printed its one line
        return interrupted.exit_code  # 130 for SIGINT, 143 for SIGTERM
    except known_errors() as error:
        print(f"mamlkit: error: {error}", file=sys.stderr)
        return 2
    except StdoutFailed as error:
        print(f"mamlkit: error: could not print to standard output ({error}); send it "
              "elsewhere (the files a command writes are written before it prints).",
              file=sys.stderr)
        return 2
    except OSError as error:  # --out a file, a folder without permission, a full disk
        where = f"cannot use {error.filename}: " if error.filename else ""
        print(f"mamlkit: error: {where}{error.strerror or error}.", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        print("mamlkit: error: out of memory; lower meta_batch_size or chunk_size, or set "
              "checkpoint_inner=true (the run directory can be started again as typed).",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
