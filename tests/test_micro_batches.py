"""Micro-batched updates: the whole mini-batch's gradient, with activation memory bounded by the micro-batch."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from svrl_core.algos.grpo import aggregate_tokens, sequence_token_weights
from svrl_core.algos.grpo_batch import KeptBatch, PromptSampler
from svrl_core.algos.grpo_trainer import grpo_update
from svrl_core.algos.sft import sft_step
from svrl_core.data import iterate_chunk_batches
from svrl_core.policies import new_policy
from svrl_core.rollout import LocalEnvPool, run_episodes
from svrl_core.training import DeepSpeedTrainer


def test_token_weights_give_each_aggregation():
    values, mask = torch.randn(5, 7), torch.rand(5, 7) > 0.4
    mask[2] = False  # a sequence without valid tokens counts for nothing
    for mode in ("seq-mean-token-mean", "token-mean"):
        weights = sequence_token_weights(mask.sum(1), mode)  # (N,)
        weighted = (values * mask * weights[:, None].float()).sum()
        torch.testing.assert_close(weighted, aggregate_tokens(values, mask, mode))


@pytest.fixture(scope="module")
def toy_batch(tiny_params, tiny_dataset) -> KeptBatch:
    """32 real toy trajectories (8 groups of 4) with one success per group."""
    policy = new_policy(tiny_params.policy, tiny_dataset, seed=0)
    requests = PromptSampler(["red", "blue"], 0).next_requests(8, 4)
    trajectories = run_episodes(policy, LocalEnvPool(tiny_params.env, 16), requests, 1.6, seed=0)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0] * 8)
    tokens = torch.tensor([t.steps * policy.action_dim for t in trajectories])
    return KeptBatch(rewards, tokens, dict(enumerate(trajectories)))


def update_gradient(tiny_params, tiny_dataset, batch, recorder=None, **rl_changes) -> tuple[list[torch.Tensor], dict]:
    """The gradient one GRPO update accumulates (read just before the optimizer step), and its metrics."""
    policy = new_policy(tiny_params.policy, tiny_dataset, seed=0)
    cfg = tiny_params.rl.model_copy(update=rl_changes)
    trainer = DeepSpeedTrainer(policy.model, 1e-3, 0.0, 1e9, cfg.mini_batch_trajectories)
    grads, step, accumulate = [], trainer.step, trainer.accumulate

    def recording_step():
        grads.extend(p.grad.detach().clone() for p in policy.model.parameters())
        return step()

    def measured_accumulate(loss, boundary):
        accumulate(loss, boundary)
        if recorder:
            recorder.backward_done()

    trainer.step, trainer.accumulate = recording_step, measured_accumulate
    with saved_tensors_hooks(recorder.pack, lambda t: t) if recorder else nullcontext():
        metrics = grpo_update(policy, trainer, batch, cfg, np.random.default_rng(0))
    return grads, metrics


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_micro_batches_accumulate_the_whole_mini_batch_gradient(tiny_params, tiny_dataset, toy_batch, aggregation):
    whole, whole_metrics = update_gradient(tiny_params, tiny_dataset, toy_batch, loss_agg=aggregation,
                                           mini_batch_trajectories=32, micro_batch_chunks=10_000)
    split, split_metrics = update_gradient(tiny_params, tiny_dataset, toy_batch, loss_agg=aggregation,
                                           mini_batch_trajectories=32, micro_batch_chunks=3)  # splits trajectories
    assert max(g.abs().max() for g in whole) > 0
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
    for key, value in whole_metrics.items():
        assert split_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-8), key


class SavedActivations:
    """Bytes autograd keeps for backward, at their peak over forward/backward passes."""

    def __init__(self):
        self.current = self.peak = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.current += tensor.numel() * tensor.element_size()
        self.peak = max(self.peak, self.current)
        return tensor

    def backward_done(self) -> None:
        self.current = 0


def test_activation_memory_follows_the_micro_batch_not_the_mini_batch(tiny_params, tiny_dataset, toy_batch):
    def peak(n_trajectories: int, micro_batch_chunks: int) -> int:
        batch = KeptBatch(toy_batch.rewards[:n_trajectories], toy_batch.tokens[:n_trajectories],
                          {i: toy_batch.held[i] for i in range(n_trajectories)})
        recorder = SavedActivations()
        update_gradient(tiny_params, tiny_dataset, batch, recorder, mini_batch_trajectories=n_trajectories,
                        micro_batch_chunks=micro_batch_chunks)
        return recorder.peak

    small, large = peak(4, 4), peak(32, 4)  # the mini-batch grows 8x at a fixed micro-batch
    assert small > 0 and large == small
    assert peak(32, 10_000) > 6 * peak(4, 10_000), "without micro-batches memory grows with the mini-batch"


def test_sft_micro_batches_accumulate_the_whole_batch_gradient(tiny_params, tiny_dataset):
    policy = new_policy(tiny_params.policy, tiny_dataset, seed=0)
    batch = next(iterate_chunk_batches(tiny_dataset, tiny_dataset.tasks, policy.chunk_size, 16,
                                       np.random.default_rng(0)))
    inputs = policy.prepare_arrays(batch.images, batch.states, batch.instructions)
    targets = torch.from_numpy(policy.actions.encode(batch.actions, batch.states)).flatten(1)  # (B, K * D)
    mask = torch.from_numpy(np.repeat(batch.action_mask, policy.action_dim, axis=1))
    centres = torch.from_numpy(policy.actions.bin_centres).float()

    def gradient(micro_batch_size):
        model = new_policy(tiny_params.policy, tiny_dataset, seed=0).model
        trainer = DeepSpeedTrainer(model, 1e-3, 0.0, 1e9, 16)
        cfg = tiny_params.sft.model_copy(update={"micro_batch_size": micro_batch_size, "mean_l1_weight": 0.5})
        grads, step = [], trainer.step
        trainer.step = lambda: grads.extend(p.grad.clone() for p in model.parameters()) or step()
        return grads, sft_step(trainer, inputs, targets, mask, centres, cfg)

    (whole, whole_metrics), (split, split_metrics) = gradient(None), gradient(5)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
    assert split_metrics == pytest.approx(whole_metrics, rel=1e-5)
