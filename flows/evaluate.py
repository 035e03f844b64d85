"""Evaluation flows for the SFT and the RL policy: the same protocol, different checkpoints."""

from prefect import flow

from svrl_core.config import Params, load_params
from tasks.evaluate import evaluate_checkpoint
from tasks.metrics import write_metrics
from tasks.tracking import log_videos, publish_success_table, tracking_run


def evaluate_stage(stage: str, params: Params, model_dir: str) -> dict:
    with tracking_run(stage, params) as run:
        table = evaluate_checkpoint(params, model_dir, f"{params.paths.videos}/{stage}")
        run.log({f"{stage}/success_rate": table["success_rate"],
                 **{f"{stage}/{task}": row["success_rate"] for task, row in table["per_task"].items()},
                 **({f"{stage}/sampled_success_rate": table["sampled"]["success_rate"]} if "sampled" in table else {})})
        log_videos(run, stage, table["videos"])
    write_metrics(params, stage, table)
    publish_success_table(stage, table)
    return table


@flow(name="eval_sft")
def eval_sft_flow(params_path: str = "params.yaml") -> dict:
    """Greedy success rate of the SFT policy on held-out initial states."""
    params = load_params(params_path)
    return evaluate_stage("eval_sft", params, params.paths.sft_model)


@flow(name="eval_rl")
def eval_rl_flow(params_path: str = "params.yaml") -> dict:
    """Greedy success rate of the RL policy on held-out initial states."""
    params = load_params(params_path)
    return evaluate_stage("eval_rl", params, params.paths.rl_model)
