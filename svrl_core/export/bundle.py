"""Export a policy as a self-contained bundle: torch.export graph + json spec + runtime.

The bundle is a release: manifest.json lists every file with its sha256 (checked whenever the
runtime loads it), provenance.json says where the policy came from, and manifest.sig, when the
bundle is signed (`sign_bundle`), proves who released it. The network is data only (runtime.py's
docstring says why loading it runs no code): policy.json, torch.export's JSON of the graph, and
policy.safetensors, its weights -- no pickle anywhere.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from svrl_core.export.runtime import (BUNDLE_FORMAT, MANIFEST, MANIFEST_FORMAT, PROGRAM, PROVENANCE,
                                      SAFETENSORS_DTYPES, SIGNATURE, SPEC, WEIGHTS, ProgramError, check_program,
                                      file_sha256, sign_bundle)
from svrl_core.io import atomic_directory, write_json_atomic
from svrl_core.policies import PolicyInputs, VLAPolicy

__all__ = ["BUNDLE_FORMAT", "MANIFEST_FORMAT", "export_bundle", "write_manifest", "write_safetensors"]


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
    """Checksum every file under `directory` into its manifest.json (all but the manifest and its signature)."""
    directory = Path(directory)
    files = {path.relative_to(directory).as_posix(): {"sha256": file_sha256(path), "bytes": path.stat().st_size}
             for path in sorted(directory.rglob("*"))
             if path.is_file() and path.relative_to(directory).as_posix() not in (MANIFEST, SIGNATURE)}
    manifest = {"format": MANIFEST_FORMAT, "name": name, "files": files}
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Tensors in the safetensors layout (8-byte little-endian header length, JSON header of dtype,
    shape and data offsets, raw little-endian bytes), written without the safetensors package so that
    shared or strided tensors need no copies first; runtime.py reads it back."""
    if sys.byteorder != "little":
        raise ValueError("export: policy.safetensors is little-endian; export on a little-endian machine")
    header, offset = {}, 0
    for key, tensor in tensors.items():
        if tensor.dtype not in _DTYPE_NAMES:
            raise ValueError(f"export: {key} is {tensor.dtype}, a bundle holds {list(SAFETENSORS_DTYPES)}")
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for tensor in tensors.values():
            if tensor.numel():
                f.write(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)


def _program_and_tensors(program: torch.export.ExportedProgram) -> tuple[bytes, dict[str, torch.Tensor]]:
    """torch.export's JSON of the graph (no pickled state dict, constants or example inputs), and the
    tensors it needs as state_dict/<name> and constants/<name>."""
    from torch._export.serde.serialize import serialize

    artifact = serialize(program, serialize_state_dict=False, serialize_constants=False,
                         serialize_example_inputs=False)
    graph_json = json.loads(artifact.exported_program)
    graph_json["graph_module"]["metadata"] = {}  # stack traces, module paths: not needed to run, refused on load
    for node in graph_json["graph_module"]["graph"]["nodes"]:
        node["metadata"] = {}
    try:
        check_program(graph_json)  # the runtime refuses what it would refuse: fail here, not on the robot
    except ProgramError as err:
        raise ValueError(f"export: the exported network cannot go into a bundle: {err}") from None
    tensors = {f"state_dict/{key}": value for key, value in program.state_dict.items()}
    for key, value in program.constants.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"export: constant {key} is a {type(value).__name__}; bundles hold tensors only")
        tensors[f"constants/{key}"] = value
    return json.dumps(graph_json).encode(), tensors


def export_bundle(policy: VLAPolicy, directory: str | Path, name: str, provenance: dict | None = None,
                  action_names: list[str] | None = None, signing_key: bytes | None = None) -> None:
    """Write the bundle atomically: policy.json and policy.safetensors (the network), bundle.json,
    runtime.py, the svrl checkpoint, provenance.json, and last the manifest of them all -- signed
    (manifest.sig) when `signing_key` is given."""
    example = policy.prepare_arrays(
        {policy.camera: np.zeros((2, *policy.image_shape, 3), dtype=np.uint8)},
        np.zeros((2, policy.state_dim), dtype=np.float32), ["example instruction", "another"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(
        _TensorInterface(policy).eval(), (example.images, example.states, example.instruction_ids),
        dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    spec = bundle_spec(policy, name, action_names)
    program_json, tensors = _program_and_tensors(program)
    with atomic_directory(directory) as staging:
        (staging / PROGRAM).write_bytes(program_json)
        write_safetensors(staging / WEIGHTS, tensors)
        write_json_atomic(staging / SPEC, spec)
        write_json_atomic(staging / PROVENANCE, provenance or {})
        shutil.copy(Path(__file__).with_name("runtime.py"), staging / "runtime.py")
        policy.save(staging / "checkpoint")
        tokenizer = spec["preprocessing"].get("tokenizer_file")
        if tokenizer:  # the runtime reads it beside bundle.json
            shutil.copy(staging / "checkpoint" / tokenizer, staging / tokenizer)
        write_manifest(staging, name)
        if signing_key is not None:
            sign_bundle(staging, signing_key)
