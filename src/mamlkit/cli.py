"""The ``mamlkit`` command: presets, train, eval, plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mamlkit.run import config as config_lib


def _run_name(preset: str, overrides: list[str]) -> str:
    suffix = "".join(f"-{pair.replace('=', '')}" for pair in overrides)
    return (preset + suffix).replace("/", "_")[:120]


def cmd_presets(args: argparse.Namespace) -> int:
    """List the presets, or with ``--show NAME`` print one resolved, keys explained."""
    if args.show is not None:
        config = config_lib.resolve(args.show, {})  # after base: inheritance, as train uses it
        print(f"# preset {args.show}, resolved: the keys that apply, each with its doc")
        print(config_lib.format_sections(config, docs=True), end="")
        return 0
    names = config_lib.preset_names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name.ljust(width)}  {config_lib.load_preset(name).description}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mamlkit.run import distributed
    from mamlkit.run.loop import train

    overrides = config_lib.parse_overrides(args.set)
    if args.data_root:
        overrides["data_root"] = args.data_root
    out = Path(args.out) if args.out else Path("runs") / _run_name(args.preset, args.set)
    config = None if args.resume else config_lib.resolve(args.preset, overrides)
    if args.resume and overrides:
        raise config_lib.ConfigError("--resume continues a run as it was; drop the --set values.")
    try:  # under torchrun, train() joins the process group; leave it when done
        result = train(config, out, resume=args.resume, progress=not args.no_progress)
    finally:
        is_main = distributed.is_main()
        distributed.cleanup()
    if is_main:
        print(f"trained {result.iteration} iterations in {result.seconds:.1f} s; run directory: "
              f"{out}")
        print(f"next: mamlkit eval {out}   and   mamlkit plot {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """The same held-out tasks for every run; RL runs get their untrained policy beside them."""
    from mamlkit.run import evaluate
    from mamlkit.run.build import is_rl
    from mamlkit.run.load import load, untrained

    learners = {Path(run).name: (Path(run), load(run)) for run in args.runs}
    kinds = {is_rl(learner.config) for _, learner in learners.values()}
    if len(kinds) > 1:
        raise config_lib.ConfigError("These runs report different metrics (return and a "
                                     "supervised metric); evaluate RL and supervised runs "
                                     "separately.")
    results, random_policy = {}, None
    for name, (run, learner) in learners.items():
        # the run's measured thread count: small models slow down badly with more threads
        torch.set_num_threads(learner.config.threads)
        result = evaluate.evaluate(learner, num_tasks=args.tasks)
        if is_rl(learner.config):
            result["checkpoint"] = learner.checkpoint
            result["random_policy"] = evaluate.evaluate(untrained(learner.config), args.tasks)
            random_policy = random_policy or result["random_policy"]
        evaluate.write(run, result)
        results[name] = result
    if random_policy is not None:
        results["random (untrained init)"] = random_policy
    print(evaluate.format_table(results))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from mamlkit.run import plots

    runs = {Path(r).name: Path(r) for r in args.runs}
    out_dir = Path(args.out) if args.out else Path(args.runs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in plots.plot_runs(runs, out_dir):
        print(f"wrote {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mamlkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ps = sub.add_parser("presets", help="list the presets, or show one's resolved config")
    ps.add_argument("--show", metavar="NAME",
                    help="print the preset's resolved config by section, each key with its doc")
    ps.set_defaults(func=cmd_presets)
    t = sub.add_parser("train", help="meta-train a preset into a run directory")
    t.add_argument("preset")
    t.add_argument("--out", help="run directory (default runs/<preset>[-overrides])")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set inner_lr=0 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--data-root", help="dataset folder (omniglot: the two official zips)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate runs on the same held-out tasks")
    e.add_argument("runs", nargs="+")
    e.add_argument("--tasks", type=int, default=None, help="held-out tasks (default 600)")
    e.set_defaults(func=cmd_eval)
    pl = sub.add_parser("plot", help="learning curves and adaptation pictures as PNG")
    pl.add_argument("runs", nargs="+")
    pl.add_argument("--out", help="folder for the PNGs (default: the first run directory)")
    pl.set_defaults(func=cmd_plot)
    return p


def known_errors() -> tuple[type[BaseException], ...]:
    from mamlkit.run.errors import RunDirectoryError, TrainingDiverged

    errors: list[type[BaseException]] = [config_lib.ConfigError, RunDirectoryError,
                                         TrainingDiverged, FileNotFoundError]
    try:
        from mamlkit.data import DataError

        errors.append(DataError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except known_errors() as error:
        print(f"mamlkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mamlkit: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
