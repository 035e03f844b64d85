"""Export a policy as a self-contained bundle: torch.export graph + json spec + runtime.

The bundle is a release: manifest.json lists every file with its sha256 (checked whenever the
runtime loads it) and provenance.json says where the policy came from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from svrl_core.export.runtime import MANIFEST, file_sha256
from svrl_core.io import atomic_directory, write_json_atomic
from svrl_core.policies import PolicyInputs, VLAPolicy

BUNDLE_FORMAT = "svrl-bundle-v1"
MANIFEST_FORMAT = "svrl-bundle-manifest-v1"


class _TensorInterface(torch.nn.Module):
    """The network with plain tensor arguments, as torch.export needs."""

    def __init__(self, policy: VLAPolicy):
        super().__init__()
        self.model = policy.model

    def forward(self, images: torch.Tensor, states: torch.Tensor, instruction_ids: torch.Tensor) -> torch.Tensor:
        return self.model(PolicyInputs(images, states, instruction_ids))


def bundle_spec(policy: VLAPolicy, name: str, action_names: list[str] | None = None) -> dict:
    if action_names is not None and len(action_names) != policy.action_dim:
        raise ValueError(f"export: {len(action_names)} action names for a {policy.action_dim}-D action")
    if len(policy.cameras) != 1:
        raise ValueError(f"export: bundles take one camera, this policy reads {list(policy.cameras)}")
    height, width = policy.image_shape
    return {
        "format": BUNDLE_FORMAT, "name": name, "family": policy.family, "architecture": policy.architecture(),
        "inputs": {"camera": policy.camera, "proprio_dim": policy.state_dim, "instruction": "text"},
        "preprocessing": {"image_height": height, "image_width": width, "image_layout": "HWC uint8 RGB, upright",
                          **policy.bundle_preprocessing()},
        "postprocessing": {"decoding": policy.decoding, "chunk_size": policy.chunk_size,
                           "action_dim": policy.action_dim, "action_names": action_names, **policy.actions.to_dict()},
        "dataset_statistics": policy.dataset_stats,
    }


def write_manifest(directory: Path, name: str) -> dict:
    """Checksum every file under `directory` into its manifest.json."""
    files = {path.relative_to(directory).as_posix(): {"sha256": file_sha256(path), "bytes": path.stat().st_size}
             for path in sorted(directory.rglob("*")) if path.is_file() and path.name != MANIFEST}
    manifest = {"format": MANIFEST_FORMAT, "name": name, "files": files}
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


def export_bundle(policy: VLAPolicy, directory: str | Path, name: str, provenance: dict | None = None,
                  action_names: list[str] | None = None) -> None:
    """Write the bundle atomically: policy.pt2, bundle.json, runtime.py, the svrl checkpoint,
    provenance.json, and last the manifest of them all."""
    example = policy.prepare_arrays(
        {policy.camera: np.zeros((2, *policy.image_shape, 3), dtype=np.uint8)},
        np.zeros((2, policy.state_dim), dtype=np.float32), ["example instruction", "another"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(
        _TensorInterface(policy).eval(), (example.images, example.states, example.instruction_ids),
        dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    spec = bundle_spec(policy, name, action_names)
    with atomic_directory(directory) as staging:
        torch.export.save(program, str(staging / "policy.pt2"))
        write_json_atomic(staging / "bundle.json", spec)
        write_json_atomic(staging / "provenance.json", provenance or {})
        shutil.copy(Path(__file__).with_name("runtime.py"), staging / "runtime.py")
        policy.save(staging / "checkpoint")
        tokenizer = spec["preprocessing"].get("tokenizer_file")
        if tokenizer:  # the runtime reads it beside bundle.json
            shutil.copy(staging / "checkpoint" / tokenizer, staging / tokenizer)
        write_manifest(staging, name)
