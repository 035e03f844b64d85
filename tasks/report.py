"""The SFT-vs-RL report from the stages' metrics."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from svrl_core.config import Params
from svrl_core.report import write_report
from tasks.metrics import read_metrics


@task
def write_pipeline_report(params: Params) -> str:
    sft, rl = read_metrics(params, "eval_sft"), read_metrics(params, "eval_rl")
    history = json.loads((Path(params.paths.plots) / "rl_history.json").read_text())
    return str(write_report(params.report.title, sft, rl, history, params.paths.report))
