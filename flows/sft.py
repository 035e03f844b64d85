import logging
import os

from prefect import flow

from flows.cli import run_stage
from svrl_core.config import load_params
from svrl_core.io import join, write_json_atomic
from svrl_core.policies import VLAPolicy
from tasks.metrics import write_metrics
from tasks.sft import fit_sft_policy, train_sft_policy
from tasks.tracking import tracking_run


@flow(name="sft")
def sft_flow(params_path: str = "params.yaml") -> dict:
    """Supervised fine-tuning on the demonstrations (sft.steps: 0 adopts policy.oft.checkpoint as it is)."""
    params = load_params(params_path)
    with tracking_run("sft", params) as run:
        history = train_sft_policy(params)
        for row in history:
            run.log({f"sft/{k}": v for k, v in row.items()}, step=row["step"])
    write_json_atomic(join(params.paths.plots, "sft_history.json"), history)
    final = history[-1] if history else {"step": 0, "adopted": params.policy.oft.checkpoint}
    write_metrics(params, "sft", final)
    return final


def sft_replica(params_path: str = "params.yaml") -> None:
    """Ranks > 0 of a multi-rank run (`torchrun --nproc_per_node N -m flows.sft`): train, write nothing."""
    policy, _ = fit_sft_policy(load_params(params_path))
    logging.getLogger("svrl").info("sft replica rank %s finished; weight checksum %.9f", os.environ.get("RANK"),
                                   weight_checksum(policy))


def weight_checksum(policy: VLAPolicy) -> float:
    """Sum of every weight in float64: equal on all ranks when data-parallel training kept them in sync."""
    return float(sum(p.detach().double().sum() for p in policy.model.parameters()))


if __name__ == "__main__":
    run_stage(sft_flow, replica=sft_replica)
