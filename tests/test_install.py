"""The install selection, the images and the cluster job specs, checked without installing, building
or submitting anything (no GPU, Docker daemon, SLURM or Kubernetes here)."""

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BASH = shutil.which("bash")
SELECT = "infra/system/torch_variant.sh"
CPU_ARGS = ["-r", "requirements.lock"]
CUDA_ARGS = ["-r", "requirements.lock", "-r", "requirements-cuda.lock"]


def fake_nvidia_smi(bin_dir: Path, exit_code: int = 0) -> Path:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0000)'\nexit {exit_code}\n")
    script.chmod(0o755)
    return bin_dir


def select_torch(path: str, **env: str) -> tuple[int, str, list[str], str]:
    """Run the selection as the Makefile does (eval its output) -> (exit code, variant, pip args, stderr)."""
    shell = f'selection=$({BASH} {SELECT}) && eval "$selection" && printf "%s\\n" "$variant" $pip_args'
    done = subprocess.run([BASH, "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": path, **env})
    lines = done.stdout.split()
    return done.returncode, lines[0] if lines else "", lines[1:], done.stderr


def path_with(*dirs: Path) -> str:
    """PATH of `dirs` plus coreutils' directory (for `timeout`), which must not hold a real nvidia-smi."""
    coreutils = Path(shutil.which("timeout")).parent
    return ":".join([*map(str, dirs), str(coreutils)])


def lock_pins(path: Path) -> dict[str, str]:
    """name -> version specifier, names normalized (PEP 503) and extras dropped."""
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    pins = [re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[\w,]+\])?(.+)", line).groups() for line in lines if line]
    return {re.sub(r"[-_.]+", "-", name).lower(): spec for name, spec in pins}


# --- torch variant ---------------------------------------------------------------------------------

def test_without_nvidia_smi_the_cpu_build_is_installed_as_before(tmp_path):
    code, variant, args, message = select_torch(str(tmp_path))  # an empty directory: no nvidia-smi
    assert (code, variant, args) == (0, "cpu", CPU_ARGS)
    assert "torch variant: cpu (no nvidia-smi); override with TORCH_VARIANT=cuda" in message


def test_a_gpu_listed_by_nvidia_smi_selects_the_cuda_build(tmp_path):
    code, variant, args, message = select_torch(path_with(fake_nvidia_smi(tmp_path / "bin")))
    assert (code, variant, args) == (0, "cuda", CUDA_ARGS)
    assert "torch variant: cuda (nvidia-smi: GPU 0: NVIDIA H100" in message and "TORCH_VARIANT=cpu" in message


def test_an_nvidia_smi_that_fails_selects_cpu(tmp_path):
    code, variant, args, message = select_torch(path_with(fake_nvidia_smi(tmp_path / "bin", exit_code=9)))
    assert (code, variant, args) == (0, "cpu", CPU_ARGS)
    assert "nvidia-smi lists no GPU" in message


def test_torch_variant_overrides_detection_both_ways(tmp_path):
    gpu = path_with(fake_nvidia_smi(tmp_path / "bin"))
    assert select_torch(gpu, TORCH_VARIANT="cpu")[:3] == (0, "cpu", CPU_ARGS)
    assert select_torch(str(tmp_path / "empty"), TORCH_VARIANT="cuda")[:3] == (0, "cuda", CUDA_ARGS)
    assert "(TORCH_VARIANT=cuda)" in select_torch(str(tmp_path / "empty"), TORCH_VARIANT="cuda")[3]


def test_an_invalid_torch_variant_fails_before_pip_with_a_clear_message(tmp_path):
    code, variant, args, message = select_torch(str(tmp_path), TORCH_VARIANT="gpu")
    assert code == 2 and variant == "" and args == []
    assert "TORCH_VARIANT must be cpu or cuda (or unset to detect), got 'gpu'" in message


def test_torch_index_url_is_an_extra_index_for_either_variant(tmp_path):
    for variant, args in (("cpu", CPU_ARGS), ("cuda", CUDA_ARGS)):
        result = select_torch(str(tmp_path), TORCH_VARIANT=variant, TORCH_INDEX_URL="file:///srv/torch-wheels")
        assert result[:3] == (0, variant, [*args, "--extra-index-url", "file:///srv/torch-wheels"])


def test_the_cuda_lock_pins_the_cuda_build_and_excludes_the_cpu_wheel():
    cpu, cuda = lock_pins(ROOT / "requirements.lock"), lock_pins(ROOT / "requirements-cuda.lock")
    assert cpu["torch"] == "==2.13.0" and cuda["torch"] == "!=2.13.0+cpu"
    del cuda["torch"]
    assert all(re.fullmatch(r"==[\d.]+", spec) for spec in cuda.values()), cuda  # every other line exact
    assert not set(cuda) & set(cpu), "the cuda lock adds packages, it never re-pins the shared ones"
    assert {"triton", "cuda-toolkit", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "nvidia-cublas"} <= set(cuda)


def make_checkout(tmp_path: Path, stamp: str | None) -> Path:
    """The files `make setup` depends on, with a setup stamp holding `stamp` newer than all of them."""
    for name in ("Makefile", "requirements.lock", "requirements-cuda.lock", "pyproject.toml",
                 "infra/system/install-vulkan.sh", "infra/system/torch_variant.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    if stamp is not None:
        (tmp_path / ".venv").mkdir()
        (tmp_path / ".venv/.svrl-setup-done").write_text(f"{stamp}\n")
    return tmp_path


def make_dry_run(checkout: Path, *args: str) -> str:
    done = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=checkout, capture_output=True,
                          text=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_setup_installs_through_the_selection_script(tmp_path):
    commands = make_dry_run(make_checkout(tmp_path, stamp=None), "setup")
    assert f"bash {SELECT}" in commands and 'eval "$selection"' in commands
    assert "pip install -q $pip_args" in commands and "pip install -q -r requirements.lock" not in commands


def test_an_explicit_other_variant_reinstalls_and_the_same_one_does_not(tmp_path):
    checkout = make_checkout(tmp_path, stamp="cpu")
    assert "pip install" not in make_dry_run(checkout, "setup")  # detection never reinstalls a ready venv
    assert "pip install" not in make_dry_run(checkout, "setup", "TORCH_VARIANT=cpu")
    assert "pip install -q $pip_args" in make_dry_run(checkout, "setup", "TORCH_VARIANT=cuda")


def test_print_torch_variant_installs_nothing(tmp_path):
    done = subprocess.run(["make", "-s", "print-torch-variant", "TORCH_VARIANT=cuda"], cwd=make_checkout(tmp_path, None),
                          capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0 and "variant=cuda" in done.stdout and "requirements-cuda.lock" in done.stdout
    assert not (tmp_path / ".venv").exists()


# --- images ----------------------------------------------------------------------------------------

def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in (ROOT / "infra/docker" / name).read_text().splitlines()
             if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [tuple(line.split(None, 1)) for line in joined.splitlines() if line.strip()]


@pytest.mark.parametrize("name, variant", [("Dockerfile.cpu", "cpu"), ("Dockerfile.cuda", "cuda")])
def test_images_run_make_setup_itself(name, variant):
    steps = dockerfile_instructions(name)
    kinds = [kind for kind, _ in steps]
    runs = [args for kind, args in steps if kind == "RUN"]
    setup = [args for args in runs if "make setup" in args]
    assert len(setup) == 1 and f"TORCH_VARIANT={variant}" in setup[0]
    assert not any("pip install" in args or "requirements" in args for args in runs), "one source of truth"
    assert kinds.index("COPY") < [i for i, (k, a) in enumerate(steps) if "make setup" in a][0]
    assert ("COPY", ". .") in steps and ("WORKDIR", "/opt/svrl") in steps
    assert steps[kinds.index("FROM")][1] == "debian:bookworm-slim"  # what install-vulkan.sh and python3.11 expect
    assert ("CMD", '["make", "run"]') in steps
    env = " ".join(args for kind, args in steps if kind == "ENV")
    assert "PATH=/opt/svrl/.venv/bin:$PATH" in env
    if variant == "cuda":
        assert "NVIDIA_VISIBLE_DEVICES=all" in env and "TORCH_VARIANT=cuda" in env
    assert not re.search(r"https?://", (ROOT / "infra/docker" / name).read_text())


def test_dockerignore_keeps_outputs_and_the_venv_out_but_not_git():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", "**/__pycache__", "data", "models", "exports", ".dvc/cache", ".dvc/config.local"} <= patterns
    assert not {".git", "Makefile", "requirements.lock", "requirements-cuda.lock", "infra"} & patterns


# --- cluster job specs -----------------------------------------------------------------------------

def measured_worker_gb() -> int:
    """GB per env worker, from configs/libero_oft_7b.yaml: envs per worker x scenes kept per env x the
    measured upper bound per scene, as its own comment states it."""
    text = (ROOT / "configs/libero_oft_7b.yaml").read_text()
    config = yaml.safe_load(text)
    per_scene = float(re.search(r"envs_per_worker:.*a LIBERO scene holds [\d.]+-([\d.]+) GB", text).group(1))
    return math.ceil(config["compute"]["envs_per_worker"] * config["env"]["cached_tasks"] * per_scene)


def test_env_workers_get_the_measured_memory():
    from dask.utils import parse_bytes

    gb = measured_worker_gb()
    assert gb == 14  # 4 envs x 2 scenes x 1.7 GB, as infra/README.md states
    slurm = yaml.safe_load((ROOT / "infra/dask/slurm.yaml").read_text())["jobqueue"]["slurm"]
    assert parse_bytes(slurm["memory"]) / slurm["processes"] == gb * 1e9
    docs = list(yaml.safe_load_all((ROOT / "infra/dask/kubernetes.yaml").read_text()))
    worker = next(d for d in docs if d["metadata"]["name"] == "svrl-dask-env-workers")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"] == f"{gb}G"
    command = container["command"]
    assert command[command.index("--memory-limit") + 1] == f"{gb}GB"
    readme = (ROOT / "infra/README.md").read_text()
    assert f"**{gb} GB**" in readme and f"{slurm['processes'] * gb} GB per job" in readme
    assert f"{int(slurm['walltime'].split(':')[0])} h walltime" in readme


def test_the_slurm_gpu_driver_runs_the_pipeline_on_the_nodes_gpus():
    text = (ROOT / "infra/slurm/driver.sbatch").read_text()
    directives = dict(re.findall(r"^#SBATCH (\S+?)[ =](\S+)", text, re.M))
    assert directives["--gres"].startswith("gpu:") and directives["-N"] == "1"
    assert 'cd "$SLURM_SUBMIT_DIR"' in text and "bash infra/system/run-driver.sh || status=$?" in text
    assert "#SBATCH --requeue" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text  # a segment ended (exit 75)
    readme = (ROOT / "infra/README.md").read_text()
    assert f"{int(directives['-t'].split(':')[0])} h walltime" in readme and "--mem=0" in readme
    assert ".venv/bin" not in text and str(ROOT) not in text


def test_the_kubernetes_gpu_driver_connects_to_the_workers_scheduler():
    workers = {(d["kind"], d["metadata"]["name"]): d
               for d in yaml.safe_load_all((ROOT / "infra/dask/kubernetes.yaml").read_text())}
    service = workers[("Service", "svrl-dask-scheduler")]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "comm")
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "infra/kubernetes/driver.yaml").read_text())}
    pod = docs["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"] == "svrl:cuda" and container["command"] == ["bash", "infra/system/run-driver.sh"]
    segment = docs["Job"]["spec"]["podFailurePolicy"]["rules"][0]  # rl ended a segment: a new pod continues
    assert segment["action"] == "Ignore" and segment["onExitCodes"]["values"] == [75]
    assert segment["onExitCodes"]["containerName"] == container["name"] and pod["restartPolicy"] == "Never"
    assert env["SVRL_SCHEDULER"] == f"tcp://{service['metadata']['name']}:{port}"
    gpus, memory = container["resources"]["limits"]["nvidia.com/gpu"], container["resources"]["requests"]["memory"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"]["sizeLimit"]
    assert gpus >= 1 and any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])
    claim = next(v for v in pod["volumes"] if v["name"] == "workspace")["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    readme = (ROOT / "infra/README.md").read_text()
    assert f"{gpus} GPUs" in readme and f"{memory} memory" in readme and f"{shm} `/dev/shm`" in readme


def run_driver(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """infra/system/run-driver.sh in a copy of the checkout, with a `make` and a venv python that only record
    their arguments (the python exits with $PIPELINE_STATUS)."""
    (tmp_path / "configs").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "configs/libero_oft_7b.yaml", tmp_path / "configs")
    fake_make, fake_python = tmp_path / "bin/make", tmp_path / ".venv/bin/python"
    for fake, status in ((fake_make, "0"), (fake_python, "${PIPELINE_STATUS:-0}")):
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text(f'#!/bin/sh\necho "$0 $@" >> calls.txt\nexit {status}\n')
        fake.chmod(0o755)
    path = f"{fake_make.parent}:{Path(shutil.which('sed')).parent}:{Path(shutil.which('grep')).parent}"
    return subprocess.run([BASH, str(ROOT / "infra/system/run-driver.sh")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={"PATH": path, **env})


def test_the_driver_runs_sft_and_rl_on_all_gpus_with_the_shared_scheduler(tmp_path):
    from svrl_core.config import load_params

    done = run_driver(tmp_path, SVRL_SCHEDULER="tcp://svrl-dask-scheduler:8786", SVRL_PUSH_REMOTE="local")
    assert done.returncode == 0, done.stderr
    params = load_params(tmp_path / "params.yaml")
    assert params.compute.scheduler_address == "tcp://svrl-dask-scheduler:8786"
    assert params.compute.ranks == "gpus"  # sft and rl relaunch under torchrun, one rank per GPU
    assert (tmp_path / "calls.txt").read_text().splitlines() == [
        f"{tmp_path}/bin/make setup TORCH_VARIANT=cuda",
        ".venv/bin/python -m flows.server exec .venv/bin/python -m flows.pipeline",
        f"{tmp_path}/bin/make push REMOTE=local TORCH_VARIANT=cuda"]


def test_the_driver_passes_on_a_segments_end_and_pushes_only_a_finished_run(tmp_path):
    done = run_driver(tmp_path, SVRL_SCHEDULER="tcp://h:8786", SVRL_PUSH_REMOTE="local", PIPELINE_STATUS="75")
    assert done.returncode == 75  # driver.sbatch requeues the job on it
    assert "push" not in (tmp_path / "calls.txt").read_text()


def test_the_driver_refuses_to_start_without_a_scheduler(tmp_path):
    done = run_driver(tmp_path)
    assert done.returncode == 2 and "set SVRL_SCHEDULER=tcp://HOST:PORT" in done.stderr
    assert not (tmp_path / "params.yaml").exists() and not (tmp_path / "calls.txt").exists()
