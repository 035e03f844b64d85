import pytest
import torch

from bench.weight_moves import cosine, difference, float_weights, norm, random_move_like, write_perturbed
from svrl_core.policies import new_policy


def test_a_random_move_keeps_each_tensor_length_and_is_near_orthogonal_to_the_measured_one():
    generator = torch.Generator().manual_seed(3)
    move = {"a": torch.randn(400, 50, generator=generator), "b": 10 * torch.randn(300, generator=generator)}
    random = random_move_like(move, seed=0)
    for name in move:
        assert float(random[name].norm()) == pytest.approx(float(move[name].norm()), rel=1e-5)
    assert norm(random) == pytest.approx(norm(move), rel=1e-5)
    assert abs(cosine(random, move)) < 0.05, "a random direction in 20,300 dimensions"
    assert cosine(move, move) == pytest.approx(1.0)
    assert torch.equal(random_move_like(move, seed=0)["a"], random["a"]), "seeded"


def test_perturb_writes_a_loadable_checkpoint_moved_as_far_as_the_reference(tmp_path, tiny_params, tiny_dataset):
    for seed, name in [(0, "sft"), (1, "rl")]:
        new_policy(tiny_params.policy, tiny_dataset, seed=seed).save(tmp_path / name)
    sft, rl = str(tmp_path / "sft"), str(tmp_path / "rl")
    write_perturbed(sft, (sft, rl), seed=0, out=str(tmp_path / "moved"))

    base, reference, moved = float_weights(sft), float_weights(rl), float_weights(str(tmp_path / "moved"))
    rl_move, random_move = difference(base, reference), difference(base, moved)
    assert norm(random_move) == pytest.approx(norm(rl_move), rel=1e-4)
    assert abs(cosine(random_move, rl_move)) < 0.05
    with pytest.raises(ValueError, match="different tensors"):
        difference(base, {"other": torch.zeros(1)})
