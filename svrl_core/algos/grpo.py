"""GRPO as SimpleVLA-RL uses it: pure tensor functions, no knowledge of distribution.

    group_advantages -> keep_mixed_groups -> clipped_policy_loss

(`clipped_token_losses` weighted by `sequence_token_weights` is the same loss, split into
micro-batches and over ranks.)

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


def sequence_token_weights(tokens: torch.Tensor, mode: LossAggregation) -> torch.Tensor:
    """tokens (N,) valid tokens of each sequence of a mini-batch -> (N,) the weight of each of a sequence's
    tokens, so that sum(weight_i * values over i's valid tokens) == aggregate_tokens(values, mask, mode).

    This is what lets a mini-batch be split into micro-batches (and over ranks): a sequence keeps the
    weight of its own total count, whichever micro-batch holds each of its tokens."""
    tokens = tokens.double()
    if mode == "token-mean":
        return torch.full_like(tokens, 1.0 / max(float(tokens.sum()), 1.0))
    if mode == "seq-mean-token-mean":
        has_tokens = tokens > 0
        return torch.where(has_tokens, 1.0 / (tokens.clamp(min=1.0) * max(int(has_tokens.sum()), 1)), 0.0)
    raise ValueError(f"unknown loss aggregation {mode!r}; valid: {AGGREGATIONS}")


def clipped_token_losses(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                         clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO clipped surrogate per token, asymmetric clip [1 - clip_low, 1 + clip_high].

    log_probs, old_log_probs: (..., T); advantages broadcast against them (e.g. (N, 1) per sequence).
    Returns (loss per token, True where clipping bound it)."""
    ratio = (log_probs - old_log_probs).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).detach()


def approx_kl(log_probs: torch.Tensor, old_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(old || new): (ratio - 1) - log ratio (Schulman's k3), no gradient."""
    log_ratio = (log_probs - old_log_probs).detach()
    return log_ratio.exp() - 1 - log_ratio


def clipped_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_low: float, clip_high: float,
                        aggregation: LossAggregation) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with asymmetric clipping.

    log_probs, old_log_probs, mask: (N, T) per action token; advantages: (N,) per trajectory.
    Returns (loss, metrics) with clip fraction and approximate KL over valid tokens.
    """
    token_losses, clipped = clipped_token_losses(log_probs, old_log_probs, advantages[:, None], clip_low, clip_high)
    loss = aggregate_tokens(token_losses, mask, aggregation)
    with torch.no_grad():
        valid = mask.float()
        n_valid = valid.sum().clamp(min=1.0)
        metrics = {
            "clip_fraction": float((clipped.float() * valid).sum() / n_valid),
            "approx_kl": float((approx_kl(log_probs, old_log_probs) * valid).sum() / n_valid),
        }
    return loss, metrics
