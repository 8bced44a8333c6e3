"""benchmarks/rl_meta_step.py: the physics limit at either frame skip, and the ratio the issue
judges an iteration by."""

import pytest
from benchmark_scripts import load_benchmark

pytest.importorskip("mujoco")
rl_meta_step = load_benchmark("rl_meta_step")


def test_raw_steps_run_at_either_frame_skip():
    from mamlkit.envs.ant import AntBatch
    from mamlkit.envs.half_cheetah import HalfCheetahBatch

    for frame_skip in (1, 5):
        assert rl_meta_step.raw_steps_per_s(HalfCheetahBatch, False, steps=20,
                                            frame_skip=frame_skip) > 0
    assert rl_meta_step.raw_steps_per_s(AntBatch, True, steps=20, frame_skip=1) > 0


def test_an_iteration_against_its_physics_on_two_cores():
    run = {"env_steps_per_iteration": 320_000, "iteration_seconds": {"median": 20.0}}
    assert rl_meta_step.against_physics(run, 40_000) == {"physics_seconds": 4.0, "ratio": 5.0}
