"""The README as a newcomer reads it: short, every link resolves, every command runs here or is named
where a test runs it."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]

# Cheap enough to run here, from the repository root, exactly as written.
RUN_HERE = {
    "make exps",
    ".venv/bin/dvc exp show",
    "export SVRL_API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')",
}
# Too slow or stateful to run here: the test that runs each (the same command or what it calls).
TESTED_ELSEWHERE = {
    "make run": "tests/test_pipeline.py::test_pipeline_flow_runs_every_stage_and_leaves_dvc_up_to_date",
    "make run CONFIG=name": "tests/test_config.py::test_every_named_config_loads",
    "make test": ".ci/run",
    "make setup": ".ci/run",  # make test installs first
    "make ui": "tests/test_server.py::test_local_server_and_worker_start_and_stop",
    "make deploy": "tests/test_pipeline.py::test_scheduled_deployments_register_and_a_run_completes_on_a_worker",
    "make push": "tests/test_pipeline.py::test_push_to_s3_then_pull_into_a_fresh_clone_with_nothing_to_rerun",
    "make pull": "tests/test_pipeline.py::test_push_to_s3_then_pull_into_a_fresh_clone_with_nothing_to_rerun",
    "dvc repro": "tests/test_pipeline.py::test_changing_an_rl_param_reruns_only_rl_and_what_follows",
    "python -m flows.rl": "tests/test_pipeline.py::test_a_killed_rank_fails_the_two_rank_rl_stage_and_a_rerun_ends_as_one_rank_does",
    ".venv/bin/dvc exp run --set-param rl.lr=0.0005 --name lr-5e-4":
        "tests/test_pipeline.py::test_dvc_experiments_sweep_a_parameter",
    ".venv/bin/svrl serve exports/policy_bundle &":
        "tests/test_deploy.py::test_svrl_sign_serve_and_drive_from_the_command_line",
    ".venv/bin/svrl drive --episodes 5": "tests/test_deploy.py::test_svrl_sign_serve_and_drive_from_the_command_line",
}

# Named, not run by the tests: why.
NOT_RUN = {"make bench": "every benchmark in bench/, hours of measurements on 2 cores: run by hand"}


def readme_commands() -> set[str]:
    """Lines of the README's bash blocks (comments dropped) and inline `make ...`, `python -m ...`, `dvc ...`."""
    text = README.read_text()
    commands = set()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        commands |= {line.split("  #")[0].strip() for line in block.splitlines() if line.strip()}
    commands |= set(re.findall(r"`((?:make|dvc|python -m) [^`]+)`", text))
    return commands


def test_the_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 200


def test_every_readme_command_runs_here_or_is_named_where_it_is_tested():
    assert readme_commands() == RUN_HERE | TESTED_ELSEWHERE.keys() | NOT_RUN.keys()
    for where in set(TESTED_ELSEWHERE.values()):
        path, _, name = where.partition("::")
        assert (ROOT / path).exists(), where
        assert not name or f"def {name}(" in (ROOT / path).read_text(), where


@pytest.mark.integration
def test_the_cheap_readme_commands_run():
    for command in sorted(RUN_HERE):
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{command}: {result.stderr[-2000:]}"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []
