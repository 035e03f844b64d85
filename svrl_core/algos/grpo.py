"""GRPO as SimpleVLA-RL uses it: pure tensor functions, no knowledge of distribution.

    group_advantages -> keep_mixed_groups -> clipped_policy_loss

Binary success reward per trajectory, group-normalized advantage (unbiased std + 1e-6),
PPO clipped surrogate with asymmetric clip [1 - clip_low, 1 + clip_high], no KL term.
"""

from __future__ import annotations

from typing import Literal

import torch

LossAggregation = Literal["seq-mean-token-mean", "token-mean"]
AGGREGATIONS = ("seq-mean-token-mean", "token-mean")
ADVANTAGE_EPS = 1e-6


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (N,) ordered group by group, N = n_groups * group_size -> advantages (N,)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)  # (n_groups, G)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, correction=1)
    return ((grouped - mean) / (std + ADVANTAGE_EPS)).view(-1)


def keep_mixed_groups(rewards: torch.Tensor, group_size: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """rewards (N,) -> (n_groups,) bool: True where the group has both successes and failures and its
    success rate lies in [low, high] (SimpleVLA-RL keeps [0.1, 0.9]; equal to mixed-only for G <= 10)."""
    rate = rewards.float().view(-1, group_size).mean(dim=1)  # (n_groups,)
    return (rate > 0) & (rate < 1) & (rate >= low) & (rate <= high)


def aggregate_tokens(values: torch.Tensor, mask: torch.Tensor, mode: LossAggregation) -> torch.Tensor:
    """values, mask (N, T) -> scalar.

    seq-mean-token-mean: mean over each trajectory's valid tokens, then over trajectories
    (SimpleVLA-RL / verl); token-mean: one mean over all valid tokens (RLinf).
    """
    mask = mask.float()
    if mode == "token-mean":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        per_seq = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (N,)
        has_tokens = mask.sum(dim=1) > 0
        return per_seq[has_tokens].mean() if has_tokens.any() else values.sum() * 0.0
    raise ValueError(f"unknown loss aggregation {mode!r}; valid: {AGGREGATIONS}")


def clipped_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_low: float, clip_high: float,
                        aggregation: LossAggregation) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with asymmetric clipping.

    log_probs, old_log_probs, mask: (N, T) per action token; advantages: (N,) per trajectory.
    Returns (loss, metrics) with clip fraction and approximate KL over valid tokens.
    """
    log_ratio = log_probs - old_log_probs  # (N, T)
    ratio = log_ratio.exp()
    adv = advantages[:, None]  # (N, 1), broadcast to every token
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    loss = aggregate_tokens(-torch.minimum(unclipped, clipped), mask, aggregation)
    with torch.no_grad():
        valid = mask.float()
        n_valid = valid.sum().clamp(min=1.0)
        metrics = {
            "clip_fraction": float(((clipped < unclipped).float() * valid).sum() / n_valid),
            "approx_kl": float((((ratio - 1) - log_ratio) * valid).sum() / n_valid),
        }
    return loss, metrics
