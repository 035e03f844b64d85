"""The final report: SFT vs RL success per task and the RL learning curve, as markdown + PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from svrl_core.evaluation import plot_success_rates  # noqa: E402
from svrl_core.io import atomic_directory  # noqa: E402


DROP_FLAG = 0.2  # a task whose greedy success RL lowers this much is named under the success table
CURVES = (  # (history key, label) per panel of the learning curve
    (("success_rate", "rollout success"), ("kept_group_fraction", "kept groups")),
    (("approx_kl", "approx KL"), ("clip_fraction", "clip fraction")),
    (("entropy", "entropy (nats/token)"),),
)


def plot_learning_curve(history: list[dict], path: str | Path) -> None:
    """One panel per row of CURVES against the GRPO iteration; keys an older history lacks plot as gaps."""
    fig, axes = plt.subplots(len(CURVES), 1, figsize=(5, 2.2 * len(CURVES)), sharex=True)
    iterations = [row["iteration"] for row in history]
    for ax, panel in zip(axes, CURVES):
        for key, label in panel:
            ax.plot(iterations, [row.get(key, float("nan")) for row in history], label=label, marker=".")
        ax.legend(fontsize=8)
    axes[0].set_ylim(0, 1)
    axes[-1].set_xlabel("GRPO iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curve_points(history: list[dict]) -> list[dict]:
    """The run's learning-curve points (rl.curve_every), the starting policy's first: each with the GRPO
    iteration, the mixed groups trained so far and the run's minutes so far."""
    points, trained = [], 0
    if history and "curve_before" in history[0]:
        points.append({"iteration": 0, "groups": 0, "minutes": 0.0, **history[0]["curve_before"]})
    for row in history:
        if "loss" in row:
            trained += row.get("trained_groups", row.get("mixed_groups", 0))
        if "curve_greedy" in row:
            points.append({"iteration": row["iteration"], "groups": trained, "minutes": row["run_time_s"] / 60,
                           **{k: row[k] for k in ("curve_greedy", "curve_sampled", "curve_greedy_per_task")}})
    return points


def plot_curve(points: list[dict], path: str | Path) -> None:
    """Greedy and sampled success of the curve's points against mixed groups trained and against time."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
    for ax, x, label in zip(axes, ("groups", "minutes"), ("mixed groups trained", "minutes of RL")):
        for key, name in (("curve_greedy", "greedy"), ("curve_sampled", "sampled (rollout temperature)")):
            ax.plot([p[x] for p in points], [p[key] for p in points], label=name, marker=".")
        ax.set_xlabel(label)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curve_markdown(points: list[dict]) -> str:
    lines = ["| iteration | mixed groups trained | minutes | greedy | sampled |", "|---|---|---|---|---|"]
    lines += [f"| {p['iteration']} | {p['groups']} | {p['minutes']:.1f} | {p['curve_greedy']:.3f} | "
              f"{p['curve_sampled']:.3f} |" for p in points]
    return "\n".join(lines)


def dropped_tasks(sft: dict, rl: dict, by: float = DROP_FLAG) -> list[str]:
    """Tasks whose greedy success RL lowered by `by` or more: '<task> (0.45 -> 0.00)'."""
    dropped = []
    for task, row in sorted(sft["per_task"].items()):
        after = rl["per_task"].get(task, {}).get("success_rate")
        if after is not None and row["success_rate"] - after >= by - 1e-9:
            dropped.append(f"{task} ({row['success_rate']:.2f} -> {after:.2f})")
    return dropped


def history_markdown(history: list[dict]) -> str:
    """The learning curve's numbers, one row per iteration (rollout success is sampled at the RL temperature)."""
    columns = [column for panel in CURVES for column in panel]
    lines = ["| iteration | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in history:
        lines.append(f"| {row['iteration']} | " + " | ".join(f"{row.get(key, float('nan')):.3f}" for key, _ in columns)
                     + " |")
    return "\n".join(lines)


def success_markdown(sft: dict, rl: dict) -> str:
    """Greedy SFT vs RL per task, and sampled success beside it when both tables have it."""
    sampled = "sampled" in sft and "sampled" in rl
    decoding = f" greedy ({sft['decoding']})" if "decoding" in sft else ""  # absent in tables from before the option
    header = f"| task | SFT{decoding} | RL{decoding} | change |"
    if sampled:
        header += f" SFT sampled (T = {sft['sampled']['temperature']:g}) | RL sampled | change |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]

    def cells(a: dict, b: dict, task: str | None) -> str:
        x = a["success_rate"] if task is None else a["per_task"].get(task, {}).get("success_rate", float("nan"))
        y = b["success_rate"] if task is None else b["per_task"].get(task, {}).get("success_rate", float("nan"))
        bold = "**" if task is None else ""
        return f" {bold}{x:.2f}{bold} | {bold}{y:.2f}{bold} | {bold}{y - x:+.2f}{bold} |"

    for task in [*sorted(set(sft["per_task"]) | set(rl["per_task"])), None]:
        name = task if task is not None else f"**all** ({sft['episodes']} / {rl['episodes']} episodes)"
        lines.append(f"| {name} |" + cells(sft, rl, task) + (cells(sft["sampled"], rl["sampled"], task) if sampled else ""))
    return "\n".join(lines)


def baseline_markdown(rl: dict, baselines: dict[str, dict]) -> str:
    """RL's greedy success per task against each baseline's (e.g. SFT on many more demos)."""
    header = "| task | RL | " + " | ".join(f"{label} | RL - {label}" for label in baselines) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    rate = lambda table, task: (table["success_rate"] if task is None  # noqa: E731
                                else table["per_task"].get(task, {}).get("success_rate", float("nan")))
    for task in [*sorted(rl["per_task"]), None]:
        rl_rate = rate(rl, task)
        cells = [f"{rate(table, task):.2f} | {rl_rate - rate(table, task):+.2f}" for table in baselines.values()]
        lines.append(f"| {task or '**all**'} | {rl_rate:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_metrics(sft: dict, rl: dict, history: list[dict]) -> dict:
    """One run in a few numbers: greedy (the official protocol) and sampled success before and after RL,
    their change, and what RL cost (rollouts, mixed groups trained, minutes)."""
    headline = {"sft_greedy": sft["success_rate"], "rl_greedy": rl["success_rate"],
                "greedy_change": rl["success_rate"] - sft["success_rate"]}
    if "sampled" in sft and "sampled" in rl:
        before, after = sft["sampled"]["success_rate"], rl["sampled"]["success_rate"]
        headline.update(sft_sampled=before, rl_sampled=after, sampled_change=after - before)
    headline.update(rl_episodes=sum(row["episodes"] for row in history),
                    rl_mixed_groups=sum(row.get("mixed_groups", 0) for row in history),
                    rl_minutes=history[-1].get("run_time_s", 0.0) / 60 if history else 0.0)
    return headline


def write_report(title: str, sft: dict, rl: dict, history: list[dict], directory: str | Path,
                 protocol: str = "Greedy success rate per task.", baselines: dict[str, dict] | None = None) -> str:
    """Write report.md, success.png and learning_curve.png as the directory `directory`; returns the markdown.

    `protocol` says which initial states were evaluated and how they relate to training; `baselines`
    maps a label to another run's eval table, compared with RL's greedy success."""
    baselines = baselines or {}
    with atomic_directory(directory) as staging:
        plot_success_rates({"sft": sft, "rl": rl, **baselines}, staging / "success.png")
        plot_learning_curve(history, staging / "learning_curve.png")
        if curve_points(history):
            plot_curve(curve_points(history), staging / "rl_curve.png")
        markdown = report_markdown(title, sft, rl, history, protocol, baselines)
        (staging / "report.md").write_text(markdown)
    return markdown


def report_markdown(title: str, sft: dict, rl: dict, history: list[dict], protocol: str,
                    baselines: dict[str, dict]) -> str:
    last = history[-1] if history else {}
    compared = ["## RL against the baselines (greedy)", "", baseline_markdown(rl, baselines), ""] if baselines else []
    dropped = dropped_tasks(sft, rl)
    flagged = [f"**Dropped by {DROP_FLAG:.2f} or more under RL:** {', '.join(dropped)}.", ""] if dropped else []
    points = curve_points(history)
    curve = ["## Learning curve", "",
             "The policy during RL on a fixed subset of the initial states: greedy as evaluated, and sampled at "
             "the rollout temperature. When a point beats the starting policy, the best one's policy is in the "
             "RL model's best/ folder.", "",
             "![learning curve](rl_curve.png)", "", curve_markdown(points), ""] if points else []
    return "\n".join([
        f"# {title}", "",
        protocol, "",
        success_markdown(sft, rl), "",
        *flagged,
        *compared,
        "![success per task](success.png)", "",
        *curve,
        f"## GRPO: {len(history)} iterations", "",
        f"Last iteration: rollout success {last.get('success_rate', float('nan')):.2f}, "
        f"kept groups {last.get('kept_group_fraction', float('nan')):.2f}, "
        f"env steps/s {last.get('env_steps_per_s', float('nan')):.0f}.", "",
        "![learning curve](learning_curve.png)", "",
        history_markdown(history), ""])
