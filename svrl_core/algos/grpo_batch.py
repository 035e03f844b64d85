"""What one GRPO iteration trains on: prompts, every rank's share of the rollouts, and the kept groups
(dynamic sampling, SimpleVLA-RL's fixed batch), chosen alike on every rank."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from svrl_core.algos.grpo import keep_mixed_groups
from svrl_core.config import RlConfig
from svrl_core.envs import Obs
from svrl_core.experts.layouts import SeedMap, consecutive
from svrl_core.policies import VLAPolicy
from svrl_core.rollout import EnvPool, EpisodeRequest, RolloutStats, Trajectory, run_episodes
from svrl_core.training.ranks import Ranks

logger = logging.getLogger("svrl")


@dataclass
class PromptSampler:
    """Hands out (task, initial state) prompts from `seed_start` on. The cursor alone is the state,
    so a resumed run continues the same sequence.

    In order: tasks round robin, states cycling over `initial_states` (None: a new state every
    prompt). Shuffled (`shuffle_seed` set, as SimpleVLA-RL's dataloader): each pass over the
    tasks x initial_states prompts is a fresh permutation drawn from (shuffle_seed, pass).

    With `rest_uniform`, a prompt whose group had one outcome (all success or all failure) sits out
    the next pass and comes back in the one after: such a group trains nothing, and an all-failure
    one costs the most env steps. `uniform_in_pass` (prompt -> that pass) is state beside the cursor."""

    tasks: list[str]
    seed_start: int
    cursor: int = 0
    initial_states: int | None = None
    shuffle_seed: int | None = None
    seed_of: SeedMap = consecutive  # the n-th initial state from seed_start: every one, or the solvable ones
    rest_uniform: bool = False
    uniform_in_pass: dict[str, int] = field(default_factory=dict)  # "task|seed" -> pass of its one-outcome group

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

    def pass_of(self, index: int) -> int:
        return index // (len(self.tasks) * self.initial_states)

    def rests(self, index: int) -> bool:
        """Does the index-th prompt sit out its pass? Only right after a pass with one outcome, so a
        prompt rests at most every other pass, and a whole pass never rests twice in a row."""
        if not self.rest_uniform:
            return False
        task, seed = self.prompt(index)
        return self.uniform_in_pass.get(f"{task}|{seed}") == self.pass_of(index) - 1

    def next_requests(self, n_prompts: int, group_size: int) -> list[EpisodeRequest]:
        requests = []
        while len(requests) < n_prompts * group_size:
            if not self.rests(self.cursor):
                task, seed = self.prompt(self.cursor)
                requests += [EpisodeRequest(task, seed, group=self.cursor)] * group_size
            self.cursor += 1
        return requests

    def record(self, requests: list[EpisodeRequest], rewards: torch.Tensor, group_size: int) -> None:
        """Note which prompts' groups had one outcome (rewards (n,), group by group)."""
        if not self.rest_uniform:
            return
        for first in range(0, len(requests), group_size):
            request, group = requests[first], rewards[first:first + group_size]
            key = f"{request.task}|{request.seed}"
            if bool((group == group[0]).all()):
                self.uniform_in_pass[key] = self.pass_of(request.group)
            else:
                self.uniform_in_pass.pop(key, None)


def prompt_sampler(tasks: list[str], cfg: RlConfig, seed_of: SeedMap = consecutive) -> PromptSampler:
    shuffle_seed = cfg.seed if cfg.prompt_order == "shuffle" else None
    return PromptSampler(tasks, cfg.seed_start, initial_states=cfg.initial_states, shuffle_seed=shuffle_seed,
                         seed_of=seed_of, rest_uniform=cfg.rest_uniform_prompts)


def may_refill(cfg: RlConfig, attempt: int, episodes: int) -> bool:
    """Another rollout batch? The fixed batch is capped by trajectories, the earlier one by refills."""
    if cfg.train_groups is None:
        return attempt <= cfg.max_refills
    return episodes + cfg.prompts_per_batch * cfg.group_size <= cfg.max_rollouts


@dataclass
class KeptBatch:
    """One iteration's kept groups, chosen alike on every rank: every trajectory's reward and token
    count, and the trajectories that this rank rolled out (the others stay on their ranks)."""

    rewards: torch.Tensor  # (N,) 0/1, group by group
    tokens: torch.Tensor  # (N,) executed action tokens of each trajectory
    held: dict[int, Trajectory]  # position in the batch -> trajectory, for those this rank holds
    spare: Obs | None = None  # an observation this rank saw: its input when it has nothing to train

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def trajectories(self) -> list[Trajectory]:
        """This rank's kept trajectories, in batch order."""
        return [self.held[i] for i in sorted(self.held)]


def episode_streams(requests: list[EpisodeRequest], group_size: int) -> list[int]:
    """Each episode's random stream, numbered by its place in the run (group x group_size + member), so
    that no result depends on which rank or batch rolls it out."""
    return [r.group * group_size + j % group_size for j, r in enumerate(requests)]


def rollout_share(policy: VLAPolicy, pool: EnvPool, requests: list[EpisodeRequest], cfg: RlConfig,
                  stats: RolloutStats, ranks: Ranks) -> tuple[dict[int, Trajectory], torch.Tensor, torch.Tensor]:
    """Run this rank's share of a batch -> (position -> its trajectory, every rank's rewards (n,) and
    executed token counts (n,))."""
    streams = episode_streams(requests, cfg.group_size)
    mine = ranks.share(len(requests))
    ran = run_episodes(policy, pool, [requests[j] for j in mine], cfg.temperature, cfg.seed, stats,
                       streams=[streams[j] for j in mine])
    outcomes = {j: (float(t.success), t.steps * policy.action_dim) for j, t in zip(mine, ran)}
    merged = {j: o for part in ranks.gather(outcomes) for j, o in part.items()}
    rewards = torch.tensor([merged[j][0] for j in range(len(requests))])
    tokens = torch.tensor([merged[j][1] for j in range(len(requests))])
    return dict(zip(mine, ran)), rewards, tokens


def collect_mixed_groups(policy: VLAPolicy, pool: EnvPool, sampler: PromptSampler, cfg: RlConfig,
                         stats: RolloutStats, ranks: Ranks = Ranks()) -> tuple[KeptBatch, dict]:
    """Roll out batches until enough groups are kept: exactly `train_groups` (surplus dropped, nothing
    if max_rollouts runs out first), or without it at least `min_valid_groups` (or refills run out).
    Every rank rolls out its share; the groups are kept from all ranks' rewards, the same on each."""
    rewards, tokens, held, spare = [], [], {}, None
    n_groups = n_mixed = n_success = n_episodes = refills = 0
    target = (cfg.train_groups or cfg.min_valid_groups) * cfg.group_size
    for attempt in itertools.count():
        if not may_refill(cfg, attempt, n_episodes):
            break
        requests = sampler.next_requests(cfg.prompts_per_batch, cfg.group_size)
        ran, batch_rewards, batch_tokens = rollout_share(policy, pool, requests, cfg, stats, ranks)
        sampler.record(requests, batch_rewards, cfg.group_size)
        if spare is None:
            spare = next((t.observations[0] for t in ran.values() if t.observations), None)
        mixed = keep_mixed_groups(batch_rewards, cfg.group_size, *cfg.keep_success_range)  # (n_groups,)
        kept = mixed if cfg.dynamic_sampling else torch.full_like(mixed, bool(mixed.any()))  # ablation: every
        for g in torch.nonzero(kept).flatten().tolist():  # group, all-equal ones with zero advantage
            for j in range(g * cfg.group_size, (g + 1) * cfg.group_size):
                if j in ran:
                    held[len(rewards)] = ran[j]
                rewards.append(float(batch_rewards[j]))
                tokens.append(int(batch_tokens[j]))
        n_groups += len(mixed)
        n_mixed += int(mixed.sum())
        n_success += int(batch_rewards.sum())
        n_episodes += len(requests)
        refills = attempt
        if not cfg.dynamic_sampling or len(rewards) >= target:
            break
    info = {"success_rate": n_success / n_episodes, "kept_group_fraction": n_mixed / n_groups,
            "mixed_groups": n_mixed, "refills": refills, "episodes": n_episodes}
    keep = len(rewards)
    if cfg.train_groups is not None and cfg.dynamic_sampling:
        info["trained_groups"] = cfg.train_groups if keep >= target else 0
        info["dropped_groups"] = max(0, keep - target) // cfg.group_size
        if keep < target:
            logger.warning("rl: only %d of rl.train_groups=%d kept groups within rl.max_rollouts=%d trajectories: "
                           "update skipped (raise rl.max_rollouts or lower rl.train_groups)",
                           keep // cfg.group_size, cfg.train_groups, cfg.max_rollouts)
            info["short_batch"] = True
        keep = target if keep >= target else 0
    batch = KeptBatch(torch.tensor(rewards[:keep]), torch.tensor(tokens[:keep], dtype=torch.long),
                      {i: t for i, t in held.items() if i < keep}, spare)
    return batch, info
