import re
from pathlib import Path

import pytest
import yaml

from svrl_core.config import ConfigError, Params, load_params, parse_params


def test_toy_config_equals_the_documented_defaults():
    """The class defaults document configs/toy.yaml; they must not drift apart."""
    params = load_params("configs/toy.yaml")
    assert params == Params()
    assert params.rl.temperature == 1.6 and params.rl.clip_high == 0.28 and params.rl.clip_low == 0.2


def test_default_params_are_the_toy_config_and_the_libero_one_keeps_demos_off_the_evaluated_states():
    assert load_params("params.yaml") == load_params("configs/toy.yaml")  # the lift that is real at its budget
    params = load_params("configs/libero_object.yaml")
    assert params.env.family == "libero" and params.env.suite == "libero_object"
    assert params.rl.temperature == 1.6 and params.rl.clip_high == 0.28 and params.rl.clip_low == 0.2
    demo_states = set(range(params.ingest.seed_start, params.ingest.seed_start + params.ingest.episodes_per_task))
    eval_states = set(range(params.eval.seed_start, params.eval.seed_start + params.eval.episodes_per_task))
    assert not demo_states & eval_states and max(demo_states | eval_states) < 50


@pytest.mark.parametrize("config", sorted(str(p) for p in Path("configs").glob("*.yaml")))
def test_every_named_config_loads(config):
    """`make run CONFIG=name` copies configs/name.yaml over params.yaml: each must pass validation."""
    load_params(config)


@pytest.mark.parametrize("config", ["params.yaml", *sorted(str(p) for p in Path("configs").glob("*.yaml"))])
def test_every_param_that_dvc_tracks_is_in_each_config(config):
    """`dvc repro` / `dvc commit` fail on a params key that the file lacks, even one whose default is null."""
    raw = yaml.safe_load(Path(config).read_text())
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    keys = {key for stage in stages.values() for key in stage.get("params", [])}
    keys |= set(re.findall(r"\$\{([\w.]+)\}", Path("dvc.yaml").read_text()))  # ${paths.demos} in deps and outs
    assert keys, "dvc.yaml lists no params"
    missing = []
    for key in sorted(keys):
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    assert not missing, f"{config} lacks {missing}, which dvc.yaml lists"


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"rl\.learning_rate: unknown key"):
        parse_params({"rl": {"learning_rate": 0.1}})


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match=r"trainer: unknown key"):
        parse_params({"trainer": {}})


def test_bad_value_names_key_value_and_range():
    with pytest.raises(ConfigError) as err:
        parse_params({"rl": {"group_size": 1}})
    assert "rl.group_size = 1" in str(err.value) and "greater than or equal to 2" in str(err.value)


def test_bad_choice_lists_valid_ones():
    with pytest.raises(ConfigError, match="seq-mean-token-mean"):
        parse_params({"rl": {"loss_agg": "sum"}})


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_params({"sft": {"lr": -1}, "eval": {"episodes_per_task": 0}})
    assert "sft.lr" in str(err.value) and "eval.episodes_per_task" in str(err.value)


def test_malformed_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("rl: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_top_level_must_be_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_params(["rl"])


def test_duplicate_tasks_rejected():
    with pytest.raises(ConfigError, match="tasks must be unique"):
        parse_params({"env": {"tasks": ["red", "red"]}})


def test_mini_batches_must_hold_whole_groups():
    with pytest.raises(ConfigError, match="mini_batch_trajectories=12 must be a multiple of group_size=8"):
        parse_params({"rl": {"mini_batch_trajectories": 12}})


def test_temperature_and_clip_ranges():
    for bad in ({"temperature": 0}, {"clip_low": 1.0}, {"clip_high": 0}, {"group_size": 1}):
        with pytest.raises(ConfigError, match=f"rl.{next(iter(bad))} = "):
            parse_params({"rl": bad})


def test_tinyvla_only_action_options_are_refused_for_openvla_oft():
    with pytest.raises(ConfigError, match="action_bounds: min_max is implemented for TinyVLA"):
        parse_params({"policy": {"family": "openvla-oft", "action_bounds": "min_max"}})
    with pytest.raises(ConfigError, match="binary_action_dims is implemented for TinyVLA"):
        parse_params({"policy": {"family": "openvla-oft", "binary_action_dims": [6]}})
    with pytest.raises(ConfigError, match="relative_action_dims is implemented for TinyVLA"):
        parse_params({"policy": {"family": "openvla-oft", "relative_action_dims": [0]}})
    with pytest.raises(ConfigError, match="keypoint_gain is implemented for TinyVLA"):
        parse_params({"policy": {"family": "openvla-oft", "keypoint_gain": 8}})


def test_relative_grippers_are_refused():
    with pytest.raises(ConfigError, match="overlap: grippers stay absolute"):
        parse_params({"policy": {"relative_action_dims": [0, 6], "unnormalized_action_dims": [6]}})
