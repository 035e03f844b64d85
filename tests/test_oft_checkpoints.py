"""Bringing released OpenVLA-OFT / SimpleVLA-RL checkpoints: upstream's names load, companion files are
used or skipped with a reason, a discrete-token checkpoint is adopted as it is (sft.steps 0), and one that
acts through a continuous head is fine-tuned but refused for evaluation and RL as it is."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from svrl_core.algos.sft import train_sft
from svrl_core.config import ConfigError, parse_params
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.policies import CheckpointError, VLAPolicy, new_policy
from svrl_core.policies.openvla_oft import vision
from svrl_core.policies.openvla_oft.checkpoint import ContinuousHeadError, load_matching_weights
from svrl_core.policies.openvla_oft.config import oft_7b
from svrl_core.policies.openvla_oft.model import OpenVLAOFT
from svrl_core.policies.openvla_oft.policy import demo_statistics
from svrl_core.policies.openvla_oft.prompt import byte_tokenizer
from tasks.sft import fit_sft_policy
from tests.conftest import TINY
from tests.oft_upstream import (RELEASED_7B, RELEASED_7B_PARAMETERS, RELEASED_7B_TENSORS, TINY_RELEASE,
                                TINY_TOWER_SPECS, action_head_names, parameter_count, proprio_projector_names,
                                released_names, write_release)



def test_the_released_7b_names_and_shapes_load_into_svrls_layout():
    names = released_names(RELEASED_7B)
    assert len(names) == RELEASED_7B_TENSORS and parameter_count(names) == RELEASED_7B_PARAMETERS
    companion = {f"proprio_projector.{k.removeprefix('module.')}": v
                 for k, v in proprio_projector_names(RELEASED_7B, 8).items()}
    with torch.device("meta"):
        model = OpenVLAOFT(oft_7b(chunk_size=8, action_dim=7, proprio_dim=8,
                                  cameras=("agentview", "robot0_eye_in_hand")))
        weights = {k: torch.empty(shape) for k, shape in {**names, **companion}.items()}
    load_matching_weights(model, weights, "released 7B")  # refuses, naming them, any missing or unexpected key


@pytest.fixture()
def tiny_towers(monkeypatch):
    """The released timm ids at a tiny size: the names stay, the shapes shrink."""
    for timm_id, (args, kwargs) in TINY_TOWER_SPECS.items():
        monkeypatch.setitem(vision.KNOWN_TOWERS, timm_id, vision.TowerSpec(timm_id, *args, **kwargs))


def release(tmp_path, tiny_dataset, companions: dict) -> str:
    """A tiny release at tmp_path/release, with two datasets' statistics (the demos' shapes)."""
    stats = demo_statistics(tiny_dataset, [])["svrl"]
    write_release(tmp_path / "release", {"libero_10_no_noops": stats, "bridge_orig": stats},
                  byte_tokenizer(256).to_str(), companions)
    return str(tmp_path / "release")


def oft_params(tiny_dataset_dir, checkpoint: str, **changes):
    raw = {section: dict(values) for section, values in TINY.items()}
    raw["paths"] = {"demos": str(tiny_dataset_dir)}
    raw["policy"] = {**raw["policy"], "family": "openvla-oft", "n_bins": 256,
                     "oft": {"checkpoint": checkpoint, "max_prompt_tokens": 160, **changes.pop("oft", {})}}
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_params(raw)


def test_a_discrete_token_release_is_adopted_as_it_is(tmp_path, tiny_dataset, tiny_dataset_dir, tiny_towers, caplog):
    checkpoint = release(tmp_path, tiny_dataset, {})
    caplog.set_level(logging.INFO, logger="svrl")
    params = oft_params(tiny_dataset_dir, checkpoint, oft={"unnorm_key": "libero_10"}, sft={"steps": 0})
    policy, history = fit_sft_policy(params)
    assert history == [] and list(policy.dataset_stats) == ["libero_10_no_noops"]  # as upstream resolves it
    assert "read 2 safetensors file(s); skipped lora_adapter (a LoRA adapter: the safetensors hold the merged " \
           "weights), modeling_prismatic.py (remote code, never run)" in caplog.text
    obs = [ToyReachEnv(params.env).reset("red", k) for k in range(3)]
    chunks = policy.bins_to_actions(policy.greedy(policy.prepare(obs)))
    assert chunks.shape == (3, 4, 2) and np.all(np.isfinite(chunks))
    with pytest.raises(CheckpointError, match=r"statistics for \['bridge_orig', 'libero_10_no_noops'\]: set "
                                              "policy.oft.unnorm_key"):  # which of its two datasets?
        fit_sft_policy(oft_params(tiny_dataset_dir, checkpoint, sft={"steps": 0}))
    with pytest.raises(ConfigError, match="sft.steps: 0 takes policy.oft.checkpoint"):
        parse_params({"sft": {"steps": 0}})


def test_a_continuous_head_release_fine_tunes_and_is_refused_as_it_is(tmp_path, tiny_dataset, tiny_dataset_dir,
                                                                    tiny_towers, caplog):
    checkpoint = release(tmp_path, tiny_dataset, {"proprio_projector": proprio_projector_names(TINY_RELEASE, 2),
                                                  "action_head": action_head_names(TINY_RELEASE, 2)})
    for refused in (lambda: VLAPolicy.load(checkpoint),
                    lambda: fit_sft_policy(oft_params(tiny_dataset_dir, checkpoint, oft={"unnorm_key": "libero_10"},
                                                      sft={"steps": 0}))):
        with pytest.raises(ContinuousHeadError, match=r"continuous action head \(action_head--150000_checkpoint.pt"
                                                      r".*Fine-tune it first \(sft.steps > 0"):
            refused()
    caplog.set_level(logging.INFO, logger="svrl")
    params = oft_params(tiny_dataset_dir, checkpoint, oft={"use_proprio": True, "unnorm_key": "libero_10"},
                        sft={"steps": 2, "batch_size": 4})
    policy = new_policy(params.policy, tiny_dataset, seed=0)  # two datasets' statistics: fine-tuning needs none
    assert list(policy.dataset_stats) == ["svrl"]  # it acts with the demonstrations' own
    assert "read 2 safetensors file(s), proprio_projector--150000_checkpoint.pt; skipped " \
           "action_head--150000_checkpoint.pt (a continuous action head: svrl decodes action tokens)" in caplog.text
    assert "unnorm_key 'libero_10' applies to a checkpoint adopted as it is" in caplog.text
    assert len(train_sft(policy, tiny_dataset, tiny_dataset.tasks, params.sft)) == 2
    caplog.clear()
    new_policy(oft_params(tiny_dataset_dir, checkpoint).policy, tiny_dataset, seed=0)
    assert "proprio_projector--150000_checkpoint.pt (policy.oft.use_proprio is false)" in caplog.text
