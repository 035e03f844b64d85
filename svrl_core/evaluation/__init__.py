"""Greedy success rates per task, rollout GIFs, plots."""

from svrl_core.evaluation.evaluate import evaluate_policy, success_table
from svrl_core.evaluation.media import plot_success_rates, save_episode_gifs

__all__ = ["evaluate_policy", "plot_success_rates", "save_episode_gifs", "success_table"]
