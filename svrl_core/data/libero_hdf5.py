"""Import official LIBERO demonstration files (`<task>_demo.hdf5`, robomimic layout) as Episodes.

Layout (LIBERO's released datasets, robomimic's hdf5): group `data` with attribute `problem_info` (JSON holding
`language_instruction`) and `macros_image_convention` ("opengl": images stored upside
down); groups `data/demo_N` with `actions` (T, 7) and `obs/{agentview_rgb, eye_in_hand_rgb,
ee_pos, ee_ori, gripper_states}`. Images are turned upright to match our renderer, and the
state is the one LiberoEnv observes: eef position, eef axis-angle, two gripper joints.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from svrl_core.data.lerobot import DatasetError, Episode

CAMERA_KEYS = {"agentview": "agentview_rgb", "robot0_eye_in_hand": "eye_in_hand_rgb"}
STATE_KEYS = ("ee_pos", "ee_ori", "gripper_states")  # -> (T, 3 + 3 + 2)


def read_libero_hdf5(path: str | Path, cameras: list[str], image_size: int | None = None,
                     instruction: str | None = None) -> list[Episode]:
    """Every demo of one official file, in demo order; images resized to `image_size` if given.

    `instruction` replaces the file's own `language_instruction` (the BDDL file's wording, which can
    differ from the benchmark's, e.g. "pick the ..." vs "pick up the ..."): the ingest stage passes the
    benchmark's, which the env gives the policy at evaluation."""
    import h5py

    unknown = [c for c in cameras if c not in CAMERA_KEYS]
    if unknown:
        raise DatasetError(f"{path}: unknown camera(s) {unknown}; valid: {sorted(CAMERA_KEYS)}")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: not a readable HDF5 file ({err}); expected an official LIBERO "
                           "`<task>_demo.hdf5`") from None
    with handle:
        if "data" not in handle:
            raise DatasetError(f"{path}: no `data` group; found {sorted(handle)}; expected the LIBERO/robomimic layout")
        data = handle["data"]
        instruction = instruction or _instruction(path, data.attrs)
        upside_down = data.attrs.get("macros_image_convention", "opengl") == "opengl"
        demos = sorted((k for k in data if re.fullmatch(r"demo_\d+", k)), key=lambda k: int(k.split("_")[1]))
        if not demos:
            raise DatasetError(f"{path}: `data` holds no demo_N groups (found {sorted(data)})")
        return [_episode(path, data[name], instruction, cameras, image_size, upside_down) for name in demos]


def _instruction(path, attrs) -> str:
    try:
        return str(json.loads(attrs["problem_info"])["language_instruction"]).strip()
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path}: data.attrs['problem_info'] must be JSON with `language_instruction` "
                           f"({type(err).__name__}: {err})") from None


def _episode(path, demo, instruction: str, cameras: list[str], image_size: int | None, upside_down: bool) -> Episode:
    where = f"{path}: {demo.name.lstrip('/')}"
    needed = ["actions"] + [f"obs/{CAMERA_KEYS[c]}" for c in cameras] + [f"obs/{k}" for k in STATE_KEYS]
    missing = [key for key in needed if key not in demo]
    if missing:
        found = sorted(demo) + [f"obs/{k}" for k in demo.get("obs", {})]
        raise DatasetError(f"{where} lacks {missing}; found {found}")
    actions = np.asarray(demo["actions"], dtype=np.float32)  # (T, 7)
    states = np.concatenate([np.asarray(demo[f"obs/{k}"], dtype=np.float32) for k in STATE_KEYS], axis=1)  # (T, 8)
    images = {c: _images(np.asarray(demo[f"obs/{CAMERA_KEYS[c]}"]), image_size, upside_down) for c in cameras}
    lengths = {len(actions), len(states), *(len(v) for v in images.values())}
    if len(lengths) != 1 or actions.ndim != 2 or actions.shape[1] != 7 or states.shape[1] != 8:
        raise DatasetError(f"{where}: inconsistent shapes: actions {actions.shape}, state {states.shape}, "
                           f"images {[v.shape for v in images.values()]}; expected (T, 7), (T, 8), (T, H, W, 3)")
    return Episode(task=instruction, images=images, states=states, actions=actions)


def _images(frames: np.ndarray, size: int | None, upside_down: bool) -> np.ndarray:
    """(T, H, W, 3) uint8 -> upright, optionally resized to (T, size, size, 3)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DatasetError(f"camera frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if upside_down:
        frames = frames[:, ::-1]
    if size is None or frames.shape[1:3] == (size, size):
        return np.ascontiguousarray(frames)
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])
