"""What several command-line tests share: the one-sentence error check and a slowed CLI that
a test can kill or signal mid-run."""

import textwrap


def one_error_line(capsys) -> str:
    """The single ``mamlkit: error: ...`` line on stderr, with no traceback."""
    err = capsys.readouterr().err
    # without the progress and validation lines of the trainings before ('iteration N/M ...')
    lines = [line for line in err.strip().splitlines() if not line.startswith("iteration ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("mamlkit: error: ")
    return lines[0]


def slow_cli(delay: float) -> str:
    """``python -c`` source of the CLI whose supervised meta-steps (same numbers) each take
    ``delay`` seconds more, slowly enough to be killed or signalled mid-run."""
    return textwrap.dedent(f"""
        import sys, time
        from mamlkit.run import steps
        update = steps.SupervisedStep.update
        def slow(self, generator):
            loss = update(self, generator)
            time.sleep({delay})
            return loss
        steps.SupervisedStep.update = slow
        from mamlkit.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
