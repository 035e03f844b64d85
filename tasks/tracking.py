"""wandb runs (offline by default) and Prefect artifacts for every stage."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from svrl_core.config import Params

WANDB_DIR = ".svrl"


@contextmanager
def tracking_run(stage: str, params: Params) -> Iterator[object]:
    """A wandb run for one stage, grouped by pipeline run (SVRL_RUN_GROUP) and carrying all params."""
    import wandb

    os.makedirs(WANDB_DIR, exist_ok=True)
    run = wandb.init(project=params.tracking.project, mode=params.tracking.wandb_mode, job_type=stage,
                     group=os.environ.get("SVRL_RUN_GROUP", "manual"), dir=WANDB_DIR,
                     config=params.model_dump(), reinit="finish_previous")
    try:
        yield run
    finally:
        run.finish()


def publish_success_table(stage: str, table: dict) -> None:
    """Per-task success rates as a Prefect table artifact."""
    rows = [{"task": task, **row} for task, row in sorted(table["per_task"].items())]
    rows.append({"task": "all", "episodes": table["episodes"], "success_rate": table["success_rate"]})
    create_table_artifact(key=stage.replace("_", "-"), table=rows,
                          description=f"{stage}: greedy success rate per task")


def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(key=key, markdown=markdown, description=description)
