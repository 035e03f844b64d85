"""Robot-side runtime of an exported svrl policy bundle.

This file is copied into every bundle and needs only numpy and torch (and `tokenizers` for
an OpenVLA-OFT bundle, whose instructions become Llama tokens): no svrl code.

    policy = BundlePolicy("path/to/bundle")
    chunk = policy.act(image, proprio, "move to the red disc")  # (K, D) actions to execute

Loading checks every file against manifest.json (sha256 and size) first, so a bundle that
was modified, truncated or partly copied after export is refused before it can act.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

MANIFEST = "manifest.json"
REFETCH = "re-export it (`dvc repro export`) or restore it (`dvc checkout exports/policy_bundle`)"


class BundleError(ValueError):
    """The bundle is incomplete or differs from what was exported."""


DECODINGS = ("argmax", "mean")


def decode_bins(logits: torch.Tensor, decoding: str) -> torch.Tensor:
    """(..., n_bins) logits -> (...) int64: each action token's deterministic bin.

    argmax: the most likely bin (OpenVLA). mean: the bin nearest the token distribution's
    expected bin. Training labels pile up in the edge bins (saturated, clipped actions), so
    argmax often jumps to a full-scale action where the distribution's bulk asks for a small
    one; the mean follows the bulk (docs/decoding.md has the measurements). svrl's in-process
    greedy actions call this same function, so a bundle acts exactly like its policy.
    """
    if decoding == "argmax":
        return logits.argmax(-1)
    if decoding == "mean":
        probs = logits.float().softmax(-1)  # (..., n_bins)
        return (probs @ torch.arange(probs.shape[-1], dtype=probs.dtype)).round().long()
    raise ValueError(f"unknown decoding {decoding!r}: use one of {list(DECODINGS)}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict:
    """manifest.json after checking every file it lists; raises BundleError naming the first bad file."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"bundle {directory}: no readable {MANIFEST} ({err}); {REFETCH}") from None
    for name, entry in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise BundleError(f"bundle {directory}: {name} is missing; {REFETCH}")
        if path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            raise BundleError(f"bundle {directory}: {name} does not match its sha256 in {MANIFEST}: the file was "
                              f"changed after export; {REFETCH}")
    return manifest


class BundlePolicy:
    def __init__(self, directory: str | Path):
        self.directory = directory = Path(directory)
        self._tokenizer = None
        self.manifest = read_manifest(directory)
        self.spec = json.loads((directory / "bundle.json").read_text())
        if self.spec["postprocessing"]["decoding"] not in DECODINGS:
            raise BundleError(f"bundle {directory}: decoding {self.spec['postprocessing']['decoding']!r} is none "
                              f"that this runtime knows ({list(DECODINGS)}); export it again with this svrl version")
        self.net = torch.export.load(str(directory / "policy.pt2")).module()

    def preprocess(self, images: np.ndarray, proprio: np.ndarray, instructions: list[str]) -> tuple:
        """images (B, H, W, 3) uint8, proprio (B, S), texts -> the network's three tensors."""
        pre = self.spec["preprocessing"]
        if images.shape[1:] != (pre["image_height"], pre["image_width"], 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (B, {pre['image_height']}, {pre['image_width']}, 3), "
                             f"got {images.dtype} {images.shape}")
        image_tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        states = self._normalize_state(np.asarray(proprio, np.float64), pre)
        return image_tensor, torch.from_numpy(states.astype(np.float32)), torch.from_numpy(self._encode(instructions))

    @staticmethod
    def _normalize_state(proprio: np.ndarray, pre: dict) -> np.ndarray:
        if pre.get("state_normalization", "mean_std") == "mean_std":
            return (proprio - np.asarray(pre["state_mean"], np.float32)) / (
                np.asarray(pre["state_std"], np.float32) + pre["state_eps"])
        low, high = np.asarray(pre["state_low"]), np.asarray(pre["state_high"])  # q01 -> -1, q99 -> 1
        return np.clip(2.0 * (proprio - low) / np.where(high > low, high - low, 1.0) - 1.0, -1.0, 1.0)

    def _encode(self, instructions: list[str]) -> np.ndarray:
        pre = self.spec["preprocessing"]
        if pre["instruction_encoding"] == "openvla-prompt":
            return self._openvla_prompt_ids(instructions, pre)
        ids = np.zeros((len(instructions), pre["max_instruction_bytes"]), dtype=np.int64)
        for row, text in enumerate(instructions):
            raw = np.frombuffer(text.encode("utf-8")[: pre["max_instruction_bytes"]], dtype=np.uint8)
            ids[row, : len(raw)] = raw.astype(np.int64) + 1
        return ids

    def _openvla_prompt_ids(self, instructions: list[str], pre: dict) -> np.ndarray:
        """[BOS] [pad ...] prompt [space] [action placeholders] [stop], as svrl trained it."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.directory / pre["tokenizer_file"]))
        width = pre["max_prompt_tokens"]
        ids = np.full((len(instructions), width + pre["n_action_tokens"] + 1), pre["pad_token_id"], dtype=np.int64)
        ids[:, width:-1], ids[:, -1] = pre["placeholder_token_id"], pre["stop_token_id"]
        for row, text in enumerate(instructions):
            prompt = self._tokenizer.encode(pre["prompt"].format(instruction=text.lower()), add_special_tokens=False).ids
            if pre["space_token_id"] is not None and prompt[-1:] != [pre["space_token_id"]]:
                prompt.append(pre["space_token_id"])
            if len(prompt) + 1 > width:
                raise ValueError(f"instruction {text!r} is {len(prompt) + 1} tokens, the bundle takes {width}")
            ids[row, 0] = pre["bos_token_id"]
            ids[row, width - len(prompt):width] = prompt
        return ids

    def bins_to_actions(self, bins: np.ndarray, proprio: np.ndarray | None = None) -> np.ndarray:
        """(B, K, D) bins -> (B, K, D) actions: bin centre, undo the q01/q99 scaling, binarize grippers, and
        add the proprio (B, D) to the dims that are relative to it."""
        post = self.spec["postprocessing"]
        if post.get("binning", "uniform") == "openvla":  # 256 edges, 255 centres; the top bin decodes as the one below
            edges = np.linspace(-1.0, 1.0, post["n_bins"])
            normalized = ((edges[:-1] + edges[1:]) / 2)[np.minimum(bins, post["n_bins"] - 2)]
        else:
            edges = np.linspace(-1.0, 1.0, post["n_bins"] + 1)
            normalized = ((edges[:-1] + edges[1:]) / 2)[bins]
        low, high = np.asarray(post["low"]), np.asarray(post["high"])
        scaled = (normalized + 1.0) / 2.0 * (high - low) + low
        actions = np.where(np.asarray(post["normalize_mask"], bool), scaled, normalized)
        binary = np.asarray(post.get("binary_mask", [False] * len(low)), bool)  # grippers: low or high, the nearer
        actions = np.where(binary, np.where(actions >= (low + high) / 2, high, low), actions).astype(np.float32)
        relative = np.asarray(post.get("relative_mask", [False] * len(low)), bool)
        if not relative.any():
            return actions
        if proprio is None:
            raise BundleError("this bundle's actions are relative to the proprio: pass it to bins_to_actions")
        return (actions + np.where(relative, np.asarray(proprio, np.float64), 0.0)[:, None, :]).astype(np.float32)

    @torch.no_grad()
    def act_batch(self, images: np.ndarray, proprio: np.ndarray, instructions: list[str]) -> np.ndarray:
        """Deterministic action chunks (the bundle's decoding), (B, K, D)."""
        logits = self.net(*self.preprocess(images, proprio, instructions))  # (B, K * D, n_bins)
        post = self.spec["postprocessing"]
        bins = decode_bins(logits, post["decoding"]).numpy()
        bins = bins.reshape(len(instructions), post["chunk_size"], post["action_dim"])
        return self.bins_to_actions(bins, proprio)

    def act(self, image: np.ndarray, proprio: np.ndarray, instruction: str) -> np.ndarray:
        """One observation -> its (K, D) action chunk."""
        return self.act_batch(image[None], np.asarray(proprio)[None], [instruction])[0]
