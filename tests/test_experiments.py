"""Headline metrics per run and `make exps`: experiments side by side within 120 columns."""

from svrl_core.report import headline_metrics
from tasks.experiments import format_table

TASKS = [f"pick_up_the_{thing}_and_place_it_in_the_basket" for thing in ("alphabet_soup", "cream_cheese", "milk")]


def evaluation(greedy: float, sampled: float) -> dict:
    return {"success_rate": greedy, "per_task": {"red": {"success_rate": greedy}},
            "sampled": {"success_rate": sampled, "temperature": 1.0}}


def test_headline_metrics_name_both_rates_their_change_and_what_rl_cost():
    history = [{"episodes": 32, "mixed_groups": 3, "run_time_s": 50.0},
               {"episodes": 64, "mixed_groups": 5, "run_time_s": 110.0}]
    headline = headline_metrics(evaluation(0.25, 0.33), evaluation(0.64, 0.66), history)
    assert headline == {"sft_greedy": 0.25, "rl_greedy": 0.64, "greedy_change": 0.64 - 0.25, "sft_sampled": 0.33,
                        "rl_sampled": 0.66, "sampled_change": 0.66 - 0.33, "rl_episodes": 96, "rl_mixed_groups": 8,
                        "rl_minutes": 110.0 / 60}
    greedy_only = headline_metrics({"success_rate": 0.5}, {"success_rate": 0.25}, history)
    assert "sft_sampled" not in greedy_only and greedy_only["greedy_change"] == -0.25


def state(rev: str, name: str | None, params: dict, headline: dict | None) -> dict:
    metrics = {"metrics/eval_rl.json": {"data": {"per_task": {t: {"successes": 3} for t in TASKS}}}}
    if headline is not None:
        metrics["metrics/headline.json"] = {"data": headline}
    return {"rev": rev, "name": name, "data": {"rev": rev, "params": {"params.yaml": {"data": params}},
                                               "metrics": metrics}, "error": None, "experiments": None}


def params(lr: float, temperature: float, tasks: list[str] = TASKS) -> dict:
    return {"rl": {"lr": lr, "temperature": temperature, "group_size": 8}, "env": {"tasks": tasks}, "sft": {"seed": 0}}


def test_experiments_fit_120_columns_with_their_changed_params_and_headline_metrics():
    """The shape of `dvc exp show --json` (dvc 3): commits, each with runs of experiment states."""
    baseline = headline_metrics(evaluation(0.245, 0.33), evaluation(0.64, 0.66), [{"episodes": 9000, "run_time_s": 180}])
    lower_lr = headline_metrics(evaluation(0.245, 0.33), evaluation(0.51, 0.495), [{"episodes": 8000, "run_time_s": 170}])
    commit = state("a" * 40, "main", params(3e-4, 1.6), baseline)
    commit["experiments"] = [
        {"revs": [state("b" * 40, "lower-lr", params(1e-4, 1.6), lower_lr)], "executor": None, "name": "lower-lr"},
        {"revs": [state("c" * 40, "few-tasks-and-a-long-name", params(3e-4, 1.2, TASKS[:1]), None)]}]
    table = format_table([state("workspace", None, params(3e-4, 1.6), baseline), commit])
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert lines[0].split()[:3] == ["experiment", "params", "changed"]
    assert lines[1].split()[:2] == ["workspace", "-"] and "+39.5" in lines[1] and "+33.0" in lines[1]
    assert lines[2].split()[:2] == ["main", "-"] and "9000" in lines[2]
    assert lines[3].split()[:2] == ["lower-lr", "rl.lr=0.0001"] and "+26.5" in lines[3] and "8000" in lines[3]
    long_one = table[table.index("few-tasks-and-a-long"):].split("\n")
    assert long_one[0].split()[1].startswith('env.tasks=["pick_up_the_alphabet_soup')
    assert long_one[0].split()[-8:] == ["-"] * 8  # no headline metrics (a failed run)
    assert "rl.temperature=1.2" in "".join(long_one[1:3])  # wrapped onto its own lines
