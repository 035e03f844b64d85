"""svrl core library: envs, data, policies, GRPO, evaluation, export. No Prefect, no DVC."""
