import json
import subprocess
import sys

import numpy as np
import pytest

from svrl_core.envs.toy import ToyReachEnv
from svrl_core.export import BundleError, BundlePolicy, export_bundle


@pytest.mark.parametrize("decoding", ["mean", "argmax"])
def test_bundle_reproduces_in_process_actions_exactly(tiny_policy_any_trunk, tiny_params, tmp_path, decoding):
    tiny_policy = tiny_policy_any_trunk
    tiny_policy.decoding = decoding
    export_bundle(tiny_policy, tmp_path / "bundle", "tiny")
    spec = json.loads((tmp_path / "bundle/bundle.json").read_text())
    assert spec["format"] == "svrl-bundle-v2" and spec["postprocessing"]["n_bins"] == 32
    assert spec["postprocessing"]["decoding"] == decoding
    env = ToyReachEnv(tiny_params.env)
    obs = [env.reset(task, seed) for task in tiny_params.env.tasks for seed in range(5)]
    expected = tiny_policy.bins_to_actions(tiny_policy.greedy(tiny_policy.prepare(obs)))
    bundle = BundlePolicy(tmp_path / "bundle")
    got = bundle.act_batch(np.stack([o.images["main"] for o in obs]), np.stack([o.proprio for o in obs]),
                           [o.instruction for o in obs])
    assert np.array_equal(got, expected)
    assert np.array_equal(bundle.act(obs[0].images["main"], obs[0].proprio, obs[0].instruction), expected[0])


def test_min_max_bounds_and_binary_dims_survive_export(tiny_params, tiny_dataset, tmp_path):
    from svrl_core.policies import new_policy

    cfg = tiny_params.policy.model_copy(update={"action_bounds": "min_max", "binary_action_dims": [1]})
    policy = new_policy(cfg, tiny_dataset, seed=0)
    stats, n_bins = tiny_dataset.stats["action"], cfg.n_bins
    assert np.allclose(policy.actions.low, stats["min"]) and np.allclose(policy.actions.high, stats["max"])
    export_bundle(policy, tmp_path / "bundle", "tiny")
    every_bin = np.repeat(np.arange(n_bins)[None, :, None], policy.action_dim, axis=2)  # (1, n_bins, D)
    got = BundlePolicy(tmp_path / "bundle").bins_to_actions(every_bin)
    assert np.array_equal(got, policy.bins_to_actions(every_bin))
    assert set(got[0, :, 1].tolist()) == {np.float32(stats["min"][1]), np.float32(stats["max"][1])}, "binary dim"
    half_bin = (stats["max"][0] - stats["min"][0]) / n_bins / 2
    assert got[0, -1, 0] == pytest.approx(stats["max"][0] - half_bin, rel=1e-5), "min/max: the top bin reaches max"


def test_relative_dims_survive_export(tiny_params, tiny_dataset, tmp_path):
    from svrl_core.data.batches import chunk_moves
    from svrl_core.policies import new_policy

    cfg = tiny_params.policy.model_copy(update={"relative_action_dims": [0, 1]})  # toy proprio: the agent's xy
    policy = new_policy(cfg, tiny_dataset, seed=0)
    moves = chunk_moves(tiny_dataset, cfg.chunk_size)  # (M, D)
    assert np.allclose(policy.actions.low, np.quantile(moves, 0.01, axis=0))
    export_bundle(policy, tmp_path / "bundle", "tiny")
    bundle = BundlePolicy(tmp_path / "bundle")
    every_bin = np.repeat(np.arange(cfg.n_bins)[None, :, None], policy.action_dim, axis=2)  # (1, n_bins, D)
    proprio = np.array([[0.3, 0.7]], dtype=np.float32)
    got = bundle.bins_to_actions(every_bin, proprio)
    assert np.array_equal(got, policy.bins_to_actions(every_bin, proprio))
    assert np.allclose(got - proprio[:, None], policy.actions.unnormalize(policy.actions.bin_centres[:, None])[None], atol=1e-6)
    with pytest.raises(BundleError, match="relative to the proprio"):
        bundle.bins_to_actions(every_bin)
    env = ToyReachEnv(tiny_params.env)
    obs = [env.reset(task, seed) for task in tiny_params.env.tasks for seed in range(3)]
    proprio = np.stack([o.proprio for o in obs])
    expected = policy.bins_to_actions(policy.greedy(policy.prepare(obs)), proprio)
    got = bundle.act_batch(np.stack([o.images["main"] for o in obs]), proprio, [o.instruction for o in obs])
    assert np.array_equal(got, expected)


def test_bundle_with_an_unknown_decoding_is_refused(tiny_policy, tmp_path):
    tiny_policy.decoding = "mode"
    export_bundle(tiny_policy, tmp_path / "bundle", "tiny")
    with pytest.raises(BundleError, match=r"decoding 'mode' is none that this runtime knows \(\['argmax', 'mean'\]\)"):
        BundlePolicy(tmp_path / "bundle")


def test_bundle_loads_without_svrl(tiny_policy, tmp_path):
    """A fresh interpreter with only the bundle's runtime.py on the path: no svrl_core import."""
    export_bundle(tiny_policy, tmp_path / "bundle", "tiny")
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import runtime;"
        "p = runtime.BundlePolicy(sys.argv[1]);"
        "a = p.act(np.zeros((32, 32, 3), np.uint8), np.zeros(2, np.float32), 'move to the red disc');"
        "assert 'svrl_core' not in sys.modules, 'runtime imported svrl_core'; print(a.shape)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bundle")], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    assert out.stdout.strip() == "(4, 2)"


def test_bundle_rejects_wrong_image_size(tiny_policy, tmp_path):
    export_bundle(tiny_policy, tmp_path / "bundle", "tiny")
    with pytest.raises(ValueError, match=r"expected uint8 images \(B, 32, 32, 3\)"):
        BundlePolicy(tmp_path / "bundle").act(np.zeros((64, 64, 3), np.uint8), np.zeros(2), "x")


def test_manifest_checksums_every_file_and_provenance_travels_with_the_bundle(tiny_policy, tmp_path):
    import hashlib

    export_bundle(tiny_policy, tmp_path / "bundle", "tiny", {"git": {"commit": "abc"}}, ["dx", "dy"])
    bundle = BundlePolicy(tmp_path / "bundle")
    files = {p.relative_to(tmp_path / "bundle").as_posix() for p in (tmp_path / "bundle").rglob("*") if p.is_file()}
    assert set(bundle.manifest["files"]) == files - {"manifest.json"}
    assert {"policy.json", "policy.safetensors", "bundle.json", "runtime.py", "provenance.json",
            "checkpoint/model.safetensors"} <= files
    entry = bundle.manifest["files"]["policy.safetensors"]
    assert entry["sha256"] == hashlib.sha256((tmp_path / "bundle/policy.safetensors").read_bytes()).hexdigest()
    assert json.loads((tmp_path / "bundle/provenance.json").read_text()) == {"git": {"commit": "abc"}}
    assert bundle.spec["postprocessing"]["action_names"] == ["dx", "dy"]


def test_provenance_records_revision_data_versions_metrics_and_params(tiny_params, tmp_path, monkeypatch):
    import subprocess

    from tasks.metrics import write_metrics
    from tasks.provenance import collect_provenance

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  ingest:\n    outs:\n    - path: data/demos/toy\n"
                                       "      md5: 0123abcd.dir\n  report:\n    outs: []\n")
    params = tiny_params.model_copy(update={"paths": tiny_params.paths.model_copy(update={"metrics": "metrics"})})
    write_metrics(params, "eval_rl", {"mean_success": 0.75})
    record = collect_provenance(params)
    assert len(record["git"]["commit"]) == 40 and record["git"]["dirty"] is False
    assert record["dvc"] == {"ingest": {"data/demos/toy": "0123abcd.dir"}}
    assert record["metrics"] == {"eval_rl": {"mean_success": 0.75}}  # eval_sft not run yet: left out
    assert record["params"]["env"]["tasks"] == ["red", "blue"]
