"""A DeepSpeed engine around a torch module, set up to run in one plain CPU process.

Under a launcher (`torchrun`, `deepspeed`) it joins the launcher's process group and trains
data-parallel; without one we fill in the single-process rendezvous variables and use gloo. DeepSpeed's fused Adam
would JIT-compile for minutes on CPU, so a torch AdamW is passed in instead.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import sys
from pathlib import Path

import torch

# Compiled DeepSpeed ops (the CPU shared-memory comm op) live with the venv; `make setup` builds them.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_rank() -> int:
    """This process's rank under a launcher (torchrun, deepspeed); 0 without one."""
    return int(os.environ.get("RANK", "0"))


def under_launcher() -> bool:
    """True in a rank of a multi-rank launch (torchrun, deepspeed), which set the world for us."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def bind_local_device() -> None:
    """Put this rank on its own GPU (LOCAL_RANK) before any model or NCCL call touches "cuda":
    without it every rank of a node would load its model onto GPU 0."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def init_process_group() -> None:
    """Join the launcher's process group, or form a world of one when no launcher set one up."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    bind_local_device()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def zero_stage(overrides: dict | None) -> int:
    """The ZeRO stage an engine config (or the default, 0) asks for."""
    return int((overrides or {}).get("zero_optimization", {}).get("stage", 0))


class DeepSpeedTrainer:
    """forward, then accumulate and step (or backward_step), through `deepspeed.initialize` (AdamW; ZeRO 0
    and fp32 unless overridden).

    `overrides` (e.g. infra/deepspeed/zero3_bf16.json) is merged into the engine config. ZeRO-3
    partitions the parameters it trains, so it trains a copy of `model` and writes the full
    weights back into `model` after every step: rollouts, log-probs and checkpoints keep
    reading an ordinary module, while gradients and optimizer state stay partitioned.
    """

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, grad_clip: float, batch_size: int,
                 overrides: dict | None = None):
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        deepspeed.utils.logger.setLevel(logging.WARNING)
        init_process_group()
        config = {  # `batch_size` per process: data parallel over the launcher's ranks
            "train_batch_size": batch_size * torch.distributed.get_world_size(),
            "train_micro_batch_size_per_gpu": batch_size,
            "gradient_clipping": grad_clip,
            "zero_optimization": {"stage": 0},
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
            **(overrides or {}),
        }
        self.zero_stage = zero_stage(config)
        trained = copy.deepcopy(model) if self.zero_stage == 3 else model
        optimizer = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=trained, optimizer=optimizer, config=config)
        self.module = model

    def forward(self, *inputs):
        self.engine.module.train(self.module.training)
        return self.engine(*inputs)

    def backward_step(self, loss: torch.Tensor) -> float:
        """Backpropagate, clip (inside DeepSpeed) and step; returns the pre-clip grad norm."""
        self.accumulate(loss, boundary=True)
        return self.step()

    def accumulate(self, loss: torch.Tensor, boundary: bool) -> None:
        """Backpropagate one micro-batch's part of a step's loss (unscaled: the parts must add up to the
        step's loss). Gradients add up locally until the boundary, the step's last micro-batch, whose
        backward averages them over ranks. Every rank must call this equally often per step."""
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        """Clip (inside DeepSpeed) and apply the accumulated gradients; returns their pre-clip norm."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else None
        self.engine.step()
        if grad_norm is None:  # ZeRO keeps the gradients itself and reports their norm
            grad_norm = float(self.engine.get_global_grad_norm() or 0.0)
        if self.zero_stage == 3:
            self._copy_weights_back()
        return grad_norm

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps (the optimizer's every parameter group)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimizer_state(self) -> dict:
        """This process's optimizer state (its partition under ZeRO), for resumable checkpoints."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        """Restore `optimizer_state()`; the module must already hold the matching weights (ZeRO
        rebuilds its fp32 partitions from them)."""
        if self.zero_stage:
            self.optimizer.load_state_dict([state], load_from_fp32_weights=False)
        else:
            self.optimizer.load_state_dict(state)

    def _copy_weights_back(self) -> None:
        import deepspeed

        trained = list(self.engine.module.parameters())
        with deepspeed.zero.GatheredParameters(trained, modifier_rank=None), torch.no_grad():
            for mine, full in zip(self.module.parameters(), trained):
                mine.copy_(full)


def prebuild_ops() -> None:
    """Compile DeepSpeed's CPU comm op once (called by `make setup`), so stages start fast."""
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()
