"""Byte-level instruction tokenizer: offline, no vocabulary to download."""

from __future__ import annotations

import numpy as np

PAD = 0
VOCAB_SIZE = 257  # 256 byte values shifted by one, 0 is padding


def encode_instructions(texts: list[str], max_bytes: int) -> np.ndarray:
    """Texts -> (B, max_bytes) int64 ids (byte + 1), zero-padded, truncated at max_bytes."""
    ids = np.zeros((len(texts), max_bytes), dtype=np.int64)
    for row, text in enumerate(texts):
        raw = np.frombuffer(text.encode("utf-8")[:max_bytes], dtype=np.uint8)
        ids[row, : len(raw)] = raw.astype(np.int64) + 1
    return ids
