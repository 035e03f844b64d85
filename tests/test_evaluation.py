import json

import numpy as np
import pytest
from PIL import Image

from svrl_core.envs.base import Obs
from svrl_core.evaluation import plot_success_rates, save_episode_gifs, success_table
from svrl_core.report import write_report
from svrl_core.rollout import EpisodeRequest, Trajectory


def fake_trajectory(task: str, seed: int, success: bool) -> Trajectory:
    obs = [Obs({"main": np.full((8, 8, 3), 50 * t, dtype=np.uint8)}, np.zeros(2, np.float32), f"move to the {task} disc")
           for t in range(3)]
    return Trajectory(EpisodeRequest(task, seed), obs[:2], [np.zeros((4, 2), int)] * 2, [4, 2], obs[2], success)


def trajectories():
    return [fake_trajectory(task, seed, success=seed % 2 == 0) for task in ("red", "blue") for seed in range(4)]


def test_success_table_counts_per_task():
    table = success_table(trajectories())
    assert table["success_rate"] == 0.5 and table["episodes"] == 8 and table["mean_steps"] == 6
    assert table["per_task"]["red"] == {"episodes": 4, "successes": 2, "errors": 0, "success_rate": 0.5}


def test_gifs_mix_outcomes_and_tasks(tmp_path):
    paths = save_episode_gifs(trajectories(), tmp_path, 4, "main")
    names = sorted(p.name for p in paths)
    assert names == ["blue_seed0_success.gif", "blue_seed1_failure.gif", "red_seed0_success.gif",
                     "red_seed1_failure.gif"]
    gif = Image.open(paths[0])
    assert gif.n_frames == 3 and gif.size == (32, 32)


def test_report_and_plots(tmp_path):
    table = success_table(trajectories())
    better = {**table, "success_rate": 0.75}
    history = [{"iteration": i, "success_rate": 0.1 * i, "kept_group_fraction": 0.5, "env_steps_per_s": 1000.0,
                "approx_kl": 0.01 * i, "clip_fraction": 0.02, "entropy": 1.0 - 0.1 * i} for i in range(1, 6)]
    history[0].pop("entropy")  # histories from before a metric existed still render
    text = write_report("title", table, better, history, tmp_path / "report")
    assert text == (tmp_path / "report/report.md").read_text()
    assert "| **all** (8 / 8 episodes) | **0.50** | **0.75** | **+0.25** |" in text
    assert "| iteration | rollout success | kept groups | approx KL | clip fraction | entropy (nats/token) |" in text
    assert "| 1 | 0.100 | 0.500 | 0.010 | 0.020 | nan |" in text and "| 5 | 0.500 | 0.500 | 0.050 | 0.020 | 0.500 |" in text
    assert (tmp_path / "report/success.png").stat().st_size > 1000
    assert (tmp_path / "report/learning_curve.png").stat().st_size > 1000
    plot_success_rates({"only": table}, tmp_path / "one.png")
    assert (tmp_path / "one.png").is_file()


def test_report_shows_the_learning_curve_and_flags_tasks_rl_dropped(tmp_path):
    table = success_table(trajectories())  # red 0.50, blue 0.50
    worse = {**table, "per_task": {**table["per_task"], "red": {**table["per_task"]["red"], "success_rate": 0.25}}}
    point = lambda greedy: {"curve_greedy": greedy, "curve_sampled": greedy / 2,  # noqa: E731
                            "curve_greedy_per_task": {"red": greedy, "blue": greedy}}
    history = [{"iteration": 1, "success_rate": 0.3, "loss": 0.1, "mixed_groups": 3, "run_time_s": 60.0,
                "curve_before": point(0.5)},
               {"iteration": 2, "success_rate": 0.4, "mixed_groups": 1, "run_time_s": 120.0, **point(0.625)},
               {"iteration": 3, "success_rate": 0.4, "loss": 0.1, "mixed_groups": 2, "run_time_s": 150.0}]
    text = write_report("title", table, worse, history, tmp_path / "report")
    assert "**Dropped by 0.20 or more under RL:** red (0.50 -> 0.25)." in text
    assert "| 0 | 0 | 0.0 | 0.500 | 0.250 |" in text and "| 2 | 3 | 2.0 | 0.625 | 0.312 |" in text
    assert (tmp_path / "report/rl_curve.png").stat().st_size > 1000
    assert "Dropped" not in write_report("title", table, table, history, tmp_path / "again")


def test_report_compares_rl_with_baselines(tmp_path):
    table = success_table(trajectories())
    many = {**table, "success_rate": 0.625, "per_task": {**table["per_task"], "red": {"success_rate": 1.0}}}
    text = write_report("title", table, {**table, "success_rate": 0.75}, [], tmp_path / "report",
                        baselines={"SFT 5x demos": many})
    assert "| task | RL | SFT 5x demos | RL - SFT 5x demos |" in text
    assert "| red | 0.50 | 1.00 | -0.50 |" in text and "| **all** | 0.75 | 0.62 | +0.12 |" in text


def test_a_missing_baseline_names_the_key(tmp_path):
    from tasks.report import read_baseline

    with pytest.raises(FileNotFoundError, match=r"report.baselines\['many'\] = .*does not exist"):
        read_baseline("many", str(tmp_path / "eval_sft.json"))


def test_report_says_which_states_training_saw():
    from svrl_core.config import load_params
    from tasks.report import describe_protocol

    libero = describe_protocol(load_params("configs/libero_object.yaml"))
    assert "initial states 0..29" in libero and "RL trained on them too" in libero
    assert "Demonstrations never used these states" in libero
    toy = describe_protocol(load_params("configs/toy.yaml"))
    assert "RL never saw them" in toy and "Demonstrations never used" in toy
    assert "Policy: TinyVLA (mlp trunk)" in toy
    assert ("Policy: OpenVLA-OFT models/simplevla-rl-sft-libero-object as it is (no SFT here), simplevla-rl-libero "
            "conventions.") in describe_protocol(load_params("configs/libero_oft_7b.yaml"))
    assert "Policy: OpenVLA-OFT from fresh tiny layout." in describe_protocol(load_params("configs/libero_oft.yaml"))


def test_report_counts_the_layouts_skipped_as_unsolvable(tmp_path):
    from svrl_core.config import load_params
    from tasks.report import describe_skipped_layouts

    robotwin = load_params("configs/robotwin.yaml")
    with_filter = lambda on: robotwin.model_copy(update={  # noqa: E731
        "env": robotwin.env.model_copy(update={"solvable_layouts_only": on}),
        "paths": robotwin.paths.model_copy(update={"metrics": str(tmp_path)})})
    assert describe_skipped_layouts(with_filter(False), {}) == "", "not filtering: nothing to say"
    filtered = with_filter(True)
    (tmp_path / "rl.json").write_text(json.dumps({"unsolvable_layouts": {"stack_blocks_two": [1003, 1010]}}))
    text = describe_skipped_layouts(filtered, {"unsolvable_layouts": {"stack_blocks_two": [100007]}})
    assert "evaluation skipped 1 as unsolvable (seeds [100007]), RL 2." in text


def test_evaluation_reports_sampled_success_beside_greedy(tiny_policy, tiny_params):
    from svrl_core.evaluation import evaluate_policy
    from svrl_core.rollout import LocalEnvPool

    cfg = tiny_params.eval.model_copy(update={"episodes_per_task": 4, "sampled_temperature": 1.0})
    pool = LocalEnvPool(tiny_params.env, 8)
    table, greedy = evaluate_policy(tiny_policy, pool, ["red", "blue"], cfg)
    again, _ = evaluate_policy(tiny_policy, pool, ["red", "blue"], cfg)
    assert len(greedy) == 8 and table["sampled"]["temperature"] == 1.0 and table["sampled"]["episodes"] == 8
    assert set(table["sampled"]["per_task"]) == {"red", "blue"}
    assert again == table  # greedy is deterministic and the sampling is seeded
    greedy_only, _ = evaluate_policy(tiny_policy, pool, ["red", "blue"], cfg.model_copy(update={"sampled_temperature": None}))
    assert "sampled" not in greedy_only and greedy_only["success_rate"] == table["success_rate"]


def test_report_puts_sampled_success_beside_greedy(tmp_path):
    table = success_table(trajectories())
    sft = {**table, "decoding": "mean", "sampled": {"temperature": 1.0, **table, "success_rate": 0.25}}
    rl = {**table, "decoding": "mean", "success_rate": 0.75,
          "sampled": {"temperature": 1.0, **table, "success_rate": 0.5}}
    text = write_report("title", sft, rl, [], tmp_path / "report")
    assert "| task | SFT greedy (mean) | RL greedy (mean) | change | SFT sampled (T = 1) | RL sampled | change |" in text
    assert "| **all** (8 / 8 episodes) | **0.50** | **0.75** | **+0.25** | **0.25** | **0.50** | **+0.25** |" in text
