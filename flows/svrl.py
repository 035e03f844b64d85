"""The `svrl` command: `svrl STAGE [--params PATH]` runs a dvc.yaml stage or the whole `pipeline`;
`svrl serve BUNDLE`, `svrl drive` and `svrl sign BUNDLE` run a policy beside a (simulated) robot.

It sits above the flows (flows/cli.py runs one stage and imports none of them), so no module
imports another that imports it back."""

from __future__ import annotations

import sys

from flows.cli import run_stage

ROBOT_COMMANDS = ("serve", "drive", "sign")


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in ROBOT_COMMANDS:  # no Prefect needed: skip importing the flows
        from tasks.deploy import drive_main, serve_main, sign_main

        return {"serve": serve_main, "drive": drive_main, "sign": sign_main}[sys.argv[1]](sys.argv[2:])
    from flows.pipeline import REPLICAS, STAGE_FLOWS, pipeline_flow

    flows = {**STAGE_FLOWS, "pipeline": pipeline_flow}
    if len(sys.argv) < 2 or sys.argv[1] not in flows:
        sys.exit(f"usage: svrl {{{'|'.join(flows)}}} [--params PATH] | svrl serve BUNDLE | svrl drive | svrl sign BUNDLE")
    name = sys.argv.pop(1)
    run_stage(flows[name], REPLICAS.get(name))


if __name__ == "__main__":
    main()
