"""Stage entry points: user errors end as one clear line (fast, no Prefect server)."""

import logging

import pytest

from flows.cli import PipelineError, UserErrorsWithoutTraceback
from flows.pipeline import dvc_step
from svrl_core.policies import CheckpointError


def test_a_dvc_failure_becomes_one_line_that_says_what_to_do():
    from dvc.dependency.param import MissingParamsError

    with pytest.raises(PipelineError) as err:
        with dvc_step("record stage report's outputs in dvc.lock"):
            raise MissingParamsError("Parameters 'rl.initial_states' are missing from 'params.yaml'.")
    message = str(err.value)
    assert message.startswith("dvc could not record stage report's outputs in dvc.lock: Parameters 'rl.initial")
    assert "rerun `make run`" in message and "\n" not in message


def test_prefect_logs_user_errors_without_their_traceback():
    records = []
    for error in (CheckpointError("models/sft/model.safetensors: truncated"), KeyError("a bug")):
        try:
            raise error
        except Exception as caught:
            record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed: %r",
                                       (caught,), exc_info=(type(caught), caught, caught.__traceback__))
        assert UserErrorsWithoutTraceback().filter(record)
        records.append(record)
    assert records[0].exc_info is None, "a user error: the message is enough"
    assert records[1].exc_info is not None, "a bug keeps its traceback"
