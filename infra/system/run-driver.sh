#!/usr/bin/env bash
# The GPU driver of a cluster run (infra/slurm/driver.sbatch, infra/kubernetes/driver.yaml), from the
# repository root: the pipeline with sft and rl on every GPU of this machine (compute.ranks: gpus makes
# them relaunch under torchrun) and rollouts on the env workers of a running Dask scheduler.
#   SVRL_SCHEDULER=tcp://HOST:8786 [SVRL_CONFIG=libero_oft_7b] [SVRL_PUSH_REMOTE=s3] bash infra/system/run-driver.sh
set -euo pipefail

if [[ ! "${SVRL_SCHEDULER:-}" =~ ^tcp://[^[:space:]|]+$ ]]; then
  echo "run-driver: set SVRL_SCHEDULER=tcp://HOST:PORT, the env workers' Dask scheduler, got '${SVRL_SCHEDULER:-}'" >&2
  exit 2
fi
config=configs/${SVRL_CONFIG:-libero_oft_7b}.yaml
# params.yaml is the config, as `make run CONFIG=...` copies it, with the shared scheduler and all GPUs.
sed -e "s|^  scheduler_address: .*|  scheduler_address: $SVRL_SCHEDULER|" \
    -e "s|^  ranks: .*|  ranks: gpus|" "$config" > params.yaml
if ! grep -q "^  scheduler_address: $SVRL_SCHEDULER$" params.yaml || ! grep -q "^  ranks: gpus$" params.yaml; then
  echo "run-driver: $config has no compute.scheduler_address or compute.ranks line to set" >&2
  exit 2
fi
make setup TORCH_VARIANT=cuda
# What `make run` runs, called directly to keep its exit status: 75 when rl ended a segment on its time
# budget (rl.max_wall_s) with its state saved; running this again continues the run (driver.sbatch requeues).
.venv/bin/python -m flows.server exec .venv/bin/python -m flows.pipeline
# Outputs that DVC tracks go to a DVC remote (e.g. s3, credentials in AWS_* variables) when asked.
if [[ -n "${SVRL_PUSH_REMOTE:-}" ]]; then
  make push REMOTE="$SVRL_PUSH_REMOTE" TORCH_VARIANT=cuda
fi
