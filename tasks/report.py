"""The SFT-vs-RL report from the stages' metrics."""

from __future__ import annotations

from prefect import task

from svrl_core.config import Params
from svrl_core.io import join, read_json
from svrl_core.report import headline_metrics, write_report
from tasks.metrics import read_existing_json, read_metrics, write_metrics


@task
def write_pipeline_report(params: Params) -> str:
    sft, rl = read_metrics(params, "eval_sft"), read_metrics(params, "eval_rl")
    history = read_json(join(params.paths.plots, "rl_history.json"))
    protocol = describe_protocol(params) + describe_skipped_layouts(params, sft)
    write_metrics(params, "headline", headline_metrics(sft, rl, history))
    return write_report(params.report.title, sft, rl, history, params.paths.report, protocol,
                        {label: read_baseline(label, path) for label, path in params.report.baselines.items()})


def read_baseline(label: str, path: str) -> dict:
    """Another run's eval metrics; a missing one names the key to fix rather than failing deep in the report."""
    return read_existing_json(path, f"report.baselines[{label!r}] = {path!r} does not exist: run that config's "
                              "ingest, sft and eval_sft stages first (README: LIBERO-Object, 10 tasks), "
                              "or remove the entry")


def describe_protocol(params: Params) -> str:
    """Which initial states (seeds) were evaluated, and whether demonstrations or RL may have used them."""
    ingest, rl = params.ingest, params.rl
    evaluated = range(params.eval.seed_start, params.eval.seed_start + params.eval.episodes_per_task)
    demos = range(ingest.seed_start, ingest.seed_start + 10 * ingest.episodes_per_task)  # the expert's attempt cap
    rl_prompts = rl.initial_states or rl.iterations * rl.prompts_per_batch * (
        rl.max_rollouts // (rl.prompts_per_batch * rl.group_size) if rl.train_groups else rl.max_refills + 1)
    trained = range(rl.seed_start, rl.seed_start + rl_prompts)
    overlap = lambda states: max(states.start, evaluated.start) < min(states.stop, evaluated.stop)  # noqa: E731
    return (f"Greedy success rate per task on initial states {evaluated.start}..{evaluated.stop - 1}. "
            f"Demonstrations {'may share' if overlap(demos) else 'never used'} these states; RL "
            f"{'trained on them too (as SimpleVLA-RL does)' if overlap(trained) else 'never saw them'}. "
            f"Step limit: evaluation {params.env.max_steps}, RL rollouts "
            f"{params.env.max_steps if rl.max_steps is None else rl.max_steps}. Policy: {describe_policy(params)}.")


def describe_skipped_layouts(params: Params, evaluation: dict) -> str:
    """With env.solvable_layouts_only: how many layouts evaluation and RL skipped because the expert failed them."""
    if not params.env.solvable_layouts_only:
        return ""
    rl = read_metrics(params, "rl")
    count = lambda table: sum(len(seeds) for seeds in table.get("unsolvable_layouts", {}).values())  # noqa: E731
    skipped = sorted(seed for seeds in evaluation.get("unsolvable_layouts", {}).values() for seed in seeds)
    return (f" Only layouts the expert solves: evaluation skipped {count(evaluation)} as unsolvable"
            f"{f' (seeds {skipped})' if skipped else ''}, RL {count(rl)}.")


def describe_policy(params: Params) -> str:
    policy = params.policy
    if policy.family == "tiny-vla":
        return f"TinyVLA ({policy.trunk} trunk)"
    if params.sft.steps == 0:
        return f"OpenVLA-OFT {policy.oft.checkpoint} as it is (no SFT here), {policy.oft.conventions} conventions"
    start = policy.oft.checkpoint or f"fresh {policy.oft.size} layout"
    return f"OpenVLA-OFT from {start}{f', LoRA r={policy.oft.lora_rank}' if policy.oft.lora_rank else ''}"
