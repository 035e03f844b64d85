"""The deployable bundle, checked against the in-process policy."""

from __future__ import annotations

import numpy as np
import torch
from prefect import task

from svrl_core.config import Params
from svrl_core.envs import make_env
from svrl_core.export import BundlePolicy, export_bundle
from svrl_core.io import local_directory
from svrl_core.policies import VLAPolicy
from tasks.provenance import collect_provenance


OBSERVATIONS_PER_TASK = 8


@task
def export_policy(params: Params) -> dict:
    """Export the RL policy and check the bundle reproduces in-process greedy actions exactly."""
    policy = VLAPolicy.load(params.paths.rl_model)
    policy.decoding = params.eval.decoding
    env = make_env(params.env)
    try:
        export_bundle(policy, params.paths.export, params.export.name, collect_provenance(params),
                      list(env.action_names))
        observations = [env.reset(task_name, params.eval.seed_start + k)
                        for task_name in params.env.tasks for k in range(OBSERVATIONS_PER_TASK)]
    finally:
        env.close()
    inputs = policy.prepare(observations)
    expected = policy.bins_to_actions(policy.greedy(inputs), np.stack([o.proprio for o in observations]))
    with local_directory(params.paths.export) as local:
        bundle = BundlePolicy(local)
        size = sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
    got = bundle.act_batch(np.stack([o.images[policy.camera] for o in observations]),
                           np.stack([o.proprio for o in observations]), [o.instruction for o in observations])
    max_diff = float(np.abs(got - expected).max())
    if max_diff != 0.0:
        raise RuntimeError(f"export: the bundle's actions differ from the policy's by up to {max_diff}")
    return {"checked_observations": len(observations), "max_action_difference": max_diff, "bundle_bytes": size,
            "decoding": policy.decoding, "torch": torch.__version__}
