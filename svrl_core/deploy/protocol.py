"""What server and robot say to each other, and the strict checks on every observation.

Messages are wire.pack'ed maps over one WebSocket:
    robot -> server  {"type": "infer", "observation": {"images": {camera: (H, W, 3) uint8},
                                                       "proprio": (S,) float, "instruction": str}}
                     {"type": "metadata"}
    server -> robot  {"type": "actions", "actions": (K, D) float32, "server_ms": float}
                     {"type": "metadata", ...bundle_metadata()}
                     {"type": "error", "status": 4xx | 5xx, "error": "what is wrong and how to fix it"}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Proprio is in SI units (metres, radians, gripper 0..1): values this large mean raw device
# units (e.g. the Piper SDK's 0.001 degrees) reached the policy unconverted.
PROPRIO_ABS_MAX = 1e4
MAX_INSTRUCTION_BYTES = 1024
OBSERVATION_KEYS = frozenset({"images", "proprio", "instruction"})


class BadRequest(ValueError):
    """A request the server refuses, with the HTTP-style status it answers."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Observation:
    """One checked observation, ready for BundlePolicy.act_batch."""

    image: np.ndarray  # (H, W, 3) uint8
    proprio: np.ndarray  # (S,) float32
    instruction: str


def bundle_metadata(spec: dict, manifest: dict, provenance: dict) -> dict:
    """What a robot needs to know before it sends anything: inputs, action layout, checksums, provenance."""
    pre, post = spec["preprocessing"], spec["postprocessing"]
    params = provenance.get("params") or {}
    return {
        "name": spec["name"], "format": spec["format"],
        "cameras": [spec["inputs"]["camera"]], "image_height": pre["image_height"], "image_width": pre["image_width"],
        "proprio_dim": spec["inputs"]["proprio_dim"], "chunk_size": post["chunk_size"], "action_dim": post["action_dim"],
        "action_names": post.get("action_names"), **action_bounds(post),
        "checksums": {name: entry["sha256"] for name, entry in manifest["files"].items()},
        "provenance": {**{key: provenance.get(key) for key in ("git", "dvc", "metrics")},
                       # what `svrl drive` simulates by default: the env the policy was trained and evaluated on
                       "env": params.get("env"), "eval_seed_start": params.get("eval", {}).get("seed_start")},
    }


def action_bounds(post: dict) -> dict:
    """The range a bundle's decoded actions lie in, so a robot can check what it is sent: dims scaled
    from [-1, 1] to the dataset's [low, high], the others in [-1, 1] (binary ones at low or high); dims
    relative to the proprio are offsets from it (the robot adds its own proprio)."""
    low, high = np.asarray(post["low"], np.float64), np.asarray(post["high"], np.float64)
    scaled = np.asarray(post["normalize_mask"], bool)
    binary = np.asarray(post.get("binary_mask", [False] * len(low)), bool)
    return {"action_low": np.where(scaled, low, np.where(binary, np.minimum(low, -1.0), -1.0)).tolist(),
            "action_high": np.where(scaled, high, np.where(binary, np.maximum(high, 1.0), 1.0)).tolist(),
            "action_relative_to_proprio": np.asarray(post.get("relative_mask", [False] * len(low)), bool).tolist()}


def _array(value: object, what: str, shape: tuple[int, ...], dtypes: tuple[str, ...]) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise BadRequest(422, f"{what} must be an array, got {type(value).__name__}")
    if value.dtype.name not in dtypes:
        raise BadRequest(422, f"{what} must have dtype {' or '.join(dtypes)}, got {value.dtype.name}")
    if value.shape != shape:
        raise BadRequest(422, f"{what} must have shape {shape}, got {value.shape}")
    return value


def parse_observation(message: dict, metadata: dict) -> Observation:
    """An infer request's observation, checked against the bundle; raises BadRequest(422) naming the problem."""
    obs = message.get("observation")
    if not isinstance(obs, dict) or set(obs) != OBSERVATION_KEYS:
        got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise BadRequest(422, f"observation must be a map with exactly {sorted(OBSERVATION_KEYS)}, got {got}")
    images = obs["images"]
    if not isinstance(images, dict) or sorted(images) != sorted(metadata["cameras"]):
        got = sorted(images) if isinstance(images, dict) else type(images).__name__
        raise BadRequest(422, f"images must be a map of exactly the cameras {metadata['cameras']}, got {got}")
    camera = metadata["cameras"][0]
    image = _array(images[camera], f"image {camera!r}",
                   (metadata["image_height"], metadata["image_width"], 3), ("uint8",))
    proprio = _array(obs["proprio"], "proprio", (metadata["proprio_dim"],), ("float32", "float64"))
    if not np.all(np.isfinite(proprio)) or np.abs(proprio).max(initial=0.0) > PROPRIO_ABS_MAX:
        raise BadRequest(422, f"proprio must be finite and within +-{PROPRIO_ABS_MAX:g} (SI units), got {proprio}")
    instruction = obs["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRequest(422, "instruction must be a non-empty string")
    if len(instruction.encode("utf-8")) > MAX_INSTRUCTION_BYTES:
        raise BadRequest(422, f"instruction is longer than {MAX_INSTRUCTION_BYTES} bytes")
    return Observation(image, proprio.astype(np.float32), instruction)
