"""Demonstrations from the scripted expert."""

from __future__ import annotations

from prefect import task

from svrl_core.config import Params
from svrl_core.data import DatasetError, write_dataset
from svrl_core.data.libero_hdf5 import read_libero_hdf5
from svrl_core.envs import make_env
from svrl_core.envs.libero.suites import demo_file_task
from svrl_core.experts import collect_demonstrations, recorder_for

DEMO_FPS = {"toy": 10, "libero": 20, "robotwin": 25}  # LIBERO's and our RoboTwin arms' control frequencies
ROBOT_TYPE = {"toy": "toy-reach", "libero": "panda", "robotwin": "svrl-dual-arm-6dof"}


@task
def generate_demos(params: Params) -> dict:
    """Scripted-expert demonstrations (only successful episodes become demos), or imported official files."""
    cfg, family = params.ingest, params.env.family
    if cfg.hdf5_files:
        episodes, per_task = import_official_demos(params)
    else:
        env = make_env(params.env)
        try:
            episodes, per_task = collect_demonstrations(env, recorder_for(family), list(params.env.tasks),
                                                        cfg.episodes_per_task, cfg.seed_start, cfg.expert_noise,
                                                        cfg.execution_noise)
        finally:
            env.close()
    write_dataset(params.paths.demos, episodes, fps=DEMO_FPS[family], robot_type=ROBOT_TYPE[family])
    return {"episodes": len(episodes), "frames": int(sum(len(e.actions) for e in episodes)), "per_task": per_task}


def import_official_demos(params: Params) -> tuple[list, dict]:
    if params.env.family != "libero":
        raise ValueError(f"ingest.hdf5_files holds official LIBERO files; env.family is {params.env.family!r}")
    episodes, per_file = [], {}
    for path in params.ingest.hdf5_files:
        try:  # one instruction per task: the benchmark's, which the env gives at evaluation
            task = demo_file_task(params.env.suite, path)
        except ValueError as err:
            raise DatasetError(str(err)) from None
        imported = read_libero_hdf5(path, list(params.env.cameras), params.env.image_size, task.instruction)
        episodes += imported
        per_file[path] = {"imported_episodes": len(imported), "task": task.name, "instruction": task.instruction}
    return episodes, per_file
