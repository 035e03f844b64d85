"""wandb offline runs: written locally, no network, with the params and the logged metrics."""

import os

import pytest

pytestmark = pytest.mark.integration


def test_offline_run_holds_params_and_metrics(tiny_params, tmp_path, monkeypatch):
    from tasks import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SVRL_RUN_GROUP", "pipeline-test1234")
    params = tiny_params.model_copy(update={"tracking": tiny_params.tracking.model_copy(update={"wandb_mode": "offline"})})
    with tracking.tracking_run("eval_rl", params) as run:
        run.log({"eval_rl/success_rate": 0.625})
    runs = list((tmp_path / tracking.WANDB_DIR / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for expected in (b"eval_rl/success_rate", b"0.625", b"pipeline-test1234", b"max_idle_iterations"):
        assert expected in record, expected
    assert not os.environ.get("WANDB_API_KEY")
