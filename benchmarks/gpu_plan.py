"""Which batching each preset trains with on the GPU, and whether two runs fit the GPU at once.

Read by benchmarks/gpu_paper_runs.sh after benchmarks/meta_step.py has timed one meta-step of
each preset's shapes (``choice.json``). A fresh run takes the candidate that buys the most
meta-steps in its time: a compiled one pays for its compilation (its first step) first, in every
session, since a run resumes with the batching and compile it started with. On a GPU whose
memory is known, a candidate must fit in ``SIDE_BY_SIDE`` of it (two runs share it); if the two
runs' peaks together exceed ``TOGETHER`` of it, they train one after the other. A resumed run
keeps its saved batching and compile. Writes ``PRESET fresh|resume BATCHING COMPILE`` lines and
``mode parallel|serial``; says why on stdout.

    python benchmarks/gpu_plan.py --choice choice.json --env env.json --seconds 280 \\
        --preset omniglot-20w1s=conv4-20w1s --preset omniglot-20w5s=conv4-20w5s --out plan.txt
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

SIDE_BY_SIDE = 0.45  # of the GPU's memory, for one of two runs (the allocator caches more)
TOGETHER = 0.85  # of the GPU's memory, for the two runs' measured peaks together


@dataclass(frozen=True)
class Choice:
    kind: str  # fresh | resume
    batching: str
    compile: bool
    peak_mb: float | None  # the meta-step's measured peak on the GPU, if measured
    why: str


def meta_steps(row: dict, seconds: float, compiled: bool) -> float:
    """Meta-steps of this candidate in ``seconds``, its compilation paid first."""
    setup = max(0.0, row["first_ms"] - row["ms"]) / 1e3 if compiled else 0.0
    return max(0.0, seconds - setup) / (row["ms"] / 1e3)


def choose(rows: dict[str, dict], seconds: float, budget_mb: float | None) -> Choice:
    """The fastest candidate (``mamlkit-<batching>[+compile]`` rows) that fits ``budget_mb``;
    the leanest if none does; ``auto`` without rows."""
    candidates = []
    for name, row in rows.items():
        if not name.startswith("mamlkit-") or not row.get("ms"):
            continue
        batching, _, compiled = name.removeprefix("mamlkit-").partition("+")
        candidates.append((meta_steps(row, seconds, bool(compiled)), batching, bool(compiled),
                           row.get("cuda_peak_mb"), name))
    if not candidates:
        return Choice("fresh", "auto", False, None, "no timings: batching=auto")
    fits = [c for c in candidates if budget_mb is None or c[3] is None or c[3] <= budget_mb]
    if fits:
        steps, batching, compiled, peak, name = max(fits, key=lambda c: c[0])
        why = f"{name}: ~{steps:.0f} meta-steps in {seconds:.0f} s"
    else:
        steps, batching, compiled, peak, name = min(candidates, key=lambda c: c[3])
        why = f"{name}: none fits {budget_mb:.0f} MB, this one needs least ({peak:.0f} MB)"
    return Choice("fresh", batching, compiled, peak, why)


def saved_choice(run_dir: Path, rows: dict[str, dict]) -> Choice:
    """A resumed run's batching and compile, as its config.yaml has them."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    flat = {}
    for key, value in config.items():  # sectioned (run:, scale:, ...) or flat
        flat.update(value if isinstance(value, dict) else {key: value})
    batching, compiled = flat.get("batching", "auto"), bool(flat.get("compile", False))
    row = rows.get(f"mamlkit-{batching}{'+compile' if compiled else ''}", {})
    return Choice("resume", batching, compiled, row.get("cuda_peak_mb"),
                  f"resumes {run_dir} as saved")


def plan(choice: dict, env: dict, seconds: float, presets: dict[str, str],
         resume_from: Path | None) -> tuple[dict[str, Choice], str]:
    """Each preset's choice, and ``parallel`` or ``serial``."""
    total = env.get("gpu_memory_gib")
    total_mb = total * 1024 if total else None
    budget = total_mb * SIDE_BY_SIDE if total_mb else None
    chosen = {}
    for preset, workload in presets.items():
        rows = choice.get(workload, {}).get("rows", {})
        run = resume_from / preset if resume_from else None
        if run is not None and (run / "config.yaml").is_file():
            chosen[preset] = saved_choice(run, rows)
        else:
            chosen[preset] = choose(rows, seconds, budget)
    peaks = [c.peak_mb for c in chosen.values() if c.peak_mb is not None]
    together = total_mb is not None and sum(peaks) > TOGETHER * total_mb
    return chosen, "serial" if together and len(chosen) > 1 else "parallel"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--choice", type=Path, required=True)
    parser.add_argument("--env", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="training time of a run")
    parser.add_argument("--preset", action="append", default=[], metavar="PRESET=WORKLOAD")
    parser.add_argument("--resume-from", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    read = lambda p: json.loads(p.read_text()) if p.is_file() else {}  # noqa: E731
    presets = dict(item.split("=", 1) for item in args.preset)
    chosen, mode = plan(read(args.choice), read(args.env), args.seconds, presets,
                        args.resume_from)
    lines = [f"{p} {c.kind} {c.batching} {str(c.compile).lower()}" for p, c in chosen.items()]
    args.out.write_text("\n".join([*lines, f"mode {mode}"]) + "\n")
    for preset, c in chosen.items():
        peak = f", peak {c.peak_mb:.0f} MB" if c.peak_mb is not None else ""
        print(f"{preset}: batching={c.batching} compile={str(c.compile).lower()} ({c.why}{peak})")
    print(f"mode: {mode}")


if __name__ == "__main__":
    main()
