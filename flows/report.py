from pathlib import Path

from prefect import flow

from flows.cli import run_stage
from svrl_core.config import load_params
from tasks.stages import write_pipeline_report
from tasks.tracking import publish_markdown, tracking_run


@flow(name="report")
def report_flow(params_path: str = "params.yaml") -> str:
    """SFT vs RL success per task and the learning curve, as markdown + PNG."""
    params = load_params(params_path)
    with tracking_run("report", params) as run:
        path = write_pipeline_report(params)
        run.log({"report/success": run_image(Path(path).with_name("success.png"))})
    publish_markdown("report", Path(path).read_text(), "SFT vs RL report")
    return path


def run_image(path: Path):
    import wandb

    return wandb.Image(str(path))


if __name__ == "__main__":
    run_stage(report_flow)
