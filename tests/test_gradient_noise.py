import dataclasses

import numpy as np
import pytest

from svrl_core.algos.gradient_noise import group_gradients, noise_scale, parameter_slices
from svrl_core.algos.grpo_batch import PromptSampler, collect_mixed_groups
from svrl_core.rollout import LocalEnvPool, RolloutStats


def test_noise_scale_recovers_a_known_ratio():
    rng = np.random.default_rng(0)
    mean, sigma, n = np.full(50, 0.2), 1.0, 400  # |G|^2 = 2, tr Sigma = 50: B_noise = 25 groups
    scale = noise_scale(mean + sigma * rng.standard_normal((n, 50)), rng)
    assert scale.signal == pytest.approx(2.0, rel=0.25) and scale.noise == pytest.approx(50.0, rel=0.1)
    assert scale.noise_scale == pytest.approx(25.0, rel=0.3) and 10 < scale.noise_scale_lower < scale.noise_scale
    assert scale.split_cosine == pytest.approx(scale.cosine_at(n / 2), abs=0.1), "two halves of 200 groups"
    assert scale.cosine_at(1) < 0.05 < 0.8 < scale.cosine_at(1000)


def test_pure_noise_has_no_signal():
    rng = np.random.default_rng(1)
    scale = noise_scale(rng.standard_normal((200, 50)), rng)
    assert abs(scale.split_cosine) < 0.2 and scale.noise_scale_lower > 100, "rules out a batch of 100 groups having signal"
    assert scale.signal < 0.1 * scale.noise / 8, "what signal is estimated is far under the noise of 8 groups"


def test_too_few_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 4 groups"):
        noise_scale(np.ones((3, 5)), np.random.default_rng(0))


def test_a_group_gradient_is_the_grpo_gradient_and_flips_with_the_rewards(tiny_policy, tiny_params):
    cfg = tiny_params.rl.model_copy(update={"prompts_per_batch": 4, "group_size": 4, "max_refills": 3, "seed": 1})
    kept, _ = collect_mixed_groups(tiny_policy, LocalEnvPool(tiny_params.env, 16), PromptSampler(["red", "blue"], 0),
                                   cfg, RolloutStats())
    group = kept.trajectories[:4]
    flipped = [dataclasses.replace(t, success=not t.success) for t in group]
    grads = group_gradients(tiny_policy, [group, flipped], cfg.temperature, "seq-mean-token-mean")
    n_params = sum(p.numel() for p in tiny_policy.model.parameters())
    assert grads.shape == (2, n_params) and np.abs(grads[0]).max() > 0
    np.testing.assert_allclose(grads[1], -grads[0], atol=1e-6 * np.abs(grads[0]).max())


def test_parameter_slices_cover_every_trainable_value_in_order(tiny_policy):
    slices = parameter_slices(tiny_policy.model)
    params = dict(tiny_policy.model.named_parameters())
    assert list(slices) == list(params)
    assert [s.stop - s.start for s in slices.values()] == [p.numel() for p in params.values()]
    assert all(a.stop == b.start for a, b in zip(list(slices.values()), list(slices.values())[1:]))


def test_gradients_that_cancel_rule_out_every_batch_size():
    rng = np.random.default_rng(2)
    direction = rng.standard_normal(20)
    grads = np.stack([direction, -direction] * 10)  # (20, 20): pairs cancel, |G|^2 estimate < 0 by many SE
    scale = noise_scale(grads + 1e-3 * rng.standard_normal((20, 20)), rng)
    assert scale.signal < 0 and scale.noise_scale == scale.noise_scale_lower == float("inf")
    assert scale.cosine_at(8) == 0.0
