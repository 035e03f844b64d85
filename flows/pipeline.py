"""Run the stale stages of dvc.yaml in DAG order, each as its own Prefect subflow run.

After each stage, `dvc commit` records its outputs in dvc.lock exactly as `dvc repro`
would, so a later `dvc repro` has nothing to do.
"""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from typing import Iterator

from prefect import flow, get_run_logger

from flows.cli import PipelineError, run_stage
from flows.evaluate import eval_rl_flow, eval_sft_flow
from flows.export import export_flow
from flows.ingest import ingest_flow
from flows.report import report_flow
from flows.rl import rl_flow, rl_replica
from flows.sft import sft_flow, sft_replica
from svrl_core.config import ConfigError, load_params
from tasks.launch import run_on_ranks

STAGE_FLOWS = {"ingest": ingest_flow, "sft": sft_flow, "eval_sft": eval_sft_flow, "rl": rl_flow,
               "eval_rl": eval_rl_flow, "export": export_flow, "report": report_flow}
REPLICAS = {"sft": sft_replica, "rl": rl_replica}  # stages that run on compute.ranks ranks


@contextmanager
def dvc_step(what: str) -> Iterator[None]:
    """Turn a DVC failure into one line that says what failed and what to do."""
    from dvc.exceptions import DvcException

    try:
        yield
    except DvcException as err:
        raise PipelineError(f"dvc could not {what}: {err}. Fix that (params.yaml must hold every key that "
                            f"dvc.yaml lists), then rerun `make run`: finished stages are not run again") from None


def is_stale(repo, stage: str) -> bool:
    """True when dvc would rerun `stage`: changed deps, params, command or missing outputs."""
    return bool(repo.status(targets=[stage], with_deps=False))


@flow(name="pipeline")
def pipeline_flow(params_path: str = "params.yaml") -> list[str]:
    """ingest -> sft -> eval_sft -> rl -> eval_rl -> export -> report, skipping stages that are up to date."""
    from dvc.repo import Repo

    if params_path != "params.yaml":
        raise ConfigError("the pipeline runs the DVC stages, which read params.yaml: edit it or use `dvc exp run`")
    logger = get_run_logger()
    os.environ.setdefault("SVRL_RUN_GROUP", f"pipeline-{uuid.uuid4().hex[:8]}")
    ran = []
    with dvc_step("open the DVC repository here (run from the repository root)"):
        repo = Repo(".")
    with repo:
        with dvc_step("read dvc.yaml"):
            order = [stage.name for stage in repo.index.stages if stage.name in STAGE_FLOWS]
        for name in STAGE_FLOWS:
            if name not in order:
                raise PipelineError(f"dvc.yaml has no stage {name!r}; restore it with `git checkout dvc.yaml`")
        for name in STAGE_FLOWS:
            with dvc_step(f"check whether stage {name} is up to date"):
                stale = is_stale(repo, name)
            if not stale:
                logger.info("stage %s is up to date", name)
                continue
            n_ranks = load_params(params_path).compute.rank_count()
            logger.info("stage %s: running%s", name, f" on {n_ranks} ranks" if name in REPLICAS and n_ranks > 1 else "")
            if name in REPLICAS and n_ranks > 1:
                run_on_ranks(name, params_path, n_ranks)  # its rank 0 is a flow run of its own
            else:
                STAGE_FLOWS[name](params_path=params_path)
            with dvc_step(f"record stage {name}'s outputs in dvc.lock (`dvc commit {name}`)"):
                repo.commit(name, force=True)
            ran.append(name)
    logger.info("ran %s", ran or "nothing: every stage was up to date")
    return ran


if __name__ == "__main__":
    logging.getLogger("dvc").setLevel(logging.WARNING)
    run_stage(pipeline_flow)
