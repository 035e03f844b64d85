"""Command-line entry for a stage flow: `python -m flows.<stage> [--params params.yaml]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.request
from typing import Callable

import httpx
import torch

from svrl_core.config import ConfigError, load_params
from svrl_core.data import DatasetError
from svrl_core.policies import CheckpointError
from svrl_core.training import SegmentEnded
from svrl_core.training.engine import bind_local_device, launcher_rank, under_launcher
from tasks.launch import SEGMENT_ENDED, RankFailure, run_on_ranks

class PipelineError(RuntimeError):
    """A DVC or Prefect step of the pipeline failed; the message says what to do."""


USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError, PipelineError, RankFailure)
SEGMENT_ENDED_EXIT_CODE = 75  # EX_TEMPFAIL: run the stage again to continue (rl.max_wall_s)
API_CHECK_TIMEOUT_S = 10


class UserErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a failed task or flow run with its traceback; for a user error the message is the
    whole story, and the stage ends with it as one `error:` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (*USER_ERRORS, SegmentEnded)):
            record.exc_info, record.exc_text = None, None
        return True


def check_prefect_api() -> None:
    """Fail in seconds, with what to do, when PREFECT_API_URL names a server that does not answer."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return  # Prefect starts an ephemeral server
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=API_CHECK_TIMEOUT_S):
            return
    except OSError as err:
        sys.exit(f"error: PREFECT_API_URL={url}: no Prefect server answered within {API_CHECK_TIMEOUT_S}s "
                 f"({err}); start one with `make ui`, or unset PREFECT_API_URL to use a temporary one")


def run_stage(flow: Callable[..., object], replica: Callable[..., None] | None = None) -> None:
    """Run a stage's flow. A stage with a `replica` (sft, rl) runs on `compute.ranks` ranks: started
    plainly, it launches itself under torchrun; under a launcher, rank 0 runs the flow (and alone
    writes outputs, metrics, tracking and Prefect runs) and other ranks run `replica`, the stage's
    training without writes."""
    parser = argparse.ArgumentParser(description=flow.__doc__)
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("svrl").setLevel(logging.INFO)  # progress lines, also captured by Prefect
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(UserErrorsWithoutTraceback())
    rank = launcher_rank()
    if rank > 0 and replica is None:
        sys.exit(f"error: the {flow.name} stage runs in one process; only sft and rl run under a multi-rank launcher")
    if rank == 0:
        check_prefect_api()
    try:
        params = load_params(args.params)  # fail fast, before any Prefect server is involved
        if replica is not None and not under_launcher() and params.compute.rank_count() > 1:
            return run_on_ranks(flow.name, args.params, params.compute.rank_count())
        bind_local_device()  # before any model is built
        torch.set_num_threads(params.compute.torch_threads)
        (flow if rank == 0 else replica)(params_path=args.params)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except SegmentEnded as err:
        print(f"{SEGMENT_ENDED} {err}", file=sys.stderr)
        sys.exit(SEGMENT_ENDED_EXIT_CODE)
    except httpx.HTTPError as err:  # the Prefect API went away or refused a call mid-run
        print(f"error: the Prefect API failed ({type(err).__name__}: {err}); check the server "
              f"(`make ui`, or unset PREFECT_API_URL for a temporary one), then rerun the stage", file=sys.stderr)
        sys.exit(2)

