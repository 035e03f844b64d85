"""OpenVLA-OFT family on a tiny configuration: decoding, persistence, official checkpoints, export."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from svrl_core.algos.grpo_batch import PromptSampler, collect_mixed_groups
from svrl_core.algos.grpo_trainer import grpo_update
from svrl_core.algos.sft import train_sft
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.export import BundlePolicy, export_bundle
from svrl_core.policies import CheckpointError, VLAPolicy, new_policy
from svrl_core.policies.openvla_oft import vision
from svrl_core.policies.openvla_oft.config import oft_7b
from svrl_core.policies.openvla_oft.model import OpenVLAOFT
from svrl_core.policies.openvla_oft.policy import OpenVLAOFTPolicy, load_oft_checkpoint
from svrl_core.policies.tokenizer import ActionTokenizer
from svrl_core.rollout import LocalEnvPool, RolloutStats
from svrl_core.training import DeepSpeedTrainer


@pytest.fixture()
def oft_params(tiny_params):
    return tiny_params.model_copy(update={"policy": tiny_params.policy.model_copy(
        update={"family": "openvla-oft", "oft": tiny_params.policy.oft.model_copy(update={"use_proprio": True})})})


@pytest.fixture()
def oft_policy(oft_params, tiny_dataset) -> OpenVLAOFTPolicy:
    return new_policy(oft_params.policy, tiny_dataset, seed=0)


def observations(params, instructions_vary=True, n=5):
    env = ToyReachEnv(params.env)
    tasks = params.env.tasks if instructions_vary else params.env.tasks[:1]
    return [env.reset(tasks[i % len(tasks)], i) for i in range(n)]


def test_openvla_binning_matches_a_hand_computed_table():
    # edges linspace(-1, 1, 256); bin = digitize - 1 (token 31999 - bin); centre (e[b] + e[b+1]) / 2, top bin clipped
    tokenizer = ActionTokenizer(np.array([0.0, -1.0]), np.array([2.0, 1.0]), np.array([True, False]), 256, "openvla")
    normalized = np.array([-1.0, -0.999, 0.0, 0.5, 0.999, 1.0])
    expected_bins = [0, 0, 127, 191, 254, 255]
    expected_centres = [-1 + 1 / 255, -1 + 1 / 255, 0.0, -1 + 383 / 255, 1 - 1 / 255, 1 - 1 / 255]
    actions = np.stack([normalized + 1.0, normalized], axis=1)  # dim 0 scaled by q01 = 0, q99 = 2; dim 1 as it is
    bins = tokenizer.encode(actions)
    assert bins[:, 0].tolist() == expected_bins and bins[:, 1].tolist() == expected_bins
    decoded = tokenizer.decode(bins)
    assert np.allclose(decoded[:, 1], expected_centres, atol=1e-6)
    assert np.allclose(decoded[:, 0], np.array(expected_centres) + 1.0, atol=1e-6)


def test_shapes_sampling_and_log_probs(oft_policy, oft_params):
    inputs = oft_policy.prepare(observations(oft_params))
    bins, sampled = oft_policy.sample(inputs, 1.6, torch.Generator().manual_seed(0))
    assert bins.shape == (5, 4, 2) and 0 <= bins.min() and bins.max() < 32
    recomputed, entropy = oft_policy.log_probs(inputs, bins, 1.6)
    assert torch.allclose(sampled, recomputed, atol=1e-5) and recomputed.requires_grad and (entropy > 0).all()
    assert oft_policy.bins_to_actions(oft_policy.greedy(inputs)).shape == (5, 4, 2)


def reference_action_logits(model: OpenVLAOFT, inputs, row: int) -> torch.Tensor:
    """One unpadded sequence through the LM with eager attention and an all-ones mask; every
    placeholder scored from the full-vocabulary logits of the position before it -> (K * D, n_bins)."""
    cfg = model.cfg
    ids = inputs.instruction_ids[row]
    ids = torch.cat([ids[:1], ids[1:][ids[1:] != cfg.pad_token_id]])  # padding dropped
    text = model.language_model.get_input_embeddings()(ids).clone()
    n_act = cfg.n_action_tokens
    text[-n_act - 1:-1] = 0.0
    prefix = [model.image_tokens(inputs.images[row:row + 1])[0]]
    if model.proprio_projector is not None:
        prefix.append(model.proprio_projector(inputs.states[row:row + 1]))
    embeds = torch.cat([text[:1], *prefix, text[1:]])[None]  # (1, S, E)
    model.language_model.config._attn_implementation = "eager"
    try:
        full_mask = torch.ones(1, 1, embeds.shape[1], embeds.shape[1], dtype=torch.bool)
        logits = model.language_model(inputs_embeds=embeds, attention_mask=full_mask).logits[0]  # (S, V)
    finally:
        model.language_model.config._attn_implementation = "sdpa"
    first_action = embeds.shape[1] - n_act - 1
    token_of_bin = cfg.text_vocab_size - 1 - torch.arange(cfg.n_bins)  # bin b is token id vocab - 1 - b
    return torch.stack([logits[p - 1, token_of_bin] for p in range(first_action, first_action + n_act)])


def test_parallel_decoding_equals_scoring_each_placeholder_with_the_full_mask(oft_policy, oft_params):
    inputs = oft_policy.prepare(observations(oft_params, n=3))  # different instruction lengths: padded rows
    assert len({int((row != oft_policy.cfg.pad_token_id).sum()) for row in inputs.instruction_ids}) > 1
    with torch.no_grad():
        batched = oft_policy.model(inputs)  # (3, K * D, n_bins)
        for row in range(3):
            assert torch.allclose(batched[row], reference_action_logits(oft_policy.model, inputs, row), atol=1e-5)


def test_attention_is_bidirectional(oft_policy, oft_params):
    """A later token (the stop token's embedding) changes the logits of the first action token."""
    inputs = oft_policy.prepare(observations(oft_params, n=1))
    other = inputs.select(torch.tensor([0]))
    other.instruction_ids = other.instruction_ids.clone()
    other.instruction_ids[0, -1] = 5
    with torch.no_grad():
        assert not torch.allclose(oft_policy.model(inputs)[0, 0], oft_policy.model(other)[0, 0])


def test_save_load_is_exact_in_openvla_layout(oft_policy, oft_params, tmp_path):
    oft_policy.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "dataset_statistics.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((tmp_path / "ckpt/config.json").read_text())
    assert config["model_type"] == "openvla" and config["n_action_bins"] == 32 and "text_config" in config
    loaded = VLAPolicy.load(tmp_path / "ckpt")
    assert isinstance(loaded, OpenVLAOFTPolicy)
    inputs = oft_policy.prepare(observations(oft_params))
    assert torch.equal(loaded.prepare(observations(oft_params)).instruction_ids, inputs.instruction_ids)
    with torch.no_grad():
        assert torch.equal(oft_policy.model(inputs), loaded.model(inputs))
    bins = np.arange(8).reshape(1, 4, 2)
    assert np.array_equal(oft_policy.bins_to_actions(bins), loaded.bins_to_actions(bins))


def official_checkpoint(policy: OpenVLAOFTPolicy, directory, monkeypatch):
    """`policy` rewritten as OpenVLA-OFT releases it: official config keys (timm ids, no svrl section),
    two safetensors shards with an index, timm's `gamma` names, the weights svrl does not build,
    two datasets' statistics, and OFT's proprio projector in its own DDP-prefixed .pt file."""
    towers = policy.cfg.towers
    monkeypatch.setitem(vision.KNOWN_TOWERS, "vit_large_patch14_reg4_dinov2.lvd142m", towers[0])
    monkeypatch.setitem(vision.KNOWN_TOWERS, "vit_so400m_patch14_siglip_224", towers[1])
    policy.save(directory)
    config = json.loads((directory / "config.json").read_text())
    del config["svrl"]
    config["text_config"]["torch_dtype"] = "bfloat16"
    config.update({"arch_specifier": "no-align+fused-gelu-mlp", "llm_max_length": 2048,
                   "timm_override_act_layers": [None, None], "output_projector_states": False})
    config["timm_model_ids"] = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
    stats = json.loads((directory / "dataset_statistics.json").read_text())["svrl"]
    config["norm_stats"] = {"libero_object_no_noops": stats, "other_robot": stats}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "dataset_statistics.json").write_text(json.dumps(config["norm_stats"]))
    state = {k.replace("scale_factor", "gamma"): v for k, v in policy.model.state_dict().items()}
    proprio = {"module." + k.removeprefix("proprio_projector."): state.pop(k)
               for k in list(state) if k.startswith("proprio_projector.")}
    torch.save(proprio, directory / "proprio_projector--150000_checkpoint.pt")
    dim = towers[1].embed_dim
    state["vision_backbone.fused_featurizer.attn_pool.latent"] = torch.zeros(1, 1, dim)
    state["vision_backbone.fused_featurizer.norm.weight"] = torch.ones(dim)
    last = towers[0].depth - 1
    state[f"vision_backbone.featurizer.blocks.{last}.mlp.fc1.weight"] = torch.zeros(towers[0].mlp_hidden, towers[0].embed_dim)
    (directory / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, directory / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return config


def test_an_official_checkpoint_directory_loads(oft_policy, oft_params, tmp_path, monkeypatch):
    official_checkpoint(oft_policy, tmp_path / "openvla", monkeypatch)
    shape = dict(chunk_size=4, action_dim=2, cameras=oft_policy.cameras, proprio_dim=2,
                 max_prompt_tokens=oft_policy.cfg.max_prompt_tokens, input_image_shape=(32, 32))
    with pytest.raises(CheckpointError, match="set policy.oft.unnorm_key"):
        load_oft_checkpoint(tmp_path / "openvla", "openvla", None, **shape)
    loaded = load_oft_checkpoint(tmp_path / "openvla", "openvla", "libero_object_no_noops", **shape)
    inputs = oft_policy.prepare(observations(oft_params))
    with torch.no_grad():
        assert torch.equal(oft_policy.model(inputs), loaded.model(inputs))
    assert loaded.actions.binning == "openvla"
    with pytest.raises(CheckpointError, match="does not record the action chunk"):
        load_oft_checkpoint(tmp_path / "openvla", "openvla", "libero_object_no_noops")


def test_a_wrong_checkpoint_is_refused_with_the_key_report(oft_policy, tiny_policy, oft_params, tmp_path, monkeypatch):
    official_checkpoint(oft_policy, tmp_path / "openvla", monkeypatch)
    shape = dict(chunk_size=4, action_dim=2, proprio_dim=2, max_prompt_tokens=oft_policy.cfg.max_prompt_tokens)
    index_path = tmp_path / "openvla/model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    renamed = {k.replace("projector.fc3", "projector.linear3"): v for k, v in index["weight_map"].items()}
    for shard in set(index["weight_map"].values()):  # rename inside the shards too
        tensors = load_file(tmp_path / "openvla" / shard)
        save_file({k.replace("projector.fc3", "projector.linear3"): v for k, v in tensors.items()},
                  tmp_path / "openvla" / shard)
    index_path.write_text(json.dumps({**index, "weight_map": renamed}))
    with pytest.raises(CheckpointError, match=r"missing 2 \['projector.fc3.bias', 'projector.fc3.weight'\], "
                                              r"unexpected 2 \['projector.linear3.bias'"):
        load_oft_checkpoint(tmp_path / "openvla", "openvla", "other_robot", **shape)
    tiny_policy.save(tmp_path / "tiny")
    with pytest.raises(CheckpointError, match="model_type None, not 'openvla'"):
        load_oft_checkpoint(tmp_path / "tiny", "tiny", **shape)
    with pytest.raises(CheckpointError, match="missing \\['config.json'\\]"):
        VLAPolicy.load(tmp_path / "nothing")
    oft_policy.save(tmp_path / "no_tokenizer")
    (tmp_path / "no_tokenizer/tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        VLAPolicy.load(tmp_path / "no_tokenizer")


def test_the_7b_layout_has_openvlas_size():
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = OpenVLAOFT(oft_7b(chunk_size=8, action_dim=7))
    n_params = sum(p.numel() for p in model.parameters())
    assert model.vision_backbone.embed_dim == 2176 and model.projector.fc1.out_features == 8704
    assert model.language_model.lm_head.weight.shape == (32064, 4096)
    assert model.cfg.sequence_length == 48 + 8 * 7 + 1  # padded prompt (BOS included), K x D placeholders, stop
    # OpenVLA-7B's 7,541,237,184 minus what svrl does not build: DINOv2's last block (12,598,272), SigLIP's
    # last block (15,239,504), SigLIP's attention-pooling head (15,238,352) and both final norms (4,352)
    assert n_params == 7_541_237_184 - 12_598_272 - 15_239_504 - 15_238_352 - 4_352


def test_export_bundle_acts_like_the_policy(oft_policy, oft_params, tmp_path):
    export_bundle(oft_policy, tmp_path / "bundle", "oft-test")
    assert (tmp_path / "bundle/tokenizer.json").is_file()
    bundle = BundlePolicy(tmp_path / "bundle")
    obs = observations(oft_params)
    got = bundle.act_batch(np.stack([o.images[oft_policy.camera] for o in obs]), np.stack([o.proprio for o in obs]),
                           [o.instruction for o in obs])
    expected = oft_policy.bins_to_actions(oft_policy.greedy(oft_policy.prepare(obs)))
    assert np.array_equal(got, expected)
    with pytest.raises(ValueError, match="tokens, the bundle takes"):  # what the server answers 422 before batching
        bundle.encode_instructions(["pick up the bowl " * 20])
    shutil.rmtree(tmp_path / "bundle")


def test_sft_lowers_the_loss_through_deepspeed(oft_params, tiny_dataset):
    """The real SFT entry point on the tiny OFT: measured final/first logged loss 0.77; bound 0.9."""
    policy = new_policy(oft_params.policy, tiny_dataset, seed=0)
    cfg = oft_params.sft.model_copy(update={"steps": 80, "batch_size": 16, "lr": 3e-3, "log_every": 10})
    history = train_sft(policy, tiny_dataset, tiny_dataset.tasks, cfg)
    assert history[-1]["loss"] < 0.9 * history[0]["loss"], [round(row["loss"], 3) for row in history]


def test_a_grpo_update_trains_the_oft_policy(oft_policy, oft_params):
    pool = LocalEnvPool(oft_params.env, 8)
    cfg = oft_params.rl.model_copy(update={"prompts_per_batch": 2, "group_size": 4, "dynamic_sampling": False,
                                           "mini_batch_trajectories": 4, "seed": 1})
    kept, _ = collect_mixed_groups(oft_policy, pool, PromptSampler(["red", "blue"], 0), cfg, RolloutStats())
    assert 0 < kept.rewards.sum() < len(kept), "with this seed a group has mixed rewards (GRPO moves nothing else)"
    before = [p.detach().clone() for p in oft_policy.model.parameters()]
    trainer = DeepSpeedTrainer(oft_policy.model, 1e-3, 0.0, 1.0, cfg.mini_batch_trajectories)
    metrics = grpo_update(oft_policy, trainer, kept, cfg, np.random.default_rng(0))
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, oft_policy.model.parameters()))


def test_lora_trains_adapters_only_and_saves_merged_weights(oft_params, tiny_dataset, tmp_path):
    oft = oft_params.policy.oft.model_copy(update={"lora_rank": 4, "lora_alpha": 8.0})
    policy = new_policy(oft_params.policy.model_copy(update={"oft": oft}), tiny_dataset, seed=0)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert any("language_model" in n for n in trainable) and any("featurizer" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in policy.model.named_parameters() if not p.requires_grad}
    cfg = oft_params.sft.model_copy(update={"steps": 10, "batch_size": 16, "lr": 1e-2, "log_every": 5})
    train_sft(policy, tiny_dataset, tiny_dataset.tasks, cfg)
    assert all(torch.equal(p, frozen[n]) for n, p in policy.model.named_parameters() if n in frozen)
    inputs = policy.prepare(observations(oft_params))
    policy.save(tmp_path / "ckpt")
    merged = VLAPolicy.load(tmp_path / "ckpt")  # plain weights, no adapters
    assert not any(".lora_" in n for n, _ in merged.model.named_parameters())
    with torch.no_grad():
        trained_logits = policy.model(inputs)
        assert torch.allclose(trained_logits, merged.model(inputs), atol=1e-4)
        untrained = new_policy(oft_params.policy, tiny_dataset, seed=0).model(inputs)  # same base weights
        assert not torch.allclose(trained_logits, untrained, atol=1e-3)
        again = new_policy(oft_params.policy.model_copy(update={"oft": oft}), tiny_dataset, seed=1)
        again.load_weights_of(merged)  # a resumed LoRA run: merged weights, fresh adapters
        assert torch.allclose(again.model(inputs), trained_logits, atol=1e-4)


def test_bfloat16_runs_and_its_log_probs_match_the_sampler(oft_params, tiny_dataset):
    oft = oft_params.policy.oft.model_copy(update={"dtype": "bfloat16", "gradient_checkpointing": True})
    policy = new_policy(oft_params.policy.model_copy(update={"oft": oft}), tiny_dataset, seed=0)
    assert {p.dtype for p in policy.model.parameters()} == {torch.bfloat16}
    inputs = policy.prepare(observations(oft_params))
    bins, sampled = policy.sample(inputs, 1.6, torch.Generator().manual_seed(0))
    recomputed, _ = policy.log_probs(inputs, bins, 1.6)
    assert sampled.dtype == torch.float32 and torch.allclose(sampled, recomputed, atol=1e-5)


def test_zero3_bf16_trains_the_oft_policy(oft_params, tiny_dataset):
    """infra/deepspeed/zero3_bf16.json (the multi-GPU config) on the OFT family, one CPU process."""
    overrides = json.loads((Path(__file__).parent.parent / "infra/deepspeed/zero3_bf16.json").read_text())
    policy = new_policy(oft_params.policy, tiny_dataset, seed=0)
    before = [p.detach().clone() for p in policy.model.parameters()]
    cfg = oft_params.sft.model_copy(update={"steps": 10, "batch_size": 16, "lr": 3e-3, "log_every": 5})
    history = train_sft(policy, tiny_dataset, tiny_dataset.tasks, cfg, overrides)
    assert np.isfinite(history[-1]["loss"]) and history[-1]["loss"] < history[0]["loss"]
    assert any(not torch.equal(a, b.to(a.dtype)) for a, b in zip(before, policy.model.parameters()))


def test_two_cameras_feed_patches_of_both(oft_policy, oft_params):
    from dataclasses import replace

    cfg = replace(oft_policy.cfg, cameras=("main", "wrist"))
    torch.manual_seed(0)
    policy = replace(oft_policy, model=OpenVLAOFT(cfg).eval(), prompts=type(oft_policy.prompts)(oft_policy.prompts.tokenizer, cfg))
    obs = observations(oft_params, n=2)
    images = {"main": np.stack([o.images["main"] for o in obs])}
    states, texts = np.stack([o.proprio for o in obs]), [o.instruction for o in obs]
    with torch.no_grad():
        dark = policy.model(policy.prepare_arrays({**images, "wrist": np.zeros_like(images["main"])}, states, texts))
        bright = policy.model(policy.prepare_arrays({**images, "wrist": np.full_like(images["main"], 255)}, states, texts))
    assert policy.model.image_tokens(torch.zeros(1, 6, 32, 32, dtype=torch.uint8)).shape[1] == 2 * cfg.towers[0].n_patches
    assert not torch.allclose(dark, bright)
