"""GRPO on one rank of a data-parallel run, for tests/test_ranks.py: under
`torchrun --nproc_per_node N tests/grpo_ranks.py PARAMS.json OUT_DIR`, or in-process through `run`.

Trains a fresh policy on the toy task with in-process envs (no Prefect, no Dask), recording each
update's kept batch; rank 0 writes the history, the batches and the weights to OUT_DIR."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from svrl_core.algos import grpo_trainer
from svrl_core.algos.grpo import group_advantages
from svrl_core.config import parse_params
from svrl_core.data import load_dataset
from svrl_core.policies import new_policy
from svrl_core.rollout import LocalEnvPool
from svrl_core.training.ranks import Ranks


def run(raw_params: dict, out: Path, engine_overrides: dict | None = None) -> None:
    params = parse_params(raw_params)
    policy = new_policy(params.policy, load_dataset(params.paths.demos), seed=0)
    batches = []
    update = grpo_trainer.grpo_update

    def recording_update(policy, trainer, batch, cfg, rng, ranks):
        advantages = group_advantages(batch.rewards, cfg.group_size)
        batches.append({"rewards": batch.rewards.tolist(), "advantages": advantages.tolist(),
                        "tokens": batch.tokens.tolist(), "held": sorted(batch.held)})
        return update(policy, trainer, batch, cfg, rng, ranks)

    grpo_trainer.grpo_update = recording_update
    try:
        history = grpo_trainer.train_grpo(policy, LocalEnvPool(params.env, params.compute.envs_per_worker),
                                          list(params.env.tasks), params.rl, state_dir=params.paths.rl_state,
                                          fingerprint="grpo-ranks", engine_overrides=engine_overrides)
    finally:
        grpo_trainer.grpo_update = update
    ranks = Ranks.of_process_group()
    held = ranks.gather([b["held"] for b in batches])  # per rank, per update
    if ranks.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        for b, batch in enumerate(batches):
            batch["held"] = [rank_held[b] for rank_held in held]
        (out / "run.json").write_text(json.dumps({"history": history, "batches": batches, "ranks": ranks.world}))
        save_file({k: v.contiguous() for k, v in policy.model.state_dict().items()}, str(out / "weights.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    config = json.loads(Path(sys.argv[1]).read_text())
    run(config["params"], Path(sys.argv[2]), config.get("engine_overrides"))
