from prefect import flow

from flows.cli import run_stage
from svrl_core.config import load_params
from tasks.export import export_policy
from tasks.metrics import write_metrics
from tasks.tracking import tracking_run


@flow(name="export")
def export_flow(params_path: str = "params.yaml") -> dict:
    """Export the RL policy as a self-contained bundle and verify it acts identically."""
    params = load_params(params_path)
    with tracking_run("export", params) as run:
        summary = export_policy(params)
        run.log({f"export/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    write_metrics(params, "export", summary)
    return summary


if __name__ == "__main__":
    run_stage(export_flow)
