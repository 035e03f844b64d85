import numpy as np
import pytest

from svrl_core.policies import ActionTokenizer


def tokenizer(n_bins=256, mask=(True, True, False)):
    return ActionTokenizer(np.array([-2.0, 0.0, -1.0]), np.array([2.0, 10.0, 1.0]), np.array(mask), n_bins)


def test_round_trip_within_half_a_bin():
    tok = tokenizer()
    rng = np.random.default_rng(0)
    actions = np.stack([rng.uniform(-2, 2, 1000), rng.uniform(0, 10, 1000), rng.uniform(-1, 1, 1000)], axis=1)
    decoded = tok.decode(tok.encode(actions))
    half_bin = np.array([4.0, 10.0, 2.0]) / 256 / 2
    assert (np.abs(decoded - actions) <= half_bin + 1e-6).all()


def test_edges_and_out_of_range():
    tok = tokenizer()
    assert tok.encode(np.array([-2.0, 0.0, -1.0])).tolist() == [0, 0, 0]
    assert tok.encode(np.array([2.0, 10.0, 1.0])).tolist() == [255, 255, 255]
    assert tok.encode(np.array([-50.0, 99.0, 3.0])).tolist() == [0, 255, 255]
    assert tok.encode(np.array([0.0, 5.0, 0.0])).tolist() == [128, 128, 128]


def test_gripper_dimension_is_not_normalized():
    tok = tokenizer()
    # dim 2 is used as is in [-1, 1]: decoding bin 0 gives the first centre of [-1, 1]
    assert tok.decode(np.array([0, 0, 0]))[2] == pytest.approx(-1 + 1 / 256)
    assert tok.decode(np.array([0, 0, 0]))[0] == pytest.approx(-2 + 4 / 256 / 2)


def test_bin_centres_and_serialisation():
    tok = tokenizer(n_bins=4)
    assert tok.bin_centres.tolist() == [-0.75, -0.25, 0.25, 0.75]
    again = ActionTokenizer.from_dict(tok.to_dict())
    assert np.array_equal(again.decode(np.array([1, 2, 3])), tok.decode(np.array([1, 2, 3])))


def test_constant_dimension_does_not_divide_by_zero():
    tok = ActionTokenizer(np.array([1.0]), np.array([1.0]), np.array([True]), 8)
    assert np.isfinite(tok.decode(tok.encode(np.array([[1.0]])))).all()


def test_decode_rejects_out_of_range_bins():
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tokenizer().decode(np.array([0, 256, 3]))


def test_min_max_bounds_keep_the_extreme_labels_that_q01_q99_clips():
    # absolute joint targets: the extremes (e.g. a far grasp) are rare but must stay reachable
    labels = np.concatenate([np.linspace(0.0, 1.0, 990), np.linspace(1.0, 1.3, 10)])[:, None]  # (1000, 1)
    stats = {"min": [0.0], "max": [1.3], "q01": np.quantile(labels, 0.01, 0).tolist(),
             "q99": np.quantile(labels, 0.99, 0).tolist()}
    q99 = ActionTokenizer.from_stats(stats, 256)
    bounds = ActionTokenizer.from_stats(stats, 256, bounds="min_max")
    assert (bounds.low[0], bounds.high[0]) == (0.0, 1.3)
    assert np.abs(bounds.decode(bounds.encode(labels)) - labels).max() <= 1.3 / 256 / 2 + 1e-6
    assert np.abs(q99.decode(q99.encode(labels)) - labels).max() > 0.2, "q01/q99 cannot reach the far grasp"
    again = ActionTokenizer.from_dict(bounds.to_dict())
    assert np.array_equal(again.decode(np.array([[255]])), bounds.decode(np.array([[255]])))


def test_binary_dims_decode_to_the_nearer_label_value():
    stats = {"q01": [-1.0, 0.0], "q99": [1.0, 1.0]}
    tok = ActionTokenizer.from_stats(stats, 256, unnormalized_dims=(1,), binary_dims=(1,))
    gripper = tok.decode(np.stack([np.full(256, 128), np.arange(256)], axis=1))[:, 1]  # (256,) every bin
    assert set(gripper.tolist()) == {0.0, 1.0}
    assert gripper[192] == 1.0 and gripper[191] == 0.0, "bin centre 0.496 -> closed (0), 0.504 -> open (1)"
    assert ActionTokenizer.from_dict(tok.to_dict()).binary_mask.tolist() == [False, True]
    old = {k: v for k, v in tok.to_dict().items() if k != "binary_mask"}  # a checkpoint from before binary dims
    assert ActionTokenizer.from_dict(old).decode(np.array([128, 191]))[1] == pytest.approx(0.49609375)


def test_relative_dims_bin_the_move_from_the_proprio_and_add_it_back():
    stats = {"q01": [-0.1, 0.0], "q99": [0.1, 1.0]}  # joint: moves of +-0.1 rad; gripper: absolute
    tok = ActionTokenizer.from_stats(stats, 256, unnormalized_dims=(1,), relative_dims=(0,))
    rng = np.random.default_rng(0)
    states = np.stack([rng.uniform(-2.0, 2.0, 5), rng.uniform(0, 1, 5)], axis=1)  # (B, D) far outside +-0.1
    actions = states[:, None, :] + np.stack([rng.uniform(-0.1, 0.1, (5, 3)), np.zeros((5, 3))], axis=2)  # (B, K, D)
    actions[..., 1] = 0.5
    decoded = tok.decode(tok.encode(actions, states), states)
    assert np.abs(decoded[..., 0] - actions[..., 0]).max() <= 0.2 / 256 / 2 + 1e-6, "a half bin of the move's range"
    assert np.allclose(decoded[..., 1], 0.5, atol=1 / 256), "the gripper stays absolute"
    with pytest.raises(ValueError, match="relative to the proprio"):
        tok.decode(tok.encode(actions, states))
    with pytest.raises(ValueError, match="action's layout"):
        tok.encode(actions, states[:, :1])
    assert ActionTokenizer.from_dict(tok.to_dict()).relative_mask.tolist() == [True, False]
    old = {k: v for k, v in tok.to_dict().items() if k != "relative_mask"}  # a checkpoint from before relative dims
    assert not ActionTokenizer.from_dict(old).is_relative


def test_a_relative_gripper_is_refused():
    with pytest.raises(ValueError, match="must be normalized dims"):
        ActionTokenizer.from_stats({"q01": [0.0], "q99": [1.0]}, 256, unnormalized_dims=(0,), relative_dims=(0,))
