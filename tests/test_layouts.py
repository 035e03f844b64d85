"""Solvable-layout filtering (env.solvable_layouts_only): the expert decides which seeds evaluation and RL use."""

from __future__ import annotations

import pytest

from svrl_core.algos.grpo_batch import PromptSampler
from svrl_core.config import ConfigError, EvalConfig, parse_params
from svrl_core.evaluation.evaluate import evaluation_requests
from svrl_core.experts.layouts import SolvableLayouts, consecutive

UNSOLVABLE = {"a": {2, 3, 7}, "b": {0}}


class CountingRecorder:
    """A stand-in expert that fails exactly the UNSOLVABLE seeds and counts its runs."""

    def __init__(self):
        self.runs = []

    def __call__(self, env, task, seed, noise):
        assert noise == 0.0, "solvability is judged without noise"
        self.runs.append((task, seed))
        return None, seed not in UNSOLVABLE[task]


def test_the_nth_solvable_seed_skips_failed_layouts_and_runs_the_expert_once_per_layout():
    record = CountingRecorder()
    layouts = SolvableLayouts(env=None, record=record)
    assert [layouts.seed("a", 0, n) for n in range(6)] == [0, 1, 4, 5, 6, 8]
    assert [layouts.seed("a", 0, n) for n in (5, 2, 0)] == [8, 4, 0]
    assert len(record.runs) == len(set(record.runs)) == 9  # seeds 0..8, each once
    assert layouts.seed("b", 0, 0) == 1
    assert layouts.unsolvable() == {"a": [2, 3, 7], "b": [0]}


def test_an_expert_that_never_succeeds_is_an_error_not_an_endless_search():
    layouts = SolvableLayouts(None, lambda env, task, seed, noise: (None, False), max_unsolvable_run=5)
    with pytest.raises(RuntimeError, match="failed 5 layouts in a row on 'a'.*solvable_layouts_only: false"):
        layouts.seed("a", 100, 0)


def test_evaluation_and_rl_prompts_use_the_seed_map():
    layouts = SolvableLayouts(None, CountingRecorder())
    cfg = EvalConfig(episodes_per_task=3, seed_start=0)
    assert [(r.task, r.seed) for r in evaluation_requests(["a", "b"], cfg, layouts.seed)] == [
        ("a", 0), ("a", 1), ("a", 4), ("b", 1), ("b", 2), ("b", 3)]
    assert [r.seed for r in evaluation_requests(["a"], cfg)] == [0, 1, 2], "default: every layout"
    sampler = PromptSampler(["a"], seed_start=0, initial_states=4, seed_of=layouts.seed)
    assert [r.seed for r in sampler.next_requests(5, 1)] == [0, 1, 4, 5, 0]
    resumed = PromptSampler(["a"], seed_start=0, cursor=3, initial_states=4, seed_of=layouts.seed)
    assert [r.seed for r in resumed.next_requests(2, 1)] == [5, 0]
    assert consecutive("a", 10, 3) == 13


def test_the_filter_is_refused_outside_robotwin():
    with pytest.raises(ConfigError, match="solvable_layouts_only filters RoboTwin"):
        parse_params({"env": {"family": "toy", "tasks": ["red"], "max_steps": 10, "solvable_layouts_only": True}})
