"""Update-step time through the DeepSpeed engine vs a plain torch loop, same model and batch.

    python -m bench.update [--steps 100] [--batch 64]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from svrl_core.config import Params
from svrl_core.policies import PolicyInputs, TinyVLA, TinyVLAConfig
from svrl_core.training import DeepSpeedTrainer


def batch(cfg: TinyVLAConfig, size: int) -> tuple[PolicyInputs, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    inputs = PolicyInputs(torch.randint(0, 255, (size, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, generator=gen),
                          torch.randn(size, cfg.state_dim, generator=gen),
                          torch.randint(1, 120, (size, 24), generator=gen))
    return inputs, torch.randint(0, cfg.n_bins, (size, cfg.n_action_tokens), generator=gen)


def timed(step, n: int) -> float:
    for _ in range(5):
        step()
    began = time.monotonic()
    for _ in range(n):
        step()
    return (time.monotonic() - began) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    p = Params().policy
    cfg = TinyVLAConfig(image_size=32, state_dim=2, action_dim=2, chunk_size=p.chunk_size, n_bins=p.n_bins,
                        conv_channels=p.conv_channels, n_keypoints=p.n_keypoints, instruction_dim=p.instruction_dim,
                        hidden_dim=p.hidden_dim, max_instruction_bytes=24)
    inputs, targets = batch(cfg, args.batch)
    torch.manual_seed(0)
    plain_model = TinyVLA(cfg)
    ds_model = copy.deepcopy(plain_model)
    optimizer = torch.optim.AdamW(plain_model.parameters(), lr=1e-4)

    def plain_step():
        loss = torch.nn.functional.cross_entropy(plain_model(inputs).transpose(1, 2), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain_model.parameters(), 1.0)
        optimizer.step()

    trainer = DeepSpeedTrainer(ds_model, lr=1e-4, weight_decay=0.0, grad_clip=1.0, batch_size=args.batch)

    def deepspeed_step():
        loss = torch.nn.functional.cross_entropy(trainer.forward(inputs).transpose(1, 2), targets)
        trainer.backward_step(loss)

    times = {"plain": [], "deepspeed": []}
    for _ in range(3):  # interleave to share the machine's noise
        times["plain"].append(timed(plain_step, args.steps // 3))
        times["deepspeed"].append(timed(deepspeed_step, args.steps // 3))
    plain, ds = np.median(times["plain"]), np.median(times["deepspeed"])
    print(f"batch {args.batch}: plain torch {1000 * plain:.1f} ms/step, DeepSpeed engine {1000 * ds:.1f} ms/step; "
          f"DeepSpeed speed relative to plain torch: {plain / ds:.2f}")


if __name__ == "__main__":
    main()
