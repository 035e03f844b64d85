import wandb
from prefect import flow

from flows.cli import run_stage
from svrl_core.config import load_params
from svrl_core.io import local_directory
from tasks.report import write_pipeline_report
from tasks.tracking import publish_report, tracking_run


@flow(name="report")
def report_flow(params_path: str = "params.yaml") -> str:
    """SFT vs RL success per task and the learning curve, as markdown + PNG."""
    params = load_params(params_path)
    with tracking_run("report", params) as run:
        markdown = write_pipeline_report(params)
        with local_directory(params.paths.report) as report:
            run.log({f"report/{name}": wandb.Image(str(report / f"{name}.png"))
                     for name in ("success", "learning_curve")})
            publish_report(report / "report.md")
    return markdown


if __name__ == "__main__":
    run_stage(report_flow)
