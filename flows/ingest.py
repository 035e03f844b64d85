from prefect import flow

from flows.cli import run_stage
from svrl_core.config import load_params
from tasks.ingest import generate_demos
from tasks.metrics import write_metrics
from tasks.tracking import tracking_run


@flow(name="ingest")
def ingest_flow(params_path: str = "params.yaml") -> dict:
    """Generate demonstrations with the scripted expert into a LeRobot v3 dataset."""
    params = load_params(params_path)
    with tracking_run("ingest", params) as run:
        summary = generate_demos(params)
        run.log({"demos/episodes": summary["episodes"], "demos/frames": summary["frames"]})
    write_metrics(params, "ingest", summary)
    return summary


if __name__ == "__main__":
    run_stage(ingest_flow)
