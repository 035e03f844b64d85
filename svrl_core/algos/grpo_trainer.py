"""The GRPO training loop: rollout groups, dynamic sampling, clipped updates through DeepSpeed."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from svrl_core.algos.grpo import clipped_policy_loss, group_advantages, keep_mixed_groups
from svrl_core.config import RlConfig
from svrl_core.experts.layouts import SeedMap, consecutive
from svrl_core.policies import PolicyInputs, VLAPolicy, token_log_probs
from svrl_core.progress import Progress
from svrl_core.rollout import EnvPool, EpisodeRequest, RolloutStats, Trajectory, run_episodes
from svrl_core.training import DeepSpeedTrainer, load_training_state, save_training_state

logger = logging.getLogger("svrl")
INFERENCE_BATCH = 512


@dataclass
class PromptSampler:
    """Hands out (task, initial state) prompts from `seed_start` on. The cursor alone is the state,
    so a resumed run continues the same sequence.

    In order: tasks round robin, states cycling over `initial_states` (None: a new state every
    prompt). Shuffled (`shuffle_seed` set, as SimpleVLA-RL's dataloader): each pass over the
    tasks x initial_states prompts is a fresh permutation drawn from (shuffle_seed, pass)."""

    tasks: list[str]
    seed_start: int
    cursor: int = 0
    initial_states: int | None = None
    shuffle_seed: int | None = None
    seed_of: SeedMap = consecutive  # the n-th initial state from seed_start: every one, or the solvable ones

    def prompt(self, index: int) -> tuple[str, int]:
        """The index-th prompt: (task, initial state)."""
        if self.shuffle_seed is not None:
            n_prompts = len(self.tasks) * self.initial_states
            epoch, position = divmod(index, n_prompts)
            index = int(np.random.default_rng([self.shuffle_seed, epoch]).permutation(n_prompts)[position])
        task = self.tasks[index % len(self.tasks)]
        if self.initial_states is None:
            return task, self.seed_of(task, self.seed_start, index)
        return task, self.seed_of(task, self.seed_start, (index // len(self.tasks)) % self.initial_states)

    def next_requests(self, n_prompts: int, group_size: int) -> list[EpisodeRequest]:
        requests = []
        for _ in range(n_prompts):
            task, seed = self.prompt(self.cursor)
            requests += [EpisodeRequest(task, seed, group=self.cursor)] * group_size
            self.cursor += 1
        return requests


def prompt_sampler(tasks: list[str], cfg: RlConfig, seed_of: SeedMap = consecutive) -> PromptSampler:
    shuffle_seed = cfg.seed if cfg.prompt_order == "shuffle" else None
    return PromptSampler(tasks, cfg.seed_start, initial_states=cfg.initial_states, shuffle_seed=shuffle_seed,
                         seed_of=seed_of)


def may_refill(cfg: RlConfig, attempt: int, episodes: int) -> bool:
    """Another rollout batch? The fixed batch is capped by trajectories, the earlier one by refills."""
    if cfg.train_groups is None:
        return attempt <= cfg.max_refills
    return episodes + cfg.prompts_per_batch * cfg.group_size <= cfg.max_rollouts


def collect_mixed_groups(policy: VLAPolicy, pool: EnvPool, sampler: PromptSampler, cfg: RlConfig,
                         generator: torch.Generator, stats: RolloutStats) -> tuple[list[Trajectory], dict]:
    """Roll out batches until enough groups are kept: exactly `train_groups` (surplus dropped, nothing
    if max_rollouts runs out first), or without it at least `min_valid_groups` (or refills run out)."""
    kept: list[Trajectory] = []
    n_groups = n_mixed = n_success = n_episodes = refills = 0
    target = (cfg.train_groups or cfg.min_valid_groups) * cfg.group_size
    for attempt in itertools.count():
        if not may_refill(cfg, attempt, n_episodes):
            break
        requests = sampler.next_requests(cfg.prompts_per_batch, cfg.group_size)
        trajectories = run_episodes(policy, pool, requests, cfg.temperature, generator, stats)
        rewards = torch.tensor([float(t.success) for t in trajectories])
        mixed = keep_mixed_groups(rewards, cfg.group_size, *cfg.keep_success_range)  # (n_groups,)
        for g in torch.nonzero(mixed).flatten().tolist():
            kept += trajectories[g * cfg.group_size:(g + 1) * cfg.group_size]
        n_groups += len(mixed)
        n_mixed += int(mixed.sum())
        n_success += int(rewards.sum())
        n_episodes += len(trajectories)
        refills = attempt
        if not cfg.dynamic_sampling:  # ablation: train on every group, all-equal ones with zero advantage
            kept = trajectories if n_mixed else []
            break
        if len(kept) >= target:
            break
    info = {"success_rate": n_success / n_episodes, "kept_group_fraction": n_mixed / n_groups,
            "refills": refills, "episodes": n_episodes}
    if cfg.train_groups is not None and cfg.dynamic_sampling:
        info["trained_groups"] = cfg.train_groups if len(kept) >= target else 0
        info["dropped_groups"] = max(0, len(kept) - target) // cfg.group_size
        if len(kept) < target:
            logger.warning("rl: only %d of rl.train_groups=%d kept groups within rl.max_rollouts=%d trajectories: "
                           "update skipped (raise rl.max_rollouts or lower rl.train_groups)",
                           len(kept) // cfg.group_size, cfg.train_groups, cfg.max_rollouts)
            info["short_batch"] = True
        kept = kept[:target] if len(kept) >= target else []
    return kept, info


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


def old_log_probs(policy: VLAPolicy, queries: QueryBatch, temperature: float) -> torch.Tensor:
    """(Q, K * D) log-probs of the sampled bins under the current policy, recomputed after rollout."""
    with torch.no_grad():
        parts = []
        for start in range(0, len(queries.bins), INFERENCE_BATCH):
            rows = torch.arange(start, min(start + INFERENCE_BATCH, len(queries.bins)))
            parts.append(token_log_probs(policy.model(queries.inputs.select(rows)), queries.bins[rows], temperature)[0])
        return torch.cat(parts)


def grpo_update(policy: VLAPolicy, trainer: DeepSpeedTrainer, trajectories: list[Trajectory], cfg: RlConfig,
                rng: np.random.Generator) -> dict[str, float]:
    """One GRPO step over the kept groups: clipped mini-batch updates against the rollout policy."""
    advantages = group_advantages(torch.tensor([float(t.success) for t in trajectories]), cfg.group_size)  # (N,)
    n_chunks = max(len(t.observations) for t in trajectories)
    everything = QueryBatch.of(policy, trajectories)
    b_old = everything.per_trajectory(old_log_probs(policy, everything, cfg.temperature), n_chunks)  # (N, T)
    b_mask = everything.trajectory_mask(n_chunks)  # (N, T)
    policy.model.train()
    rows: list[dict[str, float]] = []
    for _ in range(cfg.epochs):
        groups = rng.permutation(len(trajectories) // cfg.group_size)  # mini-batches hold whole groups
        order = (groups[:, None] * cfg.group_size + np.arange(cfg.group_size)).reshape(-1)
        for start in range(0, len(order), cfg.mini_batch_trajectories):
            mb = order[start:start + cfg.mini_batch_trajectories]
            queries = QueryBatch.of(policy, [trajectories[i] for i in mb])
            mb_log_probs, entropy = queries.scored(trainer.forward(queries.inputs), cfg.temperature, n_chunks)
            loss, metrics = clipped_policy_loss(mb_log_probs, b_old[mb], advantages[mb], b_mask[mb],
                                                cfg.clip_low, cfg.clip_high, cfg.loss_agg)
            metrics["grad_norm"] = trainer.backward_step(loss)
            metrics["loss"] = loss.item()
            metrics["entropy"] = float(entropy.detach()[queries.mask].mean())
            rows.append(metrics)
    policy.model.eval()
    return {k: float(np.mean([m[k] for m in rows])) for k in rows[0]}


def why_nothing_to_learn(success_rate: float) -> str:
    if success_rate >= 0.5:
        return "every group succeeded throughout; the policy has nothing left to learn on these initial states"
    return ("every group failed throughout; GRPO needs a policy that sometimes succeeds (SimpleVLA-RL's "
            "zero-success limit): fine-tune on more demonstrations first")


def iteration_seed(seed: int, iteration: int) -> int:
    """The sampling seed of one iteration: recorded per row, so any iteration can be replayed."""
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
                   cfg: RlConfig, iteration: int) -> dict:
    """Rollout with dynamic sampling, then one GRPO update if any group had mixed rewards."""
    seed = iteration_seed(cfg.seed, iteration)
    generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    stats, first_prompt, began = RolloutStats(), sampler.cursor, time.monotonic()
    kept, row = collect_mixed_groups(policy, pool, sampler, cfg, generator, stats)
    rollout_s = time.monotonic() - began
    row.update(iteration=iteration, sampling_seed=seed, prompts=[first_prompt, sampler.cursor],
               env_steps=stats.env_steps, rollout_time_s=rollout_s, env_steps_per_s=stats.env_steps / max(rollout_s, 1e-9),
               inference_time_s=stats.inference_time_s, restarted_episodes=stats.restarted_episodes)
    if kept:
        began = time.monotonic()
        row.update(grpo_update(policy, trainer, kept, cfg, rng), update_time_s=time.monotonic() - began)
    elif row.get("short_batch"):
        pass  # collect_mixed_groups said why
    else:
        logger.warning("rl iteration %d: no group had mixed rewards (success rate %.3f over %d episodes): %s",
                       iteration, row["success_rate"], row["episodes"], why_nothing_to_learn(row["success_rate"]))
    return row


def train_grpo(policy: VLAPolicy, pool: EnvPool, tasks: list[str], cfg: RlConfig,
               on_iteration: Callable[[dict], None] = lambda row: None,
               state_dir: str | Path | None = None, fingerprint: str = "",
               engine_overrides: dict | None = None, seed_of: SeedMap = consecutive) -> list[dict]:
    """Run `cfg.iterations` GRPO iterations on `policy` in place; returns one metrics row per iteration.
    `seed_of` picks the initial states (every one, or the layouts the expert solves).

    With `state_dir`, the state is saved every `cfg.checkpoint_every` iterations and a run
    with the same fingerprint resumes from it, giving the same metrics as an uninterrupted run.
    """
    torch.manual_seed(cfg.seed)
    sampler, history = prompt_sampler(tasks, cfg, seed_of), []
    saved = load_training_state(state_dir, fingerprint) if state_dir else None
    if saved:  # weights first: ZeRO builds its partitions from them when the engine starts
        policy.load_weights_of(saved.policy)
    trainer = DeepSpeedTrainer(policy.model, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.mini_batch_trajectories,
                               engine_overrides)
    if saved:
        trainer.load_optimizer_state(saved.optimizer_state)
        history, sampler.cursor = saved.progress["history"], saved.progress["prompt_cursor"]
        logger.info("rl: resuming after iteration %d from %s", len(history), state_dir)
    progress = Progress("rl", cfg.iterations, "iterations")
    stalled = lambda: idle_streak(history) >= cfg.max_idle_iterations  # noqa: E731
    while len(history) < cfg.iterations and not stalled():
        row = grpo_iteration(policy, pool, trainer, sampler, cfg, len(history) + 1)
        history.append(row)
        on_iteration(row)
        progress.update(len(history), success=row["success_rate"], kept=row["kept_group_fraction"])
        last = len(history) == cfg.iterations or stalled()
        if state_dir and (len(history) % cfg.checkpoint_every == 0 or last):
            save_training_state(state_dir, fingerprint, policy, trainer.optimizer_state(),
                                {"history": history, "prompt_cursor": sampler.cursor})
    if stalled():
        logger.warning("rl: stopped after %d iterations without a mixed group (last success rate %.3f): %s",
                       idle_streak(history), history[-1]["success_rate"], why_nothing_to_learn(history[-1]["success_rate"]))
    return history
