"""Checkpoint conventions: how a checkpoint family wants env images and grippers (`policy.oft.conventions`).

svrl's envs give upright frames and LIBERO's gripper command (-1 open, +1 close), and svrl's own
checkpoints are trained on exactly that (preset `svrl`, the default: nothing is changed). The
released LIBERO checkpoints of OpenVLA-OFT and SimpleVLA-RL were trained and evaluated otherwise:

- images: robosuite's raw render (bottom row first) turned by `raw[::-1, ::-1]`; since svrl's frame
  is `raw[::-1]`, that is svrl's upright frame mirrored left-right, not turned by 180 degrees. They
  are rendered at 256 px, JPEG-encoded at quality 95 and decoded, resized to 224 with lanczos3
  (antialiased), then 0.9 of the area is centre-cropped and resized back to 224. The mirror and the
  JPEG + lanczos step happen here (numpy, Pillow); the crop stays the model's own (`center_crop`).
- gripper: the model's gripper lies in [0, 1], 1 = open. Training labels are `1 - clip(g_env, 0, 1)`;
  actions go to the env as `g_env = -sign(2 g - 1)` (> 0.5 opens, < 0.5 closes, 0.5 holds).

A preset also records what those checkpoints expect of the rest of the policy (cameras, proprio,
crop, render size); `check_settings` turns a mismatch into text naming the setting to change. The
chosen preset is saved in the checkpoint (config.json `svrl.conventions`) and in an exported
bundle (bundle.json), whose runtime applies the same rules (export/runtime.py).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from svrl_core.policies.tokenizer import ActionTokenizer

if TYPE_CHECKING:
    from svrl_core.config import PolicyConfig

ImageResize = Literal["none", "jpeg-lanczos3"]
GripperConvention = Literal["env", "open_is_one"]


@dataclass(frozen=True)
class Conventions:
    """One checkpoint family's input and output conventions; `PRESETS` holds the named ones."""

    name: str
    # applied to every camera image before the network (prepare_arrays, the bundle runtime)
    mirror_left_right: bool = False  # feed upright[:, ::-1] (upstream's raw[::-1, ::-1])
    image_resize: ImageResize = "none"  # jpeg-lanczos3: JPEG round trip, then lanczos3 to resize_to
    resize_to: int = 224  # side of the image after jpeg-lanczos3
    jpeg_quality: int = 95  # TensorFlow's encode_jpeg default, which upstream uses
    # applied to actions (env -> model for SFT labels, model -> env for executed actions)
    gripper: GripperConvention = "env"
    gripper_dim: int = -1  # which action dim is the gripper (LIBERO's is the last)
    # what the released checkpoints were trained with: checked by check_settings, not applied
    center_crop: float | None = None  # policy.oft.center_crop (the model crops)
    render_size: int | None = None  # env.image_size
    cameras: tuple[str, ...] | None = None  # policy.oft.cameras, in this order
    use_proprio: bool | None = None  # policy.oft.use_proprio
    about: str = ""  # what else to know about these checkpoints

    def bundle_preprocessing(self) -> dict:
        """bundle.json preprocessing keys (the runtime reads absent ones as svrl's: no change)."""
        return {"conventions": self.name, "image_mirror_left_right": self.mirror_left_right,
                "image_resize": self.image_resize, "image_resize_to": self.resize_to,
                "image_jpeg_quality": self.jpeg_quality}


_LIBERO_UPSTREAM = dict(mirror_left_right=True, image_resize="jpeg-lanczos3", resize_to=224, jpeg_quality=95,
                        gripper="open_is_one", gripper_dim=-1, center_crop=0.9, render_size=256)
PRESETS: dict[str, Conventions] = {
    "svrl": Conventions("svrl", about="svrl's own checkpoints: upright images, LIBERO's gripper as it is"),
    "openvla-oft-libero": Conventions(
        "openvla-oft-libero", cameras=("agentview", "robot0_eye_in_hand"), use_proprio=True,
        about="moojink/openvla-oft LIBERO releases: two cameras (third person, then wrist) and an 8-D proprio "
              "token; they act through a continuous (L1) action head that svrl does not load, so their action "
              "tokens mean nothing until SFT", **_LIBERO_UPSTREAM),
    "simplevla-rl-libero": Conventions(
        "simplevla-rl-libero", cameras=("agentview",), use_proprio=False,
        about="SimpleVLA-RL LIBERO checkpoints: one camera, no proprio, discrete action tokens", **_LIBERO_UPSTREAM),
}


def preset(name: str | None) -> Conventions:
    """The named preset; None (a checkpoint that records none) is `svrl`."""
    if name is None:
        return PRESETS["svrl"]
    if name not in PRESETS:
        raise ValueError(f"unknown conventions {name!r}: use one of {sorted(PRESETS)}")
    return PRESETS[name]


# --- images ------------------------------------------------------------------------------
def model_images(conventions: Conventions, images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 upright env frames -> what the network is fed: the same array under `svrl`,
    else mirrored and/or JPEG + lanczos3 resized to (B, resize_to, resize_to, 3)."""
    if conventions.mirror_left_right:
        images = mirror_left_right(images)
    if conventions.image_resize == "jpeg-lanczos3":
        images = jpeg_lanczos3_resize(images, conventions.resize_to, conventions.jpeg_quality)
    return images


def mirror_left_right(images: np.ndarray) -> np.ndarray:
    """(..., H, W, C) -> the same frames mirrored left-right (columns reversed)."""
    return images[..., :, ::-1, :]


def jpeg_lanczos3_resize(images: np.ndarray, size: int, quality: int) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, size, size, 3) uint8: a JPEG round trip at `quality` (4:2:0 chroma, as
    TensorFlow's encode_jpeg), then an antialiased lanczos3 resize, rounded.

    Upstream resizes with tf.image.resize(method="lanczos3", antialias=True) in float32. Pillow's LANCZOS
    has the same kernel (support 3, widened by the downsampling factor, half-pixel centres, normalized
    weights), but on uint8 images it rounds to uint8 between its horizontal and vertical passes: 0.2 grey
    levels off on average, up to 5, on a LIBERO frame. So each channel is resized as a float32 image: against
    a float64 reimplementation of TensorFlow's kernel that is at most 1 level off, on rounding ties only
    (tests/test_oft_conventions.py). Both JPEG codecs are libjpeg(-turbo) with the standard tables;
    TensorFlow itself was not available to compare with.
    """
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = lanczos3_resize(jpeg_round_trip(image, quality), size)
    return out


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same after JPEG encoding at `quality` (4:2:0 chroma) and decoding."""
    from PIL import Image  # only the upstream path needs Pillow

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer, formats=["JPEG"]) as decoded:
        return np.asarray(decoded.convert("RGB"))


def lanczos3_resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: antialiased lanczos3 on each channel as a float32 image
    (no uint8 rounding between the two passes, as TensorFlow's float32), then rounded half to even."""
    from PIL import Image

    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32)).resize(
        (size, size), Image.LANCZOS)) for c in range(3)]  # [(size, size) float32]
    return np.clip(np.round(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


# --- gripper -----------------------------------------------------------------------------
def env_to_model_gripper(actions: np.ndarray, dim: int) -> np.ndarray:
    """(..., D) env actions (gripper -1 open, +1 close) -> the same with the gripper as a label in
    [0, 1], 1 = open: 1 - clip(g, 0, 1) (OpenVLA's LIBERO transform)."""
    out = np.array(actions, dtype=np.float64)
    out[..., dim] = 1.0 - np.clip(out[..., dim], 0.0, 1.0)
    return out


def model_to_env_gripper(actions: np.ndarray, dim: int) -> np.ndarray:
    """(..., D) decoded actions with the gripper in [0, 1] (1 = open) -> env actions with the gripper
    -sign(2 g - 1): -1 (open) above 0.5, +1 (close) below, 0 (hold) at 0.5. Keeps the dtype."""
    out = np.array(actions)
    out[..., dim] = np.sign(1.0 - 2.0 * out[..., dim])
    return out


@dataclass(frozen=True)
class OpenIsOneTokenizer(ActionTokenizer):
    """Env actions <-> bins for a model whose gripper dim is in [0, 1] with 1 = open: `encode` maps
    the env's gripper to the model's before binning (SFT labels), `decode` maps it back after (the
    actions rollouts and evaluation execute)."""

    gripper_dim: int = -1

    @property
    def gripper_index(self) -> int:
        return self.gripper_dim % self.action_dim

    def encode(self, actions: np.ndarray, states: np.ndarray | None = None) -> np.ndarray:
        return super().encode(env_to_model_gripper(actions, self.gripper_index), states)

    def decode(self, bins: np.ndarray, states: np.ndarray | None = None) -> np.ndarray:
        return model_to_env_gripper(super().decode(bins, states), self.gripper_index)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "gripper_convention": "open_is_one", "gripper_dim": self.gripper_index}


def action_tokenizer(conventions: Conventions, tokenizer: ActionTokenizer) -> ActionTokenizer:
    """`tokenizer`'s binning under `conventions`: a plain ActionTokenizer for `env` grippers, an
    OpenIsOneTokenizer for `open_is_one` (either kind of `tokenizer` goes in)."""
    base = {f.name: getattr(tokenizer, f.name) for f in fields(ActionTokenizer)}
    if conventions.gripper == "open_is_one":
        return OpenIsOneTokenizer(**base, gripper_dim=conventions.gripper_dim)
    return ActionTokenizer(**base)


# --- settings the checkpoints expect -----------------------------------------------------------
@dataclass(frozen=True)
class Mismatch:
    severity: Literal["error", "warning"]  # error: training would be wrong; warning: unlike the release
    setting: str  # the params.yaml key to change
    text: str


def check_settings(conventions: Conventions, cameras: Sequence[str] | None, use_proprio: bool,
                   center_crop: float, unnormalized_action_dims: Sequence[int], action_dim: int,
                   image_size: int | None = None) -> list[Mismatch]:
    """What in a policy's settings disagrees with `conventions` (empty when nothing does).

    `cameras` None means "the demonstrations' first camera" (only the count is checked); `image_size`
    is the env's frame side, if known.
    """
    found, name = [], conventions.name
    if conventions.gripper == "open_is_one":
        dim = conventions.gripper_dim % action_dim
        if dim not in {d % action_dim for d in unnormalized_action_dims}:
            found.append(Mismatch("error", "policy.unnormalized_action_dims", (
                f"conventions {name!r} train the gripper (action dim {dim}) as 1 - clip(g, 0, 1) in [0, 1], "
                f"which the demonstrations' q01/q99 do not describe: add {dim} to "
                f"policy.unnormalized_action_dims (OpenVLA leaves its gripper unnormalized)")))
    expected = conventions.cameras
    if expected is not None and (list(cameras) != list(expected) if cameras is not None else len(expected) != 1):
        got = "the demonstrations' first camera" if cameras is None else list(cameras)
        found.append(Mismatch("warning", "policy.oft.cameras", (
            f"{name} checkpoints read the cameras {list(expected)} in that order, this policy reads {got}: set "
            f"policy.oft.cameras: {list(expected)}")))
    if conventions.use_proprio is not None and use_proprio != conventions.use_proprio:
        found.append(Mismatch("warning", "policy.oft.use_proprio", (
            f"{name} checkpoints were trained {'with' if conventions.use_proprio else 'without'} a proprio token: "
            f"set policy.oft.use_proprio: {str(conventions.use_proprio).lower()}")))
    if conventions.center_crop is not None and center_crop != conventions.center_crop:
        found.append(Mismatch("warning", "policy.oft.center_crop", (
            f"{name} checkpoints were trained on centre crops of {conventions.center_crop} of the area, this "
            f"policy crops {center_crop}: set policy.oft.center_crop: {conventions.center_crop}")))
    if conventions.render_size is not None and image_size is not None and image_size != conventions.render_size:
        found.append(Mismatch("warning", "env.image_size", (
            f"{name} checkpoints saw LIBERO rendered at {conventions.render_size} px (then resized to "
            f"{conventions.resize_to}), this policy's frames are {image_size} px: set env.image_size: "
            f"{conventions.render_size}")))
    return found


def check_policy_config(policy: "PolicyConfig", action_dim: int, image_size: int | None = None) -> list[Mismatch]:
    """check_settings for a params.yaml policy section and the env's action dim (LIBERO: 7) and image
    side; OpenVLA-OFT only (other families have no conventions)."""
    if policy.family != "openvla-oft":
        return []
    oft = policy.oft
    return check_settings(preset(oft.conventions), oft.cameras, oft.use_proprio, oft.center_crop,
                          policy.unnormalized_action_dims, action_dim, image_size)


__all__ = ["PRESETS", "Conventions", "Mismatch", "OpenIsOneTokenizer", "action_tokenizer", "check_policy_config",
           "check_settings", "env_to_model_gripper", "jpeg_lanczos3_resize", "jpeg_round_trip", "lanczos3_resize",
           "mirror_left_right", "model_images", "model_to_env_gripper", "preset"]
