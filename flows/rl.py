from prefect import flow

from flows.cli import run_stage
from svrl_core.config import load_params
from svrl_core.io import join, write_json_atomic
from svrl_core.training import remove_training_state
from tasks.metrics import write_metrics
from tasks.rl import fit_rl_policy, train_rl_policy
from tasks.tracking import tracking_run

SUMMARY_KEYS = ("success_rate", "kept_group_fraction", "env_steps_per_s")


@flow(name="rl")
def rl_flow(params_path: str = "params.yaml") -> dict:
    """GRPO from the SFT policy with a binary success reward (SimpleVLA-RL)."""
    params = load_params(params_path)
    with tracking_run("rl", params) as run:
        history, unsolvable = train_rl_policy(params, lambda row: run.log({f"rl/{k}": v for k, v in row.items()},
                                                              step=row["iteration"]))
    write_json_atomic(join(params.paths.plots, "rl_history.json"), history)
    first, last = history[0], history[-1]
    summary = {"iterations": len(history), "env_steps": sum(r["env_steps"] for r in history),
               **{f"first_{k}": first[k] for k in SUMMARY_KEYS}, **{f"last_{k}": last[k] for k in SUMMARY_KEYS}}
    points = [row for row in history if "curve_greedy" in row]
    if points:  # the learning curve (rl.curve_every): its last point, and the best one, kept under best/
        best = max(points, key=lambda row: row["curve_greedy"])
        summary.update(last_curve_greedy=points[-1]["curve_greedy"], best_curve_greedy=best["curve_greedy"],
                       best_curve_iteration=best["iteration"])
    if unsolvable is not None:
        summary["unsolvable_layouts"] = unsolvable
    write_metrics(params, "rl", summary)
    remove_training_state(params.paths.rl_state)  # outputs written: a rerun (new code, same config) starts afresh
    return summary


def rl_replica(params_path: str = "params.yaml") -> None:
    """Ranks > 0 of a multi-rank run: roll out and train their share, write only their optimizer partitions."""
    fit_rl_policy(load_params(params_path))


if __name__ == "__main__":
    run_stage(rl_flow, replica=rl_replica)
