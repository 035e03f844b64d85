"""The real pipeline on tiny settings: Prefect flows, DVC stages, lock consistency, reruns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.numpy import load_file

from svrl_core.config import Params, load_params, parse_params
from svrl_core.policies.openvla_oft.policy import demo_statistics
from svrl_core.policies.openvla_oft.prompt import byte_tokenizer
from tests.conftest import TINY, assert_weights_close, free_port
from tests.oft_upstream import TINY_TOWER_SPECS, write_release

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def tiny_params_yaml() -> dict:
    merged = Params().model_dump()
    for section, values in TINY.items():
        merged[section].update(values)
    parse_params(merged)
    return merged


# Set in this process by any earlier in-process training (its world of one): a child must form its
# own, not reuse the port this process's process group still listens on.
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def child_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**child_environ(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(cwd), "PREFECT_HOME": str(cwd / ".prefect"), **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def make_project(root: Path, params: dict) -> Path:
    """A copy of the project with `params`, in its own git + DVC repository."""
    for name in ("flows", "tasks", "svrl_core"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    shutil.copy(ROOT / ".dvc/config", root / ".dvc/config")
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server) -> Path:
    return make_project(tmp_path_factory.mktemp("project"), tiny_params_yaml())


STAGES = ("ingest", "sft", "eval_sft", "rl", "eval_rl", "export", "report")


def completed_flow_runs() -> dict[str, int]:
    """Flow name -> number of completed runs, read from the Prefect server's API."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        counts: dict[str, int] = {}
        for flow_run in client.read_flow_runs(limit=200):
            if flow_run.state and flow_run.state.is_completed():
                counts[flows[flow_run.flow_id]] = counts.get(flows[flow_run.flow_id], 0) + 1
        return counts


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w_]+)'", output))


def test_pipeline_flow_runs_every_stage_and_leaves_dvc_up_to_date(project):
    result = run([sys.executable, "-m", "flows.pipeline"], project)
    assert "ran ['ingest', 'sft', 'eval_sft', 'rl', 'eval_rl', 'export', 'report']" in result.stderr + result.stdout
    report = (project / "reports/report.md").read_text()
    assert "| **all**" in report and (project / "reports/learning_curve.png").stat().st_size > 1000
    eval_rl = json.loads((project / "metrics/eval_rl.json").read_text())
    assert eval_rl["episodes"] == 4 and set(eval_rl["per_task"]) == {"red", "blue"}
    assert json.loads((project / "metrics/export.json").read_text())["max_action_difference"] == 0.0
    assert list((project / "videos/eval_sft").glob("*.gif"))
    status = run(["dvc", "status"], project)
    assert "Data and pipelines are up to date" in status.stdout
    runs = completed_flow_runs()
    assert {"pipeline", *STAGES} <= set(runs), "each stage is its own flow run, visible through the API"
    again = run([sys.executable, "-m", "flows.pipeline"], project)
    assert "ran nothing" in again.stderr + again.stdout


def test_a_brought_discrete_token_checkpoint_runs_the_pipeline_without_sft(tmp_path_factory, prefect_server,
                                                                          tiny_dataset):
    """A directory laid out like SimpleVLA-RL's LIBERO SFT checkpoints (upstream's names, tiny layout) is
    adopted as it is (sft.steps 0) and goes through evaluation, RL and export."""
    release = tmp_path_factory.mktemp("release") / "simplevla_sft"
    stats = demo_statistics(tiny_dataset, [])["svrl"]
    write_release(release, {"libero_10_no_noops": stats, "bridge_orig": stats}, byte_tokenizer(256).to_str())
    params = tiny_params_yaml()
    params["policy"].update({"family": "openvla-oft", "n_bins": 256})
    params["policy"]["oft"].update({"checkpoint": str(release), "unnorm_key": "libero_10", "max_prompt_tokens": 160})
    params["sft"]["steps"] = 0
    root = make_project(tmp_path_factory.mktemp("oft_project"), params)
    with open(root / "svrl_core/policies/openvla_oft/vision.py", "a") as towers:  # the released ids, tiny
        towers.write("\n" + "".join(f"KNOWN_TOWERS[{timm_id!r}] = TowerSpec({timm_id!r}, *{args}, **{kwargs})\n"
                                     for timm_id, (args, kwargs) in TINY_TOWER_SPECS.items()))
    result = run([sys.executable, "-m", "flows.pipeline"], root)
    assert "ran ['ingest', 'sft', 'eval_sft', 'rl', 'eval_rl', 'export', 'report']" in result.stderr + result.stdout
    assert "skipped lora_adapter" in result.stderr + result.stdout
    assert json.loads((root / "metrics/sft.json").read_text()) == {"step": 0, "adopted": str(release)}
    assert json.loads((root / "models/rl/config.json").read_text())["model_type"] == "openvla"
    assert json.loads((root / "metrics/export.json").read_text())["max_action_difference"] == 0.0
    assert (root / "exports/policy_bundle/tokenizer.json").is_file()


def test_changing_an_rl_param_reruns_only_rl_and_what_follows(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["rl"]["lr"] = params["rl"]["lr"] * 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(["dvc", "repro"], project)
    assert stages_run(result.stdout) == {"rl", "eval_rl", "export", "report"}
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout


def test_changing_an_sft_param_does_not_rerun_ingest(project):
    original = (project / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["sft"]["lr"] = params["sft"]["lr"] / 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status", "--json"], project)
    (project / "params.yaml").write_text(original)
    changed = set(json.loads(status.stdout))
    assert "sft" in changed and "ingest" not in changed


def test_bad_params_stop_the_stage_with_a_clear_message(project, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl:\n  group_size: 1\n  temprature: 1.6\n")
    result = run([sys.executable, "-m", "flows.rl", "--params", str(bad)], project, check=False)
    assert result.returncode == 2
    assert "rl.group_size = 1" in result.stderr and "rl.temprature: unknown key" in result.stderr


def test_missing_dataset_stops_sft_and_writes_nothing(project, tmp_path):
    params = tiny_params_yaml()
    params["paths"].update(demos=str(tmp_path / "no_demos"), sft_model=str(tmp_path / "sft_out"))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "flows.sft", "--params", str(path)], project, check=False)
    assert result.returncode == 2 and "run `dvc repro ingest` first" in result.stderr
    assert not (tmp_path / "sft_out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_truncated_checkpoint_stops_evaluation_with_one_clear_line(project, tmp_path):
    damaged = tmp_path / "sft"
    shutil.copytree(project / "models/sft", damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:1000])
    params = tiny_params_yaml()
    params["paths"].update(sft_model=str(damaged), metrics=str(tmp_path / "metrics"), videos=str(tmp_path / "videos"))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "flows.eval_sft", "--params", str(path)], project, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {damaged}/model.safetensors: unreadable or truncated")
    assert f"dvc checkout {damaged}" in last_line
    assert "Traceback" not in result.stderr and not (tmp_path / "metrics").exists()


RL_ITERATIONS = 10  # the kill lands after the first checkpoint (iteration 1 or 2), so 10 leave most to resume


def rl_params_file(project: Path, out: Path, ranks: int = 1) -> Path:
    params = tiny_params_yaml()
    params["compute"]["ranks"] = ranks
    params["paths"].update(sft_model=str(project / "models/sft"), rl_model=str(out / "rl"),
                           rl_state=str(out / "state"), metrics=str(out / "metrics"), plots=str(out / "plots"))
    params["rl"].update(iterations=RL_ITERATIONS, checkpoint_every=1, max_idle_iterations=RL_ITERATIONS)
    path = out / "params.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params))
    return path


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith(("_time_s", "_per_s"))} for row in history]


def test_a_killed_rank_fails_the_two_rank_rl_stage_and_a_rerun_ends_as_one_rank_does(project, tmp_path):
    """kill -9 of rank 1 mid-run stops the stage with one line; a rerun with a time budget resumes (still on 2
    ranks) and ends its segment after one iteration, exit code 75; the next ends where an uninterrupted run
    on one rank ends."""
    import signal
    import time

    import psutil

    killed = rl_params_file(project, tmp_path / "killed", ranks=2)
    env = {**child_environ(), "PYTHONPATH": str(project), "PREFECT_HOME": str(project / ".prefect")}
    process = subprocess.Popen([sys.executable, "-m", "flows.rl", "--params", str(killed)], cwd=project, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    state = tmp_path / "killed/state/state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[1][-3000:]
    rank_one = [p for p in psutil.Process(process.pid).children(recursive=True)
                if "flows.rl" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1"]
    assert len(rank_one) == 1, "the stage relaunched itself on 2 ranks"
    rank_one[0].send_signal(signal.SIGKILL)  # one rank, mid-run
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 2, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == ("error: the rl stage failed: rank 1 of 2 ended (killed by SIGKILL), "
                                               "so torchrun stopped every rank; fix the cause, then rerun it to "
                                               "resume from its last saved iteration")
    done_before_kill = len(json.loads(state.read_text())["history"])
    assert 0 < done_before_kill < RL_ITERATIONS and not (tmp_path / "killed/rl").exists()

    budget = yaml.safe_load(killed.read_text())
    budget["rl"]["max_wall_s"] = 1e-3  # less than one iteration: the segment stops after one
    (tmp_path / "segment.yaml").write_text(yaml.safe_dump(budget))
    segment = run([sys.executable, "-m", "flows.rl", "--params", str(tmp_path / "segment.yaml")], project, check=False)
    assert segment.returncode == 75, segment.stderr[-3000:]
    assert f"rl: resuming after iteration {done_before_kill}" in segment.stderr
    assert segment.stderr.strip().splitlines()[-1] == (
        f"segment ended: rl stopped after iteration {done_before_kill + 1} of {RL_ITERATIONS}: the next one would "
        f"not fit in rl.max_wall_s=0.001s; its state is in {tmp_path / 'killed/state'}, and running the stage again "
        "(make run, dvc repro) continues the run")
    assert not (tmp_path / "killed/rl").exists()

    resumed = run([sys.executable, "-m", "flows.rl", "--params", str(killed)], project)
    assert f"rl: resuming after iteration {done_before_kill + 1}" in resumed.stderr
    one_rank, one_rank_weights = uninterrupted_one_rank_run(killed)
    resumed_history = json.loads((tmp_path / "killed/plots/rl_history.json").read_text())
    assert len(resumed_history) == RL_ITERATIONS and any("loss" in row for row in one_rank)
    for resumed_row, clean_row in zip(without_timings(resumed_history), without_timings(one_rank), strict=True):
        assert resumed_row.keys() == clean_row.keys()
        for key, value in clean_row.items():
            assert resumed_row[key] == (pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value)
    assert_weights_close(load_file(str(tmp_path / "killed/rl/model.safetensors")), one_rank_weights,
                         load_params(killed).rl.lr)
    # finished: the state is gone, so a rerun with changed code cannot reload the finished run
    assert not (tmp_path / "killed/state").exists() and not (tmp_path / "killed/state.ranks").exists()


def uninterrupted_one_rank_run(params_path: Path) -> tuple[list[dict], dict]:
    """The same RL run in this process, on one rank and in-process envs: its history and weights."""
    from svrl_core.algos.grpo_trainer import train_grpo
    from svrl_core.policies import load_policy
    from svrl_core.rollout import LocalEnvPool
    from tasks.rl import rl_env_config

    params = load_params(params_path)
    policy = load_policy(params.paths.sft_model, params.policy)
    history = train_grpo(policy, LocalEnvPool(rl_env_config(params), 16), list(params.env.tasks), params.rl)
    return json.loads(json.dumps(history)), {k: v.numpy() for k, v in policy.model.state_dict().items()}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 endpoint on loopback (moto's server) with one bucket."""
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    urllib.request.urlopen(urllib.request.Request(f"{url}/svrl-test", method="PUT"), timeout=10)
    yield env
    server.terminate()
    server.wait(timeout=10)


def test_push_to_s3_then_pull_into_a_fresh_clone_with_nothing_to_rerun(project, s3_endpoint, tmp_path):
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project).stdout
    run(["dvc", "remote", "modify", "--local", "s3", "url", "s3://svrl-test/store"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=svrl", "-c", "user.email=svrl@localhost", "commit", "-qm", "tiny run"], project)
    run(["dvc", "push", "-r", "s3"], project, env=s3_endpoint)

    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(project), str(fresh)], tmp_path)
    assert not (fresh / "models/rl").exists()
    run(["dvc", "remote", "modify", "--local", "s3", "url", "s3://svrl-test/store"], fresh)
    run(["dvc", "pull", "-r", "s3"], fresh, env=s3_endpoint)
    for artifact in ("data/demos/toy/meta/info.json", "models/rl/model.safetensors", "metrics/eval_rl.json",
                     "reports/report.md"):
        assert (fresh / artifact).read_bytes() == (project / artifact).read_bytes(), artifact
    assert "Data and pipelines are up to date" in run(["dvc", "status"], fresh).stdout


def test_unreachable_s3_endpoint_fails_fast_and_clearly(project):
    import time

    began = time.monotonic()
    result = run(["dvc", "push", "-r", "s3"], project, check=False,
                 env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                      "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"})
    assert result.returncode != 0 and "Could not connect to the endpoint URL" in result.stderr + result.stdout
    assert time.monotonic() - began < 60


def test_scheduled_deployments_register_and_a_run_completes_on_a_worker(project):
    from prefect.client.orchestration import get_client

    shutil.copytree(ROOT / "infra/prefect", project / "infra/prefect")
    run(["prefect", "work-pool", "create", "svrl-process", "--type", "process", "--overwrite"], project)
    run(["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect/prefect.yaml"], project)
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("pipeline/nightly")
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    before = completed_flow_runs().get("report", 0)
    run(["prefect", "deployment", "run", "report/report"], project)
    run(["prefect", "worker", "start", "--pool", "svrl-process", "--run-once"], project)
    assert completed_flow_runs().get("report", 0) == before + 1


def test_dvc_experiments_sweep_a_parameter(project):
    """`dvc exp run --set-param` (needs the commit made by the S3 test above)."""
    result = run(["dvc", "exp", "run", "--set-param", "rl.lr=0.0123", "--name", "lr-sweep"], project)
    assert stages_run(result.stdout + result.stderr) == {"rl", "eval_rl", "export", "report"}, result.stdout
    table = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    assert "lr-sweep" in json.dumps(table)
    side_by_side = run([sys.executable, "-m", "tasks.experiments"], project).stdout  # `make exps`
    assert max(len(line) for line in side_by_side.splitlines()) <= 120, side_by_side
    sweep = next(line for line in side_by_side.splitlines() if line.startswith("lr-sweep"))
    headline = json.loads((project / "metrics/headline.json").read_text())
    assert sweep.split()[1] == "rl.lr=0.0123" and f"{100 * headline['greedy_change']:+.1f}" in side_by_side


def test_stages_write_outputs_straight_to_s3(project, s3_endpoint, tmp_path, monkeypatch):
    """Outside DVC (e.g. a Prefect deployment), stage outputs may be s3:// URLs, written via fsspec."""
    import fsspec

    from svrl_core.data import load_dataset
    from svrl_core.policies import VLAPolicy

    for key, value in s3_endpoint.items():
        monkeypatch.setenv(key, value)
    params = tiny_params_yaml()
    base = "s3://svrl-test/direct"
    params["paths"].update(demos=f"{base}/demos", sft_model=f"{base}/sft", metrics=f"{base}/metrics",
                           plots=f"{base}/plots")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    for stage in ("ingest", "sft"):
        run([sys.executable, "-m", f"flows.{stage}", "--params", str(path)], project, env=s3_endpoint)
    fs = fsspec.filesystem("s3")
    assert fs.exists("svrl-test/direct/sft/_COMPLETE") and fs.exists("svrl-test/direct/sft/model.safetensors")
    assert load_dataset(f"{base}/demos").n_episodes == 4
    assert VLAPolicy.load(f"{base}/sft").cfg.n_bins == 32
    assert json.loads(fs.cat("svrl-test/direct/metrics/sft.json"))["step"] == 5

    fs.rm("svrl-test/direct/sft/_COMPLETE")  # as if the upload had been cut short
    with pytest.raises(FileNotFoundError, match="incompletely written"):
        VLAPolicy.load(f"{base}/sft")


def test_sft_runs_data_parallel_under_torchrun(project, tmp_path):
    """Two ranks train in sync through DeepSpeed (gloo), each on half of every batch, as one rank trains;
    rank 0 alone writes the outputs."""
    from flows.sft import weight_checksum
    from svrl_core.policies import VLAPolicy

    params = yaml.safe_load((project / "params.yaml").read_text())
    if not (project / params["paths"]["demos"]).exists():  # when run on its own
        run([sys.executable, "-m", "flows.ingest"], project)
    params["paths"].update(sft_model=str(tmp_path / "sft"), metrics=str(tmp_path / "metrics"),
                           plots=str(tmp_path / "plots"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                  str(free_port()), "-m", "flows.sft", "--params", str(tmp_path / "params.yaml")], project)
    logs = result.stdout + result.stderr
    replica_sum = float(re.search(r"sft replica rank 1 finished; weight checksum (\S+)", logs).group(1))
    saved = VLAPolicy.load(tmp_path / "sft")
    assert abs(weight_checksum(saved) - replica_sum) < 1e-6
    if (project / "models/sft").exists():  # the pipeline's one-rank SFT of the same params: the same training
        assert_weights_close(load_file(str(tmp_path / "sft/model.safetensors")),
                             load_file(str(project / "models/sft/model.safetensors")), params["sft"]["lr"])
    assert json.loads((tmp_path / "metrics/sft.json").read_text())["step"] == params["sft"]["steps"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics", "params.yaml", "plots", "sft"]
