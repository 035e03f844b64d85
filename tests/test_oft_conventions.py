"""policy.oft.conventions: upstream LIBERO checkpoints' image and gripper rules, end to end."""

import io
import json
import typing

import numpy as np
import pytest
import torch
from PIL import Image

from svrl_core.config import ConfigError, OftPolicyConfig, parse_params
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.export import BundleError, BundlePolicy, export_bundle, runtime
from svrl_core.export.bundle import write_manifest
from svrl_core.policies import VLAPolicy, load_policy, new_policy
from svrl_core.policies.openvla_oft.config import oft_tiny
from svrl_core.policies.openvla_oft.conventions import (PRESETS, OpenIsOneTokenizer, check_policy_config,
                                                        jpeg_lanczos3_resize, jpeg_round_trip, lanczos3_resize,
                                                        model_to_env_gripper, preset)
from svrl_core.policies.openvla_oft.model import OpenVLAOFT
from svrl_core.policies.openvla_oft.policy import OpenVLAOFTPolicy, policy_from_stats
from svrl_core.policies.openvla_oft.prompt import PromptEncoder, byte_tokenizer
from svrl_core.policies.tokenizer import ActionTokenizer

SOUP = "pick_up_the_alphabet_soup_and_place_it_in_the_basket"


def oft_policy_params(params, conventions: str, **oft):
    """The tiny params as an OpenVLA-OFT policy under `conventions`; the toy's last dim plays the gripper."""
    return params.policy.model_copy(update={
        "family": "openvla-oft", "unnormalized_action_dims": [1],
        "oft": params.policy.oft.model_copy(update={"conventions": conventions, **oft})})


def toy_observations(params, n=4):
    env = ToyReachEnv(params.env)
    return [env.reset(params.env.tasks[i % len(params.env.tasks)], i) for i in range(n)]


def libero_policy(conventions: str, image_side: int) -> OpenVLAOFTPolicy:
    """A tiny 7-D OFT policy on LIBERO's agentview, statistics as OpenVLA's LIBERO ones (gripper unnormalized)."""
    tokenizer = byte_tokenizer(256)
    cfg = oft_tiny(chunk_size=2, action_dim=7, text_vocab_size=tokenizer.get_vocab_size(), image_size=32,
                   space_token_id=tokenizer.token_to_id("\u2581"), cameras=("agentview",), max_prompt_tokens=160,
                   center_crop=0.9, input_image_shape=(image_side, image_side), conventions=conventions)
    stats = {"libero": {"action": {"q01": [-0.9] * 6 + [0.0], "q99": [0.9] * 6 + [1.0], "mask": [True] * 6 + [False]}}}
    torch.manual_seed(0)
    return policy_from_stats(OpenVLAOFT(cfg).eval(), PromptEncoder(tokenizer, cfg), stats, "libero")


def tf_lanczos3_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 resampling matrix of tf.image.resize(method="lanczos3", antialias=True), written
    from its definition (scale_and_translate): half-pixel centres, the kernel widened by the downsampling
    factor, taps clipped to the image and the weights normalized."""
    scale, radius = n_out / n_in, 3.0
    widen = max(1.0 / scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for x in range(n_out):
        centre = (x + 0.5) / scale
        first = max(int(np.ceil(centre - radius * widen - 0.5)), 0)
        last = min(int(np.floor(centre + radius * widen - 0.5)), n_in - 1)
        taps = np.abs((np.arange(first, last + 1) + 0.5 - centre) / widen)
        safe = np.maximum(taps, 1e-12)
        kernel = np.where(taps < 1e-3, 1.0, np.where(taps > radius, 0.0, radius * np.sin(np.pi * safe) *
                                                     np.sin(np.pi * safe / radius) / (np.pi * safe) ** 2))
        weights[x, first:last + 1] = kernel / kernel.sum()
    return weights


def jpeg95(image: np.ndarray) -> np.ndarray:
    """tf.image.encode_jpeg (quality 95) + decode_image, with Pillow's libjpeg-turbo."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=95)
    return np.asarray(Image.open(buffer).convert("RGB"))


def tf_resize_224(image: np.ndarray) -> np.ndarray:
    """Upstream's resize_image_for_policy after the JPEG round trip: lanczos3 to 224, round, clip, uint8."""
    rows, cols = tf_lanczos3_weights(image.shape[0], 224), tf_lanczos3_weights(image.shape[1], 224)
    resized = np.einsum("yi,ijc->yjc", rows, image.astype(np.float64))  # (224, W, 3): down the columns first
    resized = np.einsum("yjc,xj->yxc", resized, cols)  # (224, 224, 3)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def fed_image(policy: OpenVLAOFTPolicy, frame: np.ndarray) -> np.ndarray:
    """The (H, W, 3) uint8 image `prepare_arrays` gives the network for one upright env frame."""
    inputs = policy.prepare_arrays({"agentview": frame[None]}, np.zeros((1, 0)), ["pick up the soup"])
    return inputs.images[0].permute(1, 2, 0).numpy()


@pytest.mark.integration
def test_a_libero_frame_reaches_the_model_as_upstream_feeds_it():
    """LIBERO's stock OffScreenRenderEnv at 256 px (robosuite's raw, bottom-up frame) turned as upstream does
    (raw[::-1, ::-1], JPEG 95, lanczos3 to 224) against svrl's LiberoEnv (stock meshes, MSAA) + prepare_arrays
    under simplevla-rl-libero. Measured: mean |diff| 0.018 grey levels (rendering: svrl's renderer vs
    robosuite's); with the mirror left out 21.0, with the upright frame turned 180 degrees instead 37.8."""
    from svrl_core.config import EnvConfig
    from svrl_core.envs.libero import LiberoEnv, suites
    from svrl_core.envs.libero.env import NOOP, make_control_env

    task = suites.find_task("libero_object", SOUP)
    stock = make_control_env(task, 256, ("agentview",), stock=True)
    try:
        stock.seed(0)
        stock.reset()
        stock.set_init_state(suites.init_state(task, 0))
        for _ in range(suites.SETTLE_STEPS):
            raw, *_ = stock.step(NOOP)
    finally:
        stock.close()
    upstream = tf_resize_224(jpeg95(raw["agentview_image"][::-1, ::-1]))
    env = LiberoEnv(EnvConfig(family="libero", suite="libero_object", tasks=[SOUP], image_size=256, max_steps="oft",
                              render_mesh_faces=0, msaa=True))
    try:
        frame = env.reset(SOUP, 0).images["agentview"]
    finally:
        env.close()
    policy = libero_policy("simplevla-rl-libero", 256)

    def off(fed: np.ndarray) -> float:
        return float(np.abs(fed.astype(float) - upstream).mean())

    ours = fed_image(policy, frame)
    assert ours.shape == upstream.shape == (224, 224, 3)
    unmirrored = off(fed_image(policy, frame[:, ::-1]))  # the policy mirrors it back: upright as it is
    turned = off(fed_image(policy, frame[::-1]))  # the policy mirrors it: upright turned by 180 degrees
    assert off(ours) < 0.5 < 10 < unmirrored < turned, (off(ours), unmirrored, turned)
    assert fed_image(libero_policy("svrl", 256), frame).shape == (256, 256, 3)  # svrl: the frame as it is


def test_the_resize_matches_tensorflows_lanczos3_within_one_level():
    """lanczos3_resize (Pillow's LANCZOS on float channels) vs TensorFlow's kernel (float64 reimplementation):
    measured on a LIBERO frame, 1 value in ~150k off by 1; Pillow's own uint8 path is 0.2 levels off on
    average, up to 5 (so it is not used)."""
    rng = np.random.default_rng(0)
    scene = np.kron(rng.integers(0, 256, (16, 16, 3)), np.ones((16, 16, 1)))  # blocks with sharp edges
    scene = np.clip(scene + rng.normal(0, 12, scene.shape) + np.linspace(0, 40, 256)[:, None, None], 0, 255)
    image = jpeg95(scene.astype(np.uint8))
    assert np.array_equal(jpeg_round_trip(scene.astype(np.uint8), 95), image)
    reference = tf_resize_224(image)
    off = np.abs(lanczos3_resize(image, 224).astype(int) - reference)
    assert off.max() <= 1 and (off > 0).mean() < 1e-3, (off.max(), (off > 0).mean())
    uint8_path = np.abs(np.asarray(Image.fromarray(image).resize((224, 224), Image.LANCZOS)).astype(int) - reference)
    assert uint8_path.mean() > 10 * max(off.mean(), 1e-3), (uint8_path.mean(), off.mean())
    both = jpeg_lanczos3_resize(scene.astype(np.uint8)[None], 224, 95)
    assert np.array_equal(both[0], lanczos3_resize(image, 224))


def test_gripper_both_ways():
    decoded = np.array([[[0.1, 0.2], [0.0, 0.8], [0.0, 0.5]]], dtype=np.float32)  # (1, 3, 2): gripper last
    assert model_to_env_gripper(decoded, -1)[0, :, 1].tolist() == [1.0, -1.0, 0.0]  # close, open, hold
    assert model_to_env_gripper(decoded, -1)[0, :, 0].tolist() == decoded[0, :, 0].tolist()
    plain = ActionTokenizer(np.array([-0.9] * 6 + [0.0]), np.array([0.9] * 6 + [1.0]),
                            np.array([True] * 6 + [False]), 256, "openvla")
    policy = libero_policy("openvla-oft-libero", 256)
    assert isinstance(policy.actions, OpenIsOneTokenizer) and policy.actions.gripper_index == 6
    env_actions = np.zeros((3, 1, 7))
    env_actions[:, 0, :6] = [[0.3, -0.2, 0.1, 0.0, 0.05, -0.5]]
    env_actions[:, 0, 6] = [-1.0, 1.0, 0.0]  # LIBERO: open, close, no command
    labels = policy.actions.encode(env_actions)  # SFT's labels (algos/sft.py: policy.actions.encode)
    model_labels = env_actions.copy()
    model_labels[..., 6] = [[1.0], [0.0], [1.0]]  # 1 - clip(g, 0, 1)
    assert np.array_equal(labels, plain.encode(model_labels)) and labels[:, 0, 6].tolist() == [255, 127, 255]
    back = policy.bins_to_actions(labels)  # what rollouts and evaluation execute
    assert back[:, 0, 6].tolist() == [-1.0, 1.0, -1.0]
    assert np.array_equal(back[..., :6], plain.decode(labels)[..., :6])


def test_the_svrl_preset_changes_nothing(tiny_params, tiny_dataset):
    policy = new_policy(oft_policy_params(tiny_params, "svrl"), tiny_dataset, seed=0)
    assert type(policy.actions) is ActionTokenizer and policy.cfg.conventions == "svrl"
    obs = toy_observations(tiny_params)
    inputs = policy.prepare(obs)
    todays = torch.from_numpy(np.stack([o.images["main"] for o in obs])).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(inputs.images, todays)
    bins = np.random.default_rng(0).integers(0, 32, (4, 4, 2))
    plain = ActionTokenizer(policy.actions.low, policy.actions.high, policy.actions.normalize_mask, 32, "openvla")
    assert np.array_equal(policy.bins_to_actions(bins), plain.decode(bins))
    assert policy.bundle_preprocessing()["image_resize"] == "none"
    assert not policy.bundle_preprocessing()["image_mirror_left_right"]


def test_conventions_are_saved_and_a_different_one_is_refused(tiny_params, tiny_dataset, tmp_path):
    cfg = oft_policy_params(tiny_params, "simplevla-rl-libero")
    policy = new_policy(cfg, tiny_dataset, seed=0)
    policy.save(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt/config.json").read_text())["svrl"]["conventions"] == "simplevla-rl-libero"
    loaded = VLAPolicy.load(tmp_path / "ckpt")
    assert loaded.conventions == PRESETS["simplevla-rl-libero"] and isinstance(loaded.actions, OpenIsOneTokenizer)
    obs = toy_observations(tiny_params)
    assert torch.equal(loaded.prepare(obs).images, policy.prepare(obs).images)
    assert policy.prepare(obs).images.shape[-2:] == (224, 224)
    bins = np.random.default_rng(0).integers(0, 32, (4, 4, 2))
    assert np.array_equal(loaded.bins_to_actions(bins), policy.bins_to_actions(bins))
    assert load_policy(tmp_path / "ckpt", cfg).cfg.conventions == "simplevla-rl-libero"
    with pytest.raises(ConfigError, match="trained with 'simplevla-rl-libero', the run sets 'svrl'"):
        load_policy(tmp_path / "ckpt", oft_policy_params(tiny_params, "svrl"))


def test_the_bundle_acts_like_the_policy_under_simplevla_conventions(tiny_params, tiny_dataset, tmp_path):
    policy = new_policy(oft_policy_params(tiny_params, "simplevla-rl-libero"), tiny_dataset, seed=0)
    export_bundle(policy, tmp_path / "bundle", "svla")
    bundle = BundlePolicy(tmp_path / "bundle")
    pre, post = bundle.spec["preprocessing"], bundle.spec["postprocessing"]
    assert (pre["image_height"], pre["image_mirror_left_right"], pre["image_resize"]) == (32, True, "jpeg-lanczos3")
    assert (post["gripper_convention"], post["gripper_dim"]) == ("open_is_one", 1)
    obs = toy_observations(tiny_params, n=6)
    got = bundle.act_batch(np.stack([o.images["main"] for o in obs]), np.stack([o.proprio for o in obs]),
                           [o.instruction for o in obs])
    expected = policy.bins_to_actions(policy.greedy(policy.prepare(obs)))
    assert np.array_equal(got, expected) and set(np.unique(got[..., 1])) <= {-1.0, 0.0, 1.0}
    frames = np.stack([o.images["main"] for o in obs])
    assert np.array_equal(runtime.jpeg_lanczos3_resize(frames, 224, 95), jpeg_lanczos3_resize(frames, 224, 95))
    every_bin = np.repeat(np.arange(32)[None, :, None], 2, axis=2)  # (1, 32, 2)
    assert np.array_equal(bundle.bins_to_actions(every_bin), policy.bins_to_actions(every_bin))
    spec = json.loads((tmp_path / "bundle/bundle.json").read_text())
    spec["preprocessing"]["image_resize"] = "bicubic"
    (tmp_path / "bundle/bundle.json").write_text(json.dumps(spec))
    write_manifest(tmp_path / "bundle", "svla")
    with pytest.raises(BundleError, match="image_resize 'bicubic'"):
        BundlePolicy(tmp_path / "bundle")


def test_settings_unlike_the_release_are_named():
    params = parse_params({"policy": {"family": "openvla-oft", "unnormalized_action_dims": [6], "oft": {
        "conventions": "openvla-oft-libero", "cameras": ["agentview"], "center_crop": 0.9}}})
    found = {m.setting: m for m in check_policy_config(params.policy, action_dim=7, image_size=256)}
    assert set(found) == {"policy.oft.cameras", "policy.oft.use_proprio"}
    assert "set policy.oft.cameras: ['agentview', 'robot0_eye_in_hand']" in found["policy.oft.cameras"].text
    assert "set policy.oft.use_proprio: true" in found["policy.oft.use_proprio"].text
    svla = params.policy.model_copy(update={"unnormalized_action_dims": [], "oft": params.policy.oft.model_copy(
        update={"conventions": "simplevla-rl-libero", "use_proprio": True, "center_crop": 1.0})})
    found = {m.setting: m for m in check_policy_config(svla, action_dim=7, image_size=224)}
    assert found["policy.unnormalized_action_dims"].severity == "error"
    assert "add 6 to policy.unnormalized_action_dims" in found["policy.unnormalized_action_dims"].text
    assert "set policy.oft.use_proprio: false" in found["policy.oft.use_proprio"].text
    assert "set policy.oft.center_crop: 0.9" in found["policy.oft.center_crop"].text
    assert "set env.image_size: 256" in found["env.image_size"].text
    assert "policy.oft.cameras" not in found
    assert check_policy_config(params.policy.model_copy(update={"oft": OftPolicyConfig()}), 7) == []


def test_a_gripper_the_statistics_normalize_is_refused_and_unknown_names_fail_at_load(tiny_params, tiny_dataset):
    cfg = oft_policy_params(tiny_params, "simplevla-rl-libero").model_copy(update={"unnormalized_action_dims": []})
    with pytest.raises(ConfigError, match=r"add 1 to policy.unnormalized_action_dims"):
        new_policy(cfg, tiny_dataset, seed=0)
    with pytest.raises(ConfigError, match="policy.oft.conventions"):
        parse_params({"policy": {"oft": {"conventions": "openvla-oft"}}})
    assert set(typing.get_args(OftPolicyConfig.model_fields["conventions"].annotation)) == set(PRESETS)
    with pytest.raises(ValueError, match="unknown conventions 'x'"):
        preset("x")
