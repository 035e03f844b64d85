"""The SFT-vs-RL report from the stages' metrics."""

from __future__ import annotations

from prefect import task

from svrl_core.config import Params
from svrl_core.io import join, read_json
from svrl_core.report import write_report
from tasks.metrics import read_metrics


@task
def write_pipeline_report(params: Params) -> str:
    sft, rl = read_metrics(params, "eval_sft"), read_metrics(params, "eval_rl")
    history = read_json(join(params.paths.plots, "rl_history.json"))
    return write_report(params.report.title, sft, rl, history, params.paths.report)
