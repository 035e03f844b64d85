"""Multi-rank stages: a stage module under torchrun, one process per rank on this machine."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections import deque

from svrl_core.training import SegmentEnded

# Set in a process that trained in a world of one: a launch must form its own world, not join that one.
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
RESUMABLE = {"rl": "rerun it to resume from its last saved iteration"}
SEGMENT_ENDED = "segment ended:"  # how a stage that used its time budget says so on stderr (flows/cli.py)


class RankFailure(RuntimeError):
    """A rank of a multi-rank stage failed, and with it the stage; the message names the rank."""


def run_on_ranks(stage: str, params_path: str, n_ranks: int) -> None:
    """Run `python -m flows.<stage> --params P` on `n_ranks` local ranks. torchrun stops every rank when
    one fails; then this raises RankFailure with the failed rank, how it ended and what to do."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n_ranks), "--master_port",
           str(_free_port()), "-m", f"flows.{stage}", "--params", params_path]
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    process = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    tail: deque[str] = deque(maxlen=400)
    for line in process.stderr:  # shown as it comes; the end kept to name the failed rank
        sys.stderr.write(line)
        tail.append(line)
    if process.wait():
        ended = [line for line in tail if line.startswith(SEGMENT_ENDED)]
        if ended:  # every rank stopped at the same iteration on purpose (rl.max_wall_s)
            raise SegmentEnded(ended[0].removeprefix(SEGMENT_ENDED).strip())
        raise RankFailure(describe_failure(stage, n_ranks, process.returncode, "".join(tail)))


def describe_failure(stage: str, n_ranks: int, returncode: int, log_tail: str) -> str:
    """One line from torchrun's failure summary ('Root Cause ... rank : 1 ... exitcode : -9')."""
    root = log_tail[log_tail.rfind("Root Cause"):] if "Root Cause" in log_tail else ""
    rank, code = re.search(r"rank\s*:\s*(\d+)", root), re.search(r"exitcode\s*:\s*(-?\d+)", root)
    who = f"rank {rank.group(1)} of {n_ranks}" if rank else f"one of its {n_ranks} ranks"
    how = f"exit code {returncode}"
    if code:
        exit_code = int(code.group(1))
        how = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}"
        if -exit_code in signal.valid_signals():
            how = f"killed by {signal.Signals(-exit_code).name}"
    then = RESUMABLE.get(stage, "rerun it")
    return f"the {stage} stage failed: {who} ended ({how}), so torchrun stopped every rank; fix the cause, then {then}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
