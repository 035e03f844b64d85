"""Start Dask env workers on SLURM and print the scheduler address.

    python -m infra.dask.slurm [--spec infra/dask/slurm.yaml] [--print-job-script]

Run it from the repository root (the jobs start there and activate its .venv). Keep it running;
put the printed address in params.yaml (compute.scheduler_address) and run the pipeline from any
machine that reaches it, or submit the GPU driver with it:
`sbatch --export=ALL,SVRL_SCHEDULER=<address> infra/slurm/driver.sbatch`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml


def load_spec(path: str | Path) -> tuple[dict, int]:
    """-> (SLURMCluster keyword arguments, number of jobs)."""
    spec = yaml.safe_load(Path(path).read_text())
    options = {key.replace("-", "_"): value for key, value in spec["jobqueue"]["slurm"].items()}
    return options, int(spec["n_jobs"])


def main() -> None:
    from dask_jobqueue import SLURMCluster

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="infra/dask/slurm.yaml")
    parser.add_argument("--print-job-script", action="store_true", help="show the sbatch script and exit")
    args = parser.parse_args()
    options, n_jobs = load_spec(args.spec)
    cluster = SLURMCluster(**options)
    if args.print_job_script:
        print(cluster.job_script())
        cluster.close()
        return
    cluster.scale(jobs=n_jobs)
    print(f"scheduler: {cluster.scheduler_address}  (compute.scheduler_address)", flush=True)
    try:
        while True:
            time.sleep(60)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
