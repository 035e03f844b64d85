import json

import numpy as np
import pytest
import torch

from svrl_core.envs.toy import ToyReachEnv
from svrl_core.policies import CheckpointError, VLAPolicy
from svrl_core.policies.policy import sample_categorical, token_log_probs


def observations(params, n=6):
    env = ToyReachEnv(params.env)
    return [env.reset(params.env.tasks[i % 2], i) for i in range(n)]


def test_shapes_and_bins_to_actions(tiny_policy, tiny_params):
    inputs = tiny_policy.prepare(observations(tiny_params))
    bins, log_probs = tiny_policy.sample(inputs, 1.6, torch.Generator().manual_seed(0))
    assert bins.shape == (6, 4, 2) and log_probs.shape == (6, 4, 2)
    assert bins.min() >= 0 and bins.max() < 32
    actions = tiny_policy.bins_to_actions(bins)
    assert actions.shape == (6, 4, 2) and actions.dtype == np.float32
    assert tiny_policy.greedy(inputs).shape == (6, 4, 2)


def test_mean_decoding_follows_the_bulk_where_argmax_jumps_to_an_edge_spike():
    from svrl_core.export.runtime import decode_bins

    probs = torch.zeros(2, 256)
    probs[:, 96:105] = 0.75 / 9  # the bulk: a small action around bin 100
    probs[:, 255] = 0.25  # the edge bin, where every clipped full-scale label lands
    probs[1] = probs[1].flip(0)  # the same, mirrored: bulk around bin 155, spike at bin 0
    logits = probs.log()
    assert decode_bins(logits, "argmax").tolist() == [255, 0]
    assert decode_bins(logits, "mean").tolist() == [139, 116]  # 0.75 * 100 + 0.25 * 255; 0.75 * 155 + 0.25 * 0
    with pytest.raises(ValueError, match=r"unknown decoding 'mode': use one of \['argmax', 'mean'\]"):
        decode_bins(logits, "mode")


def test_log_probs_match_the_samplers_own(tiny_policy_any_trunk, tiny_params):
    tiny_policy = tiny_policy_any_trunk
    inputs = tiny_policy.prepare(observations(tiny_params))
    for temperature in (1.0, 1.6):
        bins, sampled = tiny_policy.sample(inputs, temperature, torch.Generator().manual_seed(1))
        recomputed, entropy = tiny_policy.log_probs(inputs, bins, temperature)
        assert torch.allclose(sampled, recomputed, atol=1e-6)
        assert recomputed.requires_grad and (entropy > 0).all()
    with pytest.raises(ValueError, match="bins for"):  # torch.gather alone would read the first tokens' logits
        token_log_probs(tiny_policy.model(inputs), bins.flatten(1)[:, :2], 1.0)


def test_sample_categorical_follows_the_probabilities():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2], [0.9, 0.0, 0.0, 0.0, 0.1]])  # (2, 5)
    draws = sample_categorical(probs.expand(20_000, 2, 5), torch.Generator().manual_seed(0))  # (20000, 2)
    for row in range(2):
        frequency = torch.bincount(draws[:, row], minlength=5) / 20_000
        assert torch.allclose(frequency, probs[row], atol=0.015), frequency
        assert (frequency[probs[row] == 0] == 0).all()  # never a bin of zero probability
    again = sample_categorical(probs.expand(20_000, 2, 5), torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_temperature_spreads_samples(tiny_policy, tiny_params):
    inputs = tiny_policy.prepare(observations(tiny_params, 1) * 64)
    low = tiny_policy.sample(inputs, 0.05, torch.Generator().manual_seed(0))[0]
    high = tiny_policy.sample(inputs, 5.0, torch.Generator().manual_seed(0))[0]
    assert len(torch.unique(low[:, 0, 0])) < len(torch.unique(high[:, 0, 0]))


def test_save_load_is_exact(tiny_policy_any_trunk, tiny_params, tmp_path):
    tiny_policy = tiny_policy_any_trunk
    tiny_policy.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "norm_stats.json", "tokenizer.json"]
    loaded = VLAPolicy.load(tmp_path / "ckpt")
    inputs = tiny_policy.prepare(observations(tiny_params))
    assert torch.equal(tiny_policy.model(inputs), loaded.model(inputs))
    assert np.array_equal(tiny_policy.bins_to_actions(np.full((1, 4, 2), 7)), loaded.bins_to_actions(np.full((1, 4, 2), 7)))


def test_checkpoint_from_another_architecture(tiny_policy, tmp_path):
    tiny_policy.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt/config.json").read_text())
    (tmp_path / "ckpt/config.json").write_text(json.dumps({**config, "architecture": "openvla-oft"}))
    with pytest.raises(CheckpointError, match="architecture 'openvla-oft'"):
        VLAPolicy.load(tmp_path / "ckpt")
    (tmp_path / "ckpt/config.json").write_text(json.dumps({**config, "hidden_dim": 64}))
    with pytest.raises(CheckpointError, match="weights do not match"):
        VLAPolicy.load(tmp_path / "ckpt")


def test_missing_or_corrupt_checkpoint(tiny_policy, tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        VLAPolicy.load(tmp_path)
    tiny_policy.save(tmp_path / "ckpt")
    (tmp_path / "ckpt/tokenizer.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="corrupt"):
        VLAPolicy.load(tmp_path / "ckpt")


@pytest.mark.parametrize("damage", ["truncated weights", "corrupt tokenizer", "corrupt norm stats",
                                    "norm stats without a key"])
def test_damaged_checkpoint_names_the_file_and_the_fix(tiny_policy, tmp_path, damage):
    ckpt = tmp_path / "ckpt"
    tiny_policy.save(ckpt)
    if damage == "truncated weights":
        (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:1000])
        expected = "model.safetensors: unreadable or truncated"
    elif damage == "corrupt tokenizer":
        (ckpt / "tokenizer.json").write_text('{"action": ')
        expected = "tokenizer.json: corrupt JSON"
    elif damage == "corrupt norm stats":
        (ckpt / "norm_stats.json").write_bytes(b"\xff\xfe garbage")
        expected = "norm_stats.json: corrupt JSON"
    else:
        (ckpt / "norm_stats.json").write_text(json.dumps({"state_mean": [0.0]}))
        expected = "norm_stats.json lacks or garbles 'state_std'"
    with pytest.raises(CheckpointError) as err:
        VLAPolicy.load(ckpt)
    assert expected in str(err.value) and f"dvc checkout {ckpt}" in str(err.value)


def test_transformer_trunk_attends_to_the_instruction_per_row(tiny_params, tiny_dataset):
    from svrl_core.policies import new_policy

    cfg = tiny_params.policy.model_copy(update={"trunk": "oft-transformer", "transformer_width": 16})
    policy = new_policy(cfg, tiny_dataset, seed=0)
    obs = observations(tiny_params, 1)[0]
    other = type(obs)(obs.images, obs.proprio, "go to the blue disc, please, quickly")
    alone = policy.model(policy.prepare([obs]))
    assert not torch.allclose(alone, policy.model(policy.prepare([other])))
    # rows with other instruction lengths in the batch change nothing: masks are per row
    assert torch.allclose(alone, policy.model(policy.prepare([obs, other]))[:1], atol=1e-5)


def test_keypoint_gain_scales_what_the_trunk_reads_and_is_saved(tiny_params, tiny_dataset, tmp_path):
    from svrl_core.policies import new_policy

    cfg = tiny_params.policy.model_copy(update={"keypoint_gain": 8.0})
    policy = new_policy(cfg, tiny_dataset, seed=0)
    seen = []
    policy.model.trunk.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    inputs = policy.prepare(observations(tiny_params, 3))
    policy.model(inputs)
    text = policy.model.instruction(inputs.instruction_ids)
    raw = policy.model.vision(inputs.images, text).unflatten(1, (-1, 2))  # (B, n_keypoints, 2) in [-1, 1]
    assert torch.allclose(seen[0], 8.0 * raw)
    policy.save(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["keypoint_gain"] == 8.0
    assert torch.equal(VLAPolicy.load(tmp_path / "ckpt").model(inputs), policy.model(inputs))


def test_checkpoints_from_before_keypoint_gain_load_with_gain_one(tiny_policy, tmp_path):
    tiny_policy.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["keypoint_gain"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    assert VLAPolicy.load(tmp_path / "ckpt").model.cfg.keypoint_gain == 1.0
