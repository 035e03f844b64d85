"""OpenVLA's prompt as token ids, and the small byte-level Llama-style tokenizer of fresh tiny models.

Each row of a batch is laid out as
    [BOS] [pad ...] prompt tokens [space] [K x D action placeholders] [stop]
Padding sits right after BOS, where the image patches go, so every row has its action
tokens at the same positions and the padded ones are masked out (position ids skip them:
a padded row computes what the unpadded one would).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers

from svrl_core.policies.openvla_oft.config import PROMPT, OftConfig

TOKENIZER_FILE = "tokenizer.json"
SPACE = "\u2581"  # SentencePiece's word boundary


def byte_tokenizer(n_bins: int) -> Tokenizer:
    """Llama-like (SentencePiece word boundary, byte fallback), no merges: offline and tiny.

    ids: <unk> 0, <s> 1, </s> 2, bytes 3..258, the boundary 259, then n_bins action tokens, which
    end the vocabulary as OpenVLA's do.
    """
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, SPACE: 259}
    vocab.update({f"<action_{i}>": 260 + i for i in range(n_bins)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    return tokenizer


def load_tokenizer(directory: Path) -> Tokenizer:
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {TOKENIZER_FILE}. OpenVLA checkpoints ship one; from a "
                                "tokenizer.model alone, write it with transformers' LlamaTokenizerFast"
                                ".from_pretrained(dir).save_pretrained(dir)")
    return Tokenizer.from_file(str(path))


class PromptEncoder:
    """Instructions -> (B, sequence_length) int64 ids in the layout above."""

    def __init__(self, tokenizer: Tokenizer, cfg: OftConfig):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.placeholder = cfg.text_vocab_size - 1  # any id: action embeddings are zeroed
        self._rows: dict[str, np.ndarray] = {}

    def prompt_ids(self, instruction: str) -> list[int]:
        ids = self.tokenizer.encode(PROMPT.format(instruction=instruction.lower()), add_special_tokens=False).ids
        if self.cfg.space_token_id is not None and ids[-1:] != [self.cfg.space_token_id]:
            ids.append(self.cfg.space_token_id)
        return [self.cfg.bos_token_id, *ids]

    def encode(self, instructions: list[str]) -> np.ndarray:
        return np.stack([self._row(instruction) for instruction in instructions])

    def _row(self, instruction: str) -> np.ndarray:
        """One instruction's (sequence_length,) ids, tokenized once: rollouts ask every step."""
        if instruction in self._rows:
            return self._rows[instruction]
        cfg, ids = self.cfg, self.prompt_ids(instruction)
        if len(ids) > cfg.max_prompt_tokens:
            raise ValueError(f"instruction {instruction!r} is {len(ids)} prompt tokens, over "
                             f"policy.oft.max_prompt_tokens={cfg.max_prompt_tokens}: raise it")
        row = np.full(cfg.sequence_length, cfg.pad_token_id, dtype=np.int64)
        row[0], row[-1] = ids[0], cfg.stop_token_id
        row[cfg.max_prompt_tokens - len(ids) + 1:cfg.max_prompt_tokens] = ids[1:]
        row[cfg.max_prompt_tokens:-1] = self.placeholder
        self._rows[instruction] = row
        return row
