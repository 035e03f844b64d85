"""Where an exported policy came from: params, code revision, DVC data versions, metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from svrl_core.config import Params
from tasks.metrics import read_metrics

# the stage outputs whose DVC content hashes identify the data and checkpoints a bundle came from
TRACKED_STAGES = ("ingest", "sft", "rl")


def git_revision() -> dict:
    """HEAD and whether the working tree differs from it (None outside a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def dvc_versions(lock_path: str | Path = "dvc.lock") -> dict:
    """{stage: {out path: md5}} from dvc.lock for the stages a bundle depends on ({} before the first repro)."""
    try:
        stages = yaml.safe_load(Path(lock_path).read_text())["stages"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}
    return {stage: {out["path"]: out.get("md5") for out in stages[stage].get("outs", [])}
            for stage in TRACKED_STAGES if stage in stages}


def collect_provenance(params: Params) -> dict:
    """The record exported with a bundle. Metrics of stages not yet run are left out."""
    metrics = {}
    for stage in ("eval_sft", "eval_rl"):
        try:
            metrics[stage] = read_metrics(params, stage)
        except FileNotFoundError:
            pass
    return {"git": git_revision(), "dvc": dvc_versions(), "metrics": metrics, "params": params.model_dump(mode="json")}
