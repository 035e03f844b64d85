"""`make exps` (`python -m tasks.experiments [dvc exp show options]`): DVC experiments side by side in
under 120 columns, one line each: the params that differ between them and the run's headline metrics
(metrics/headline.json, written by the report stage). `dvc exp show` keeps every per-task counter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Iterator

WIDTH = 120
HEADLINE_FILE = "headline.json"
# (metric in headline.json, column title, as points?) greedy is the official protocol, sampled at T 1
COLUMNS = (("sft_greedy", "SFT", False), ("rl_greedy", "RL", False), ("greedy_change", "change", True),
           ("sft_sampled", "SFT~", False), ("rl_sampled", "RL~", False), ("sampled_change", "change~", True),
           ("rl_episodes", "rollouts", False), ("rl_minutes", "RL min", False))
LEGEND = ("params changed: against the commit an experiment ran from (the workspace: against HEAD). SFT, RL: "
          "greedy success (the benchmark's protocol); ~: sampled at eval.sampled_temperature; change in points; "
          "RL min: RL wall time. Every metric: dvc exp show")


def runs(table: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    """(label, data, its baseline's data) for every row of `dvc exp show --json`: the workspace (against
    HEAD), each commit (against itself) and each experiment (against the commit it ran from)."""
    commits = [commit for commit in table if commit["rev"] != "workspace"]
    head = (commits[0].get("data") or {}) if commits else {}
    for commit in table:
        data = commit.get("data") or {}
        if commit["rev"] == "workspace":
            yield "workspace", data, head
            continue
        yield commit.get("name") or commit["rev"][:7], data, data
        for run in commit.get("experiments") or []:
            for state in run.get("revs", []):
                yield state.get("name") or state["rev"][:7], state.get("data") or {}, data


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"rl": {"lr": 1e-3}} -> {"rl.lr": 1e-3}"""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def params_of(data: dict) -> dict[str, object]:
    result = (data.get("params") or {}).get("params.yaml") or {}
    return flat(result.get("data") or {})


def headline_of(data: dict) -> dict:
    files = data.get("metrics") or {}
    found = next((result for path, result in files.items() if path.endswith(HEADLINE_FILE)), None)
    return (found or {}).get("data") or {}


def cell(value: object, points: bool) -> str:
    if value is None:
        return "-"
    if points:
        return f"{100 * value:+.1f}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def changes(data: dict, baseline: dict) -> str:
    """The params that differ from the baseline's, as key=value (compact JSON), or '-'."""
    params, base = params_of(data), params_of(baseline)
    differ = [key for key in sorted(params.keys() | base.keys()) if params.get(key) != base.get(key)]
    return ", ".join(f"{key}={json.dumps(params.get(key), separators=(',', ':'))}" for key in differ) or "-"


def format_table(table: list[dict], width: int = WIDTH) -> str:
    """One line per commit and experiment: its label, its params changed (wrapped), its headline metrics."""
    rows = [(label, changes(data, baseline), headline_of(data)) for label, data, baseline in runs(table)]
    metrics = [[cell(headline.get(key), points) for key, _, points in COLUMNS] for _, _, headline in rows]
    metric_widths = [max(len(title), *(len(m[i]) for m in metrics)) for i, (_, title, _) in enumerate(COLUMNS)]
    label_width = min(20, max(len("experiment"), *(len(label) for label, _, _ in rows)))
    params_width = width - label_width - sum(w + 2 for w in metric_widths) - 2
    head = "  ".join(title.rjust(w) for (_, title, _), w in zip(COLUMNS, metric_widths))
    lines = [f"{'experiment'.ljust(label_width)}  {'params changed'.ljust(params_width)}  {head}"]
    for (label, changed, _), values in zip(rows, metrics):
        wrapped = textwrap.wrap(changed, params_width, break_on_hyphens=False)
        numbers = "  ".join(v.rjust(w) for v, w in zip(values, metric_widths))
        lines.append(f"{label[:label_width].ljust(label_width)}  {wrapped[0].ljust(params_width)}  {numbers}")
        lines += [f"{'':{label_width}}  {more}" for more in wrapped[1:]]
    return "\n".join(lines + textwrap.wrap(LEGEND, width))


def main(args: list[str]) -> None:
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", *args], capture_output=True,
                           text=True)
    if shown.returncode:
        sys.exit(f"error: dvc exp show failed: {shown.stderr.strip() or shown.stdout.strip()}")
    print(format_table(json.loads(shown.stdout)))


if __name__ == "__main__":
    main(sys.argv[1:])
