"""What cannot run here (SLURM, Kubernetes, Docker, GPUs) is at least validated."""

import importlib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_slurm_spec_renders_a_job_script():
    from dask_jobqueue import SLURMCluster

    from infra.dask.slurm import load_spec

    options, n_jobs = load_spec(ROOT / "infra/dask/slurm.yaml")
    cluster = SLURMCluster(**options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert n_jobs >= 1
    # the checkout's venv on the worker node, not the submitting machine's interpreter path
    assert 'cd "$SLURM_SUBMIT_DIR"' in script and 'source "${SVRL_VENV:-.venv}/bin/activate"' in script
    assert "\npython -m distributed.cli.dask_worker" in script
    assert "#SBATCH -p cpu" in script and "#SBATCH --exclusive" in script and "export MUJOCO_GL=egl" in script
    assert "--nthreads 1" in script and "--nworkers 8" in script


def test_kubernetes_manifests_wire_workers_to_the_scheduler_service():
    docs = list(yaml.safe_load_all((ROOT / "infra/dask/kubernetes.yaml").read_text()))
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    service = by_name[("Service", "svrl-dask-scheduler")]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "comm")
    for name in ("svrl-dask-scheduler", "svrl-dask-env-workers"):
        deployment = by_name[("Deployment", name)]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == labels
    scheduler = by_name[("Deployment", "svrl-dask-scheduler")]["spec"]["template"]
    assert service["spec"]["selector"] == scheduler["metadata"]["labels"]
    worker = by_name[("Deployment", "svrl-dask-env-workers")]["spec"]["template"]["spec"]["containers"][0]
    assert f"tcp://svrl-dask-scheduler:{port}" in worker["command"]


def test_prefect_deployments_point_at_real_flows_with_valid_crons():
    from prefect.flows import Flow

    spec = yaml.safe_load((ROOT / "infra/prefect/prefect.yaml").read_text())
    names = set()
    for deployment in spec["deployments"]:
        path, func = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, func), Flow), deployment["entrypoint"]
        assert deployment["work_pool"]["name"] == "svrl-process"
        for schedule in deployment.get("schedules", []):
            assert re.fullmatch(r"(\S+ ){4}\S+", schedule["cron"]), schedule
        names.add(deployment["name"])
    assert {"nightly", "reevaluate"} <= names


def test_dockerfiles_install_the_lock_with_torch_pinned():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (ROOT / "infra/docker" / name).read_text()
        assert "make setup" in text  # the image installs what `make setup` installs: requirements.lock
        assert not re.search(r"https?://", text), "no registry host names in the repository"
    pins = re.findall(r"torch==([\d.]+)", (ROOT / "requirements.lock").read_text())
    assert pins == ["2.13.0"]
