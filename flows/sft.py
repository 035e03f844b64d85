import json
from prefect import flow

from flows.cli import run_stage
from svrl_core.config import load_params
from svrl_core.io import join, write_json_atomic
from tasks.metrics import write_metrics
from tasks.sft import train_sft_policy
from tasks.tracking import tracking_run


@flow(name="sft")
def sft_flow(params_path: str = "params.yaml") -> dict:
    """Supervised fine-tuning of TinyVLA on the demonstrations."""
    params = load_params(params_path)
    with tracking_run("sft", params) as run:
        history = train_sft_policy(params)
        for row in history:
            run.log({f"sft/{k}": v for k, v in row.items()}, step=row["step"])
    write_json_atomic(join(params.paths.plots, "sft_history.json"), history)
    write_metrics(params, "sft", history[-1])
    return history[-1]


if __name__ == "__main__":
    run_stage(sft_flow)
