"""The GRPO math, pinned by hand-computed values (SimpleVLA-RL's and verl's core_algos.py formulas)."""

import pytest
import torch

from svrl_core.algos.grpo import aggregate_tokens, clipped_policy_loss, group_advantages, keep_mixed_groups


def test_advantages_use_unbiased_group_std():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)


def test_all_equal_group_has_zero_advantage():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), 3)
    assert torch.equal(adv, torch.zeros(6))


def test_advantages_match_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    for group_size in (2, 3, 8):
        rewards = torch.randint(0, 2, (group_size * 5,), generator=gen).float()
        expected = []
        for g in range(5):
            r = rewards[g * group_size:(g + 1) * group_size].tolist()
            mean = sum(r) / len(r)
            std = (sum((x - mean) ** 2 for x in r) / (len(r) - 1)) ** 0.5
            expected += [(x - mean) / (std + 1e-6) for x in r]
        assert torch.allclose(group_advantages(rewards, group_size), torch.tensor(expected), atol=1e-5)


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.ones(6), 4)


def test_dynamic_sampling_keeps_only_mixed_groups():
    rewards = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1]).float()
    assert keep_mixed_groups(rewards, 4).tolist() == [False, False, True, True]


def test_identical_policies_give_minus_mean_advantage():
    adv = torch.tensor([1.5, -0.5, -0.5, -0.5])
    logp = torch.randn(4, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]).bool()
    loss, metrics = clipped_policy_loss(logp, logp.clone(), adv, mask, 0.2, 0.28, "seq-mean-token-mean")
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert metrics["clip_fraction"] == 0 and metrics["approx_kl"] == pytest.approx(0, abs=1e-7)
    token_loss, _ = clipped_policy_loss(logp, logp.clone(), adv, mask, 0.2, 0.28, "token-mean")
    weighted = (adv * mask.sum(1)).sum() / mask.sum()
    assert token_loss.item() == pytest.approx(-weighted.item(), abs=1e-6)


def test_asymmetric_clipping_at_0_8_and_1_28():
    old = torch.zeros(2, 1)
    mask = torch.ones(2, 1, dtype=torch.bool)
    # positive advantage, ratio 1.5: the gain stops at 1.28
    loss, metrics = clipped_policy_loss(torch.log(torch.tensor([[1.5], [1.5]])), old, torch.ones(2), mask,
                                        0.2, 0.28, "token-mean")
    assert loss.item() == pytest.approx(-1.28) and metrics["clip_fraction"] == 1.0
    # negative advantage, ratio 0.5: the penalty stops at 0.8
    loss, _ = clipped_policy_loss(torch.log(torch.tensor([[0.5], [0.5]])), old, -torch.ones(2), mask,
                                  0.2, 0.28, "token-mean")
    assert loss.item() == pytest.approx(0.8)
    # inside the range nothing is clipped: ratio 1.2 with a positive advantage
    loss, metrics = clipped_policy_loss(torch.log(torch.tensor([[1.2], [1.2]])), old, torch.ones(2), mask,
                                        0.2, 0.28, "token-mean")
    assert loss.item() == pytest.approx(-1.2) and metrics["clip_fraction"] == 0.0


def test_clipped_tokens_get_no_gradient():
    logp = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    loss, _ = clipped_policy_loss(logp, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2, dtype=torch.bool),
                                  0.2, 0.28, "token-mean")
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] != 0


def test_masked_tokens_do_not_count():
    values = torch.tensor([[1.0, 100.0], [3.0, 5.0]])
    mask = torch.tensor([[True, False], [True, True]])
    assert aggregate_tokens(values, mask, "seq-mean-token-mean").item() == pytest.approx((1 + 4) / 2)
    assert aggregate_tokens(values, mask, "token-mean").item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="valid"):
        aggregate_tokens(values, mask, "sum")


def loop_clipped_loss(logp, old, adv, mask, clip_low, clip_high, aggregation):
    """The surrogate written token by token, as a reference for the vectorized one."""
    per_seq, all_tokens = [], []
    for n in range(logp.shape[0]):
        tokens = []
        for t in range(logp.shape[1]):
            if mask[n, t]:
                ratio = float(torch.exp(logp[n, t] - old[n, t]))
                clipped = min(max(ratio, 1 - clip_low), 1 + clip_high)
                tokens.append(-min(ratio * float(adv[n]), clipped * float(adv[n])))
        all_tokens += tokens
        if tokens:
            per_seq.append(sum(tokens) / len(tokens))
    if aggregation == "token-mean":
        return sum(all_tokens) / len(all_tokens)
    return sum(per_seq) / len(per_seq)


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_loss_matches_a_plain_loop_over_random_shapes(aggregation):
    gen = torch.Generator().manual_seed(0)
    for n, t in [(1, 1), (3, 5), (8, 17), (16, 56)]:
        for _ in range(3):
            logp = -torch.rand(n, t, generator=gen) * 3
            old = logp + torch.randn(n, t, generator=gen) * 0.3
            adv = torch.randn(n, generator=gen)
            mask = torch.rand(n, t, generator=gen) > 0.3
            mask[0, 0] = True
            loss, _ = clipped_policy_loss(logp, old, adv, mask, 0.2, 0.28, aggregation)
            assert loss.item() == pytest.approx(loop_clipped_loss(logp, old, adv, mask, 0.2, 0.28, aggregation),
                                                rel=1e-5, abs=1e-6)


def test_tokens_after_the_episode_ended_do_not_matter():
    gen = torch.Generator().manual_seed(1)
    logp, old = -torch.rand(4, 8, generator=gen), -torch.rand(4, 8, generator=gen)
    adv = torch.randn(4, generator=gen)
    mask = torch.arange(8)[None, :] < torch.tensor([[8], [3], [5], [1]])  # executed prefix per trajectory
    base, _ = clipped_policy_loss(logp, old, adv, mask, 0.2, 0.28, "seq-mean-token-mean")
    scrambled = torch.where(mask, logp, torch.full_like(logp, -50.0))
    again, _ = clipped_policy_loss(scrambled, old, adv, mask, 0.2, 0.28, "seq-mean-token-mean")
    assert base.item() == again.item()
