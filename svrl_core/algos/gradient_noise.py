"""How much of a GRPO update is signal? The gradient noise scale of McCandlish et al. (2018).

Each kept group gives an independent estimate g_i of the policy gradient G. With n of them,
B_noise = tr(Sigma) / |G|^2 is the batch size, in groups, at which the batch mean's noise equals
its signal: a batch of B groups has a mean whose expected squared length is |G|^2 (1 + B_noise / B).
Far below B_noise an optimizer step mostly follows noise; far above it, more rollouts per step
buy little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from svrl_core.algos.grpo import LossAggregation, clipped_policy_loss, group_advantages
from svrl_core.algos.grpo_trainer import QueryBatch
from svrl_core.policies import VLAPolicy
from svrl_core.rollout import Trajectory


@dataclass(frozen=True)
class NoiseScale:
    groups: int
    signal: float  # unbiased estimate of |G|^2 (negative when noise swamps it)
    signal_se: float  # its jackknife standard error over groups
    noise: float  # tr(Sigma), the variance of one group's gradient summed over parameters
    split_cosine: float  # mean cosine between the mean gradients of two random halves of the groups

    @property
    def noise_scale(self) -> float:
        """B_noise = tr(Sigma) / |G|^2 in groups (inf when no signal was measured)."""
        return self.noise / self.signal if self.signal > 0 else float("inf")

    @property
    def noise_scale_lower(self) -> float:
        """B_noise with |G|^2 at its estimate + 2 standard errors: what the data rule out below (inf when
        even that |G|^2 is not positive)."""
        high = self.signal + 2 * self.signal_se
        return self.noise / high if high > 0 else float("inf")

    def cosine_at(self, batch_groups: float) -> float:
        """The expected cosine between two independent batches of this many groups."""
        return 1.0 / (1.0 + self.noise_scale / batch_groups)


def _signal_and_noise(n: int, total_sq: float, squares: float) -> tuple[float, float]:
    """From n groups' |sum g_i|^2 and sum |g_i|^2 -> (unbiased |G|^2, tr(Sigma))."""
    signal = (total_sq - squares) / (n * (n - 1))  # the mean of g_i . g_j over i != j
    noise = (squares - total_sq / n) / (n - 1)
    return signal, noise


def noise_scale(grads: np.ndarray, rng: np.random.Generator, splits: int = 20) -> NoiseScale:
    """grads (n, P), one flattened gradient per group (n >= 4) -> the noise scale and its spread."""
    n = len(grads)
    if n < 4:
        raise ValueError(f"the noise scale needs at least 4 groups, got {n}: roll out more prompts")
    total = grads.sum(axis=0, dtype=np.float64)  # (P,)
    row_sq = np.array([float(g.astype(np.float64) @ g) for g in grads])  # (n,) |g_i|^2
    row_dot = np.array([float(g @ total) for g in grads])  # (n,) g_i . sum
    total_sq, squares = float(total @ total), float(row_sq.sum())
    signal, noise = _signal_and_noise(n, total_sq, squares)
    # leave group i out: |sum - g_i|^2 = |sum|^2 - 2 g_i . sum + |g_i|^2, without copying (n, P)
    leave_one_out = np.array([_signal_and_noise(n - 1, total_sq - 2 * d + q, squares - q)[0]
                              for d, q in zip(row_dot, row_sq)])
    signal_se = float(np.sqrt((n - 1) / n * np.sum((leave_one_out - leave_one_out.mean()) ** 2)))
    cosines = []
    for _ in range(splits):
        half = np.zeros_like(total)  # (P,)
        for i in rng.permutation(n)[: n // 2]:
            half += grads[i]
        rest = total - half  # the other half's sum: cosines ignore the 1/n
        cosines.append(float(half @ rest / (np.linalg.norm(half) * np.linalg.norm(rest) + 1e-30)))
    return NoiseScale(n, signal, signal_se, noise, float(np.mean(cosines)))


def parameter_slices(model: torch.nn.Module) -> dict[str, slice]:
    """Each trainable tensor's columns in group_gradients' rows."""
    slices, start = {}, 0
    for name, param in model.named_parameters():
        if param.requires_grad:
            slices[name] = slice(start, start + param.numel())
            start += param.numel()
    return slices


def group_gradients(policy: VLAPolicy, groups: list[list[Trajectory]], temperature: float,
                    aggregation: LossAggregation) -> np.ndarray:
    """The GRPO loss gradient of each group at the rollout policy (ratio 1, so no clipping) -> (n, P) float32."""
    params = [p for p in policy.model.parameters() if p.requires_grad]
    policy.model.train()
    rows = []
    for group in groups:
        advantages = group_advantages(torch.tensor([float(t.success) for t in group]), len(group))  # (G,)
        n_chunks = max(len(t.observations) for t in group)
        queries = QueryBatch.of(policy, group)
        per_traj, _ = queries.scored(policy.model(queries.inputs), temperature, n_chunks)  # (G, T)
        mask = queries.trajectory_mask(n_chunks)
        loss, _ = clipped_policy_loss(per_traj, per_traj.detach(), advantages, mask, 0.2, 0.2, aggregation)  # ratio 1: unclipped
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.flatten() for g in grads]).numpy())
    policy.model.eval()
    return np.stack(rows)
