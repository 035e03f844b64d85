"""wandb runs (offline by default) and Prefect artifacts for every stage."""

from __future__ import annotations

import base64
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from svrl_core.config import Params
from svrl_core.io import is_remote

WANDB_DIR = ".svrl"


def data_version() -> dict:
    """The git commit and the DVC hashes of every stage output recorded in dvc.lock."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    lock = Path("dvc.lock")
    stages = yaml.safe_load(lock.read_text()).get("stages", {}) if lock.is_file() else {}
    outputs = {out["path"]: out.get("md5") for body in stages.values() for out in body.get("outs", [])}
    return {"git_commit": commit, "dvc_outputs": outputs}


@contextmanager
def tracking_run(stage: str, params: Params) -> Iterator[object]:
    """A wandb run for one stage, grouped by pipeline run (SVRL_RUN_GROUP), with params and data version."""
    import wandb

    os.makedirs(WANDB_DIR, exist_ok=True)
    run = wandb.init(project=params.tracking.project, mode=params.tracking.wandb_mode, job_type=stage,
                     group=os.environ.get("SVRL_RUN_GROUP", "manual"), dir=WANDB_DIR,
                     config={**params.model_dump(), "data_version": data_version()}, reinit="finish_previous")
    try:
        yield run
    finally:
        run.finish()
        # finish() returns once the exit record is queued; the offline .wandb log is only
        # complete on disk when the wandb service closes it, so wait for the service too.
        wandb.teardown()


def log_videos(run, stage: str, paths: list[str]) -> None:
    """Rollout GIFs to wandb and as links in Prefect."""
    import wandb

    local = [p for p in paths if not is_remote(p)]
    if local:
        run.log({f"{stage}/videos": [wandb.Video(p, format="gif", caption=Path(p).stem) for p in local]})
    for path in paths:
        link = path if is_remote(path) else Path(path).resolve().as_uri()
        create_link_artifact(key=f"{stage.replace('_', '-')}-video", link=link,
                             link_text=str(path).rsplit("/", 1)[-1], description=f"{stage}: rollout video")


def publish_success_table(stage: str, table: dict) -> None:
    """Per-task success rates as a Prefect table artifact."""
    sampled = table.get("sampled", {"per_task": {}})
    rows = [{"task": task, **row, **({"sampled_success_rate": sampled["per_task"][task]["success_rate"]}
                                     if task in sampled["per_task"] else {})}
            for task, row in sorted(table["per_task"].items())]
    rows.append({"task": "all", "episodes": table["episodes"], "success_rate": table["success_rate"],
                 **({"sampled_success_rate": sampled["success_rate"]} if "success_rate" in sampled else {})})
    create_table_artifact(key=stage.replace("_", "-"), table=rows,
                          description=f"{stage}: greedy success rate per task (and sampled, when evaluated)")


def publish_report(report: Path) -> None:
    """The markdown report as a Prefect artifact, its PNGs inlined so the UI shows them."""
    markdown = report.read_text()
    for png in report.parent.glob("*.png"):
        inline = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        markdown = markdown.replace(f"]({png.name})", f"]({inline})")
    create_markdown_artifact(key="report", markdown=markdown, description="SFT vs RL report")
