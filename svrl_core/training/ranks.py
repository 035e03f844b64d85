"""The ranks of a data-parallel run: which share of the work is this process's, and the few
collectives that GRPO's global choices need. A world of one needs no process group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @classmethod
    def of_process_group(cls) -> "Ranks":
        """This process's place in the initialized process group (a world of one without one)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes outputs, metrics and the shared part of checkpoints."""
        return self.rank == 0

    def share(self, n_items: int) -> list[int]:
        """This rank's items of `n_items`, interleaved (item i goes to rank i % world): members of one
        GRPO group land on different ranks, so kept groups load every rank alike."""
        return list(range(self.rank, n_items, self.world))

    def gather(self, item: Any) -> list[Any]:
        """Every rank's `item` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [item]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, item)
        return gathered

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a float64 CPU tensor over ranks."""
        if self.world == 1:
            return values
        total = values.to(_collective_device(), torch.float64)
        dist.all_reduce(total)
        return total.cpu()

    def max(self, value: int) -> int:
        """The largest `value` of any rank."""
        if self.world == 1:
            return value
        top = torch.tensor([value], device=_collective_device())
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        return int(top.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _collective_device() -> torch.device:
    """NCCL reduces tensors on this rank's GPU, gloo on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
