"""Prefect settings in one place; imported before Prefect by every flow."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFECT_DEFAULTS = {
    "PREFECT_HOME": str(ROOT / ".prefect"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "svrl",
    "PREFECT_UI_ENABLED": "true",
    "DO_NOT_TRACK": "1",
    "WANDB_SILENT": "true",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # svrl progress logged outside a flow (bench)
    "DASK_LOGGING__DISTRIBUTED": "warning",  # Dask workers read it at start; INFO lines drown the progress
}
LOCAL_SERVER_HOST = "127.0.0.1"
LOCAL_SERVER_PORT = int(os.environ.get("SVRL_PREFECT_PORT", "4200"))
LOCAL_API_URL = f"http://{LOCAL_SERVER_HOST}:{LOCAL_SERVER_PORT}/api"


def apply() -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


apply()
