"""LIBERO suites, tasks, official initial states and step limits (the LIBERO benchmark's evaluation protocol,
as OpenVLA-OFT's experiments/robot/libero/run_libero_eval.py runs it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import numpy as np

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# Steps the policy may act, after the settle steps. `oft`: OpenVLA-OFT's eval; `simplevla`: SimpleVLA-RL's rollout.
STEP_LIMIT_PRESETS = {
    "oft": {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400},
    "simplevla": dict.fromkeys(SUITES, 512),
}
SETTLE_STEPS = 10  # no-op steps that let objects fall into place before the policy acts


@dataclass(frozen=True)
class LiberoTask:
    suite: str
    index: int
    name: str  # e.g. pick_up_the_alphabet_soup_and_place_it_in_the_basket
    instruction: str
    bddl_path: str


def _benchmark(suite: str):
    if suite not in SUITES:
        raise ValueError(f"LIBERO: unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[suite]()


@cache
def suite_tasks(suite: str) -> tuple[LiberoTask, ...]:
    """Every task of `suite`, in the official order."""
    from libero.libero import get_libero_path

    bench = _benchmark(suite)
    root = get_libero_path("bddl_files")
    return tuple(
        LiberoTask(suite, i, t.name, t.language, os.path.join(root, t.problem_folder, t.bddl_file))
        for i, t in enumerate(bench.get_task(i) for i in range(bench.n_tasks))
    )


def find_task(suite: str, name: str) -> LiberoTask:
    """A task by name (or by its index as a string, e.g. "0")."""
    tasks = suite_tasks(suite)
    for task in tasks:
        if name in (task.name, str(task.index)):
            return task
    valid = "\n  ".join(f"{t.index}: {t.name}" for t in tasks)
    raise ValueError(f"LIBERO: {suite} has no task {name!r}; valid names (or indices):\n  {valid}")


def demo_file_task(suite: str, path: str) -> LiberoTask:
    """The task an official demonstration file holds, from LIBERO's naming: `<task name>_demo.hdf5`."""
    name = os.path.basename(path).removesuffix(".hdf5").removesuffix("_demo")
    try:
        return find_task(suite, name)
    except ValueError as err:
        raise ValueError(f"{path}: LIBERO names its demo files `<task name>_demo.hdf5`, and {err}") from None


@cache
def init_states(suite: str, task_index: int) -> np.ndarray:
    """The official initial states of a task: (50, state_dim) flattened MuJoCo states."""
    return np.asarray(_benchmark(suite).get_task_init_states(task_index))


def init_state(task: LiberoTask, index: int) -> np.ndarray:
    states = init_states(task.suite, task.index)
    if not 0 <= index < len(states):
        raise ValueError(f"LIBERO: init-state index {index} out of range for {task.suite}/{task.name}; "
                         f"valid: 0..{len(states) - 1}")
    return states[index]


def step_limit(suite: str, preset: str | int) -> int:
    """Policy steps per episode: a preset name ('oft', 'simplevla') or an explicit number."""
    if isinstance(preset, int):
        return preset
    if preset not in STEP_LIMIT_PRESETS:
        raise ValueError(f"LIBERO: unknown step-limit preset {preset!r}; valid: {sorted(STEP_LIMIT_PRESETS)} "
                         "or a positive integer")
    return STEP_LIMIT_PRESETS[preset][suite]
