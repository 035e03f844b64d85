"""Supervised fine-tuning: cross-entropy on the action-bin tokens of demonstration chunks."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch.nn import functional as F

from svrl_core.config import ConfigError, SftConfig
from svrl_core.data import DemoDataset, iterate_chunk_batches
from svrl_core.policies import PolicyInputs, VLAPolicy
from svrl_core.progress import Progress
from svrl_core.training import DeepSpeedTrainer
from svrl_core.training.ranks import Ranks


def sft_loss(logits: torch.Tensor, target_bins: torch.Tensor, mask: torch.Tensor,
             bin_centres: torch.Tensor | None = None, mean_l1_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """logits (B, T, n_bins), target_bins (B, T), mask (B, T) bool -> mean CE over real tokens, plus
    `mean_l1_weight` x the L1 distance between each token's expected bin centre (what mean decoding
    acts on; `bin_centres` (n_bins,), normalized) and its label's centre."""
    weight = mask.float()

    def token_mean(values: torch.Tensor) -> torch.Tensor:  # (B, T) -> mean over real tokens
        return (values * weight).sum() / weight.sum().clamp(min=1.0)

    ce = token_mean(F.cross_entropy(logits.transpose(1, 2), target_bins, reduction="none"))
    metrics = {"loss": ce.item()}
    loss = ce
    if mean_l1_weight:
        expected = logits.softmax(-1) @ bin_centres  # (B, T)
        mean_l1 = token_mean((expected - bin_centres[target_bins]).abs())
        loss = ce + mean_l1_weight * mean_l1
        metrics["mean_l1"] = mean_l1.item()
    with torch.no_grad():
        metrics["token_accuracy"] = float(token_mean((logits.argmax(-1) == target_bins).float()))
    return loss, metrics


def scheduled_lr(cfg: SftConfig, step: int) -> float:
    """The learning rate of (1-based) `step`: constant, or cosine from `lr` to 0 at the last step."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(cfg.steps - 1, 1)))


class StateNoise:
    """Gaussian noise on the proprio the network reads (not on what relative labels are measured from), so
    that it cannot copy the arm's state forward and must find the target in the image."""

    def __init__(self, std: np.ndarray, rng: np.random.Generator):
        self.std, self.rng = std, rng  # (S,) per state dim

    def __call__(self, states: np.ndarray) -> np.ndarray:
        """(B, S) -> (B, S) float32."""
        if not self.std.any():
            return states
        return (states + self.rng.normal(size=states.shape) * self.std).astype(np.float32)


def sft_step(trainer: DeepSpeedTrainer, inputs: PolicyInputs, targets: torch.Tensor, mask: torch.Tensor,
             bin_centres: torch.Tensor, cfg: SftConfig, batch_tokens: int | None = None,
             ranks: Ranks = Ranks()) -> dict[str, float]:
    """One optimizer step on this rank's rows (B) of a batch with `batch_tokens` real tokens on all ranks
    (default: these rows'), in micro-batches of at most `cfg.micro_batch_size` rows. Each micro-batch's
    token-mean loss is weighted by its share of the batch's real tokens, so the accumulated gradient (and
    every metric) is the whole batch's."""
    micro_batches = list(torch.arange(len(targets)).split(cfg.micro_batch_size or len(targets)))
    n_micro = ranks.max(len(micro_batches))  # every rank backpropagates equally often (see grpo_trainer)
    n_tokens = max(int(mask.sum()) if batch_tokens is None else batch_tokens, 1)
    totals: dict[str, float] = {}
    for m in range(n_micro):
        if m < len(micro_batches):
            rows = micro_batches[m]
            share = float(mask[rows].sum()) / n_tokens
            loss, metrics = sft_loss(trainer.forward(inputs.select(rows)), targets[rows], mask[rows], bin_centres,
                                     cfg.mean_l1_weight)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + value * share
            loss = loss * share
        else:
            loss = trainer.forward(inputs.select(torch.tensor([0]))).sum() * 0.0
        trainer.accumulate(loss * ranks.world, boundary=m == n_micro - 1)  # DeepSpeed averages over ranks
    summed = dict(zip(totals, ranks.sum(torch.tensor(list(totals.values()), dtype=torch.float64)).tolist()))
    return {**summed, "grad_norm": trainer.step()}


def train_sft(policy: VLAPolicy, data: DemoDataset, instructions: list[str], cfg: SftConfig,
              engine_overrides: dict | None = None) -> list[dict]:
    """Train `policy` in place; returns the logged metrics rows. On several ranks every rank draws the same
    batch of `cfg.batch_size` chunks and trains its share of the rows, so the result is one rank's."""
    torch.manual_seed(cfg.seed)
    trainer = DeepSpeedTrainer(policy.model, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.batch_size,
                               engine_overrides)
    ranks = Ranks.of_process_group()
    batches = iterate_chunk_batches(data, instructions, policy.chunk_size, cfg.batch_size,
                                    np.random.default_rng(cfg.seed))
    noisy_states = StateNoise(cfg.state_noise * np.asarray(data.stats["observation.state"]["std"]),
                              np.random.default_rng([cfg.seed, 0, 1]))
    bin_centres = torch.from_numpy(policy.actions.bin_centres).float()  # (n_bins,)
    progress, history, start = Progress("sft", cfg.steps, "steps"), [], time.monotonic()
    policy.model.train()
    for step in range(1, cfg.steps + 1):
        batch = next(batches)
        trainer.set_lr(scheduled_lr(cfg, step))
        rows = ranks.share(len(batch.states))  # this rank's rows of the batch
        if not rows:
            raise ConfigError(f"{len(batch.states)} demo chunks per batch for {ranks.world} ranks: raise "
                              f"sft.batch_size (or record more demos) to at least compute.ranks")
        states = noisy_states(batch.states)[rows]  # the noise of the whole batch: the same on every rank
        inputs = policy.prepare_arrays({cam: images[rows] for cam, images in batch.images.items()}, states,
                                       [batch.instructions[i] for i in rows])
        targets = policy.actions.encode(batch.actions[rows], batch.states[rows])  # (B, K, D)
        targets = torch.from_numpy(targets).flatten(1)  # (B, K * D)
        mask = torch.from_numpy(np.repeat(batch.action_mask[rows], policy.action_dim, axis=1))  # (B, K * D)
        batch_tokens = int(batch.action_mask.sum()) * policy.action_dim
        metrics = sft_step(trainer, inputs, targets, mask, bin_centres, cfg, batch_tokens, ranks)
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, **metrics, "lr": scheduled_lr(cfg, step),
                            "steps_per_s": step / (time.monotonic() - start)})
        progress.update(step, loss=metrics["loss"], acc=metrics["token_accuracy"])
    policy.model.eval()
    return history
