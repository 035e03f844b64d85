"""The GRPO training loop: rollout groups (grpo_batch.py), clipped updates through DeepSpeed, in
micro-batches and over ranks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from svrl_core.algos.curve import LearningCurve
from svrl_core.algos.grpo import approx_kl, clipped_token_losses, group_advantages, sequence_token_weights
from svrl_core.algos.grpo_batch import KeptBatch, PromptSampler, collect_mixed_groups, prompt_sampler
from svrl_core.config import ConfigError, RlConfig
from svrl_core.experts.layouts import SeedMap, consecutive
from svrl_core.io import remove_directory
from svrl_core.policies import PolicyInputs, VLAPolicy, token_log_probs
from svrl_core.progress import Progress
from svrl_core.rollout import EnvPool, RolloutStats, Trajectory
from svrl_core.training import DeepSpeedTrainer, SegmentEnded, load_training_state, save_training_state
from svrl_core.training.engine import init_process_group, zero_stage
from svrl_core.training.ranks import Ranks

logger = logging.getLogger("svrl")


@dataclass
class QueryBatch:
    """Every policy query of a list of trajectories, flattened."""

    inputs: PolicyInputs  # Q rows
    bins: torch.Tensor  # (Q, K * D)
    mask: torch.Tensor  # (Q, K * D) bool, True for executed actions
    owner: torch.Tensor  # (Q,) index of the trajectory in the list
    chunk: torch.Tensor  # (Q,) position of the query within its trajectory

    @classmethod
    def of(cls, policy: VLAPolicy, trajectories: list[Trajectory]) -> "QueryBatch":
        return cls(
            inputs=policy.prepare([o for t in trajectories for o in t.observations]),
            bins=torch.from_numpy(np.concatenate([np.stack(t.bins) for t in trajectories])).flatten(1),
            mask=torch.from_numpy(np.concatenate([t.action_mask(policy.action_dim) for t in trajectories])).flatten(1),
            owner=torch.tensor([i for i, t in enumerate(trajectories) for _ in t.observations]),
            chunk=torch.tensor([c for t in trajectories for c in range(len(t.observations))]))

    def per_trajectory(self, values: torch.Tensor, n_chunks: int) -> torch.Tensor:
        """(Q, K * D) per-query values -> (N, n_chunks * K * D) per trajectory, zero padded."""
        n_traj = int(self.owner.max()) + 1
        padded = values.new_zeros(n_traj, n_chunks, values.shape[1])
        return padded.index_put((self.owner, self.chunk), values).flatten(1)

    def trajectory_mask(self, n_chunks: int) -> torch.Tensor:
        """(N, n_chunks * K * D) bool: the executed tokens of each trajectory."""
        return self.per_trajectory(self.mask.float(), n_chunks) > 0

    def scored(self, logits: torch.Tensor, temperature: float, n_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, K * D, n_bins) logits of these queries -> the sampled bins' log-probs per trajectory
        (N, n_chunks * K * D) and each token's entropy (Q, K * D)."""
        log_probs, entropy = token_log_probs(logits, self.bins, temperature)
        return self.per_trajectory(log_probs, n_chunks), entropy


def old_log_probs(policy: VLAPolicy, queries: QueryBatch, temperature: float, batch: int) -> torch.Tensor:
    """(Q, K * D) log-probs of the sampled bins under the current policy, recomputed after rollout,
    `batch` queries per forward."""
    with torch.no_grad():
        parts = []
        for rows in torch.arange(len(queries.bins)).split(batch):
            parts.append(token_log_probs(policy.model(queries.inputs.select(rows)), queries.bins[rows], temperature)[0])
        return torch.cat(parts)


@dataclass
class HeldQueries:
    """The queries of the trajectories this rank holds, with what the loss needs of each."""

    queries: QueryBatch
    position: torch.Tensor  # (Q,) each query's trajectory, as its position in the kept batch
    old_log_probs: torch.Tensor  # (Q, K * D)

    @classmethod
    def of(cls, policy: VLAPolicy, batch: KeptBatch, cfg: RlConfig) -> "HeldQueries | None":
        positions = sorted(batch.held)
        if not positions:
            return None
        queries = QueryBatch.of(policy, [batch.held[i] for i in positions])
        return cls(queries, torch.tensor(positions)[queries.owner],
                   old_log_probs(policy, queries, cfg.temperature, cfg.micro_batch_chunks))


def grpo_update(policy: VLAPolicy, trainer: DeepSpeedTrainer, batch: KeptBatch, cfg: RlConfig,
                rng: np.random.Generator, ranks: Ranks = Ranks()) -> dict[str, float]:
    """One GRPO step over the kept groups: clipped mini-batch updates against the rollout policy.

    A mini-batch is `mini_batch_trajectories` trajectories of whole groups, the same on every rank;
    each rank trains the ones it holds, in micro-batches of at most `micro_batch_chunks` queries, and
    the gradients of all of them add up to the whole mini-batch's before the one optimizer step."""
    advantages = group_advantages(batch.rewards, cfg.group_size)  # (N,)
    held = HeldQueries.of(policy, batch, cfg)
    spare = policy.prepare([batch.spare]) if held is None else None
    policy.model.train()
    rows: list[dict[str, float]] = []
    for _ in range(cfg.epochs):
        groups = rng.permutation(len(batch) // cfg.group_size)  # mini-batches hold whole groups
        order = (groups[:, None] * cfg.group_size + np.arange(cfg.group_size)).reshape(-1)
        for start in range(0, len(order), cfg.mini_batch_trajectories):
            members = torch.from_numpy(order[start:start + cfg.mini_batch_trajectories])
            weights = torch.zeros(len(batch), dtype=torch.float64)
            weights[members] = sequence_token_weights(batch.tokens[members], cfg.loss_agg)  # (N,)
            rows.append(train_mini_batch(trainer, held, advantages, weights, cfg, ranks, spare))
    policy.model.eval()
    return {k: float(np.mean([m[k] for m in rows])) for k in rows[0]}


def train_mini_batch(trainer: DeepSpeedTrainer, held: HeldQueries | None, advantages: torch.Tensor,
                     weights: torch.Tensor, cfg: RlConfig, ranks: Ranks, spare: PolicyInputs | None) -> dict:
    """Accumulate the gradient of sum(weight x clipped loss) over this rank's queries of the mini-batch
    (those whose trajectory has a weight) in micro-batches, then step. Every rank runs as many
    micro-batches as the busiest one (the others forward a spare input at zero weight), since
    DeepSpeed reduces gradients across ranks inside each backward."""
    rows = torch.nonzero(weights[held.position] > 0).flatten() if held else torch.zeros(0, dtype=torch.long)
    micro_batches = list(rows.split(cfg.micro_batch_chunks))
    n_micro = ranks.max(max(len(micro_batches), 1))
    sums = torch.zeros(5, dtype=torch.float64)  # loss, clipped tokens, approx KL, entropy, valid tokens
    for m in range(n_micro):
        if m < len(micro_batches):
            loss, metric_sums = micro_batch_loss(trainer, held, micro_batches[m], advantages, weights, cfg)
            sums += metric_sums
        else:
            idle_input = spare if held is None else held.queries.inputs.select(torch.tensor([0]))
            loss = trainer.forward(idle_input).sum() * 0.0
        trainer.accumulate(loss * ranks.world, boundary=m == n_micro - 1)  # DeepSpeed averages over ranks
    grad_norm = trainer.step()
    loss, clipped, kl, entropy, n_tokens = ranks.sum(sums).tolist()
    n_tokens = max(n_tokens, 1.0)
    return {"loss": loss, "clip_fraction": clipped / n_tokens, "approx_kl": kl / n_tokens,
            "entropy": entropy / n_tokens, "grad_norm": grad_norm}


def micro_batch_loss(trainer: DeepSpeedTrainer, held: HeldQueries, rows: torch.Tensor, advantages: torch.Tensor,
                     weights: torch.Tensor, cfg: RlConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted clipped loss of these query rows (R,) and the sums of its metrics."""
    queries, position = held.queries, held.position[rows]
    logits = trainer.forward(queries.inputs.select(rows))  # (R, K * D, n_bins)
    log_probs, entropy = token_log_probs(logits, queries.bins[rows], cfg.temperature)  # (R, K * D) each
    old = held.old_log_probs[rows]
    token_losses, clipped = clipped_token_losses(log_probs, old, advantages[position, None], cfg.clip_low,
                                                 cfg.clip_high)  # (R, K * D)
    token_weights = queries.mask[rows] * weights[position, None]  # (R, K * D), float64
    loss = (token_losses.double() * token_weights).sum()
    with torch.no_grad():
        valid = queries.mask[rows].double()
        metric_sums = torch.stack([loss.detach(), (clipped * valid).sum(), (approx_kl(log_probs, old) * valid).sum(),
                                   (entropy.detach() * valid).sum(), valid.sum()])
    return loss, metric_sums


def why_nothing_to_learn(success_rate: float) -> str:
    if success_rate >= 0.5:
        return "every group succeeded throughout; the policy has nothing left to learn on these initial states"
    return ("every group failed throughout; GRPO needs a policy that sometimes succeeds (SimpleVLA-RL's "
            "zero-success limit): fine-tune on more demonstrations first")


def iteration_seed(seed: int, iteration: int) -> int:
    """The seed of one iteration's mini-batch order: recorded per row, so any update can be replayed."""
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


def idle_streak(history: list[dict]) -> int:
    """Trailing iterations that had no mixed group (and so no update)."""
    streak = 0
    for row in reversed(history):
        if "loss" in row:
            break
        streak += 1
    return streak


def grpo_iteration(policy: VLAPolicy, pool: EnvPool, trainer: DeepSpeedTrainer, sampler: PromptSampler,
                   cfg: RlConfig, iteration: int, ranks: Ranks = Ranks()) -> dict:
    """Rollout with dynamic sampling, then one GRPO update if any group had mixed rewards."""
    seed = iteration_seed(cfg.seed, iteration)
    stats, first_prompt, began = RolloutStats(), sampler.cursor, time.monotonic()
    kept, row = collect_mixed_groups(policy, pool, sampler, cfg, stats, ranks)
    rollout_s = time.monotonic() - began
    row.update(iteration=iteration, shuffle_seed=seed, prompts=[first_prompt, sampler.cursor],
               env_steps=int(ranks.sum(torch.tensor([float(stats.env_steps)])).item()), rollout_time_s=rollout_s,
               inference_time_s=stats.inference_time_s,
               restarted_episodes=int(ranks.sum(torch.tensor([float(stats.restarted_episodes)])).item()))
    row["env_steps_per_s"] = row["env_steps"] / max(rollout_s, 1e-9)
    if len(kept):
        began = time.monotonic()
        row.update(grpo_update(policy, trainer, kept, cfg, np.random.default_rng(seed), ranks),
                   update_time_s=time.monotonic() - began)
    elif row.get("short_batch"):
        pass  # collect_mixed_groups said why
    elif ranks.is_writer:
        logger.warning("rl iteration %d: no group had mixed rewards (success rate %.3f over %d episodes): %s",
                       iteration, row["success_rate"], row["episodes"], why_nothing_to_learn(row["success_rate"]))
    return row


def check_ranks(cfg: RlConfig, ranks: Ranks) -> None:
    """Every rank needs episodes of its own in each rollout batch."""
    if ranks.world > cfg.prompts_per_batch * cfg.group_size:
        raise ConfigError(f"{ranks.world} ranks for rollout batches of {cfg.prompts_per_batch * cfg.group_size} "
                          f"episodes (rl.prompts_per_batch x rl.group_size): use at most that many ranks "
                          f"(compute.ranks)")


class SegmentBudget:
    """A segment's wall-time budget (None: no limit): the next iteration is expected to take as long as
    the longest one so far. Ranks decide together, so all of them stop at the same iteration."""

    def __init__(self, max_wall_s: float | None, ranks: Ranks):
        self.max_wall_s, self.ranks = max_wall_s, ranks
        self.began = self.iteration_began = time.monotonic()
        self.longest = 0.0

    def start_iteration(self) -> float:
        self.iteration_began = time.monotonic()
        return self.iteration_began

    def next_iteration_would_overrun(self) -> bool:
        if self.max_wall_s is None:
            return False
        now = time.monotonic()
        self.longest = max(self.longest, now - self.iteration_began)
        return bool(self.ranks.max(int(now - self.began + self.longest > self.max_wall_s)))


def train_grpo(policy: VLAPolicy, pool: EnvPool, tasks: list[str], cfg: RlConfig,
               on_iteration: Callable[[dict], None] = lambda row: None,
               state_dir: str | Path | None = None, fingerprint: str = "",
               engine_overrides: dict | None = None, seed_of: SeedMap = consecutive,
               best_dir: str | None = None) -> list[dict]:
    """Run `cfg.iterations` GRPO iterations on `policy` in place; returns one metrics row per iteration.
    `seed_of` picks the initial states (every one, or the layouts the expert solves).

    Under a multi-rank launcher every rank calls this with its own env pool: each rolls out its
    share, the kept groups are chosen from all ranks' rewards, and the result equals one rank's.

    With `state_dir`, the state is saved every `cfg.checkpoint_every` iterations and a run
    with the same fingerprint resumes from it, giving the same metrics as an uninterrupted run.
    With `cfg.curve_every`, rows carry learning-curve points (svrl_core/algos/curve.py) and the
    policy of the best one so far is saved to `best_dir`.
    """
    if cfg.max_wall_s is not None and state_dir is None:
        raise ConfigError("rl.max_wall_s ends a segment, which needs somewhere to keep its state (paths.rl_state)")
    torch.manual_seed(cfg.seed)
    init_process_group()
    ranks = Ranks.of_process_group()
    check_ranks(cfg, ranks)
    sampler, history = prompt_sampler(tasks, cfg, seed_of), []
    partitioned = zero_stage(engine_overrides) > 0
    saved = load_training_state(state_dir, fingerprint, ranks, partitioned) if state_dir else None
    if saved:  # weights first: ZeRO builds its partitions from them when the engine starts
        policy.load_weights_of(saved.policy)
    elif best_dir and ranks.is_writer:
        remove_directory(best_dir)  # an earlier run's best, never this run's
    trainer = DeepSpeedTrainer(policy.model, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.mini_batch_trajectories,
                               engine_overrides)
    if saved:
        trainer.load_optimizer_state(saved.optimizer_state)
        history, sampler.cursor = saved.progress["history"], saved.progress["prompt_cursor"]
        sampler.uniform_in_pass = saved.progress.get("uniform_prompts", {})
        logger.info("rl: resuming after iteration %d from %s", len(history), state_dir)
    progress = Progress("rl", cfg.iterations, "iterations")
    stalled = lambda: idle_streak(history) >= cfg.max_idle_iterations  # noqa: E731
    budget = SegmentBudget(cfg.max_wall_s, ranks)
    curve = LearningCurve(policy, pool, tasks, cfg, seed_of, ranks, best_dir)
    while len(history) < cfg.iterations and not stalled():
        began, start = budget.start_iteration(), {}
        if curve.requests and not history:  # the starting policy's point
            curve.measure(start, "curve_before")
        row = {**start, **grpo_iteration(policy, pool, trainer, sampler, cfg, len(history) + 1, ranks)}
        history.append(row)
        last = len(history) == cfg.iterations or stalled()
        if curve.due(len(history), last):
            curve.measure(row)
            row["curve_best"] = curve.keep_if_best(row, history)
        row["run_time_s"] = (history[-2]["run_time_s"] if len(history) > 1 else 0.0) + time.monotonic() - began
        if ranks.is_writer:
            on_iteration(row)
            progress.update(len(history), success=row["success_rate"], kept=row["kept_group_fraction"])
        segment_ends = not last and budget.next_iteration_would_overrun()
        if state_dir and (len(history) % cfg.checkpoint_every == 0 or last or segment_ends):
            save_training_state(state_dir, fingerprint, policy, trainer.optimizer_state(),
                                {"history": history, "prompt_cursor": sampler.cursor, "step": len(history),
                                 "uniform_prompts": sampler.uniform_in_pass}, ranks,
                                partitioned)
        if segment_ends:
            raise SegmentEnded(f"rl stopped after iteration {len(history)} of {cfg.iterations}: the next one would "
                               f"not fit in rl.max_wall_s={cfg.max_wall_s:g}s; its state is in {state_dir}, and "
                               "running the stage again (make run, dvc repro) continues the run")
    if stalled() and ranks.is_writer:
        logger.warning("rl: stopped after %d iterations without a mixed group (last success rate %.3f): %s",
                       idle_streak(history), history[-1]["success_rate"], why_nothing_to_learn(history[-1]["success_rate"]))
    return history
