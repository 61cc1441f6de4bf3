"""`python -m infra render --stack NAME --out DIR`: what a stack would deploy, no cloud needed.
`python -m infra plan --stack NAME --from DIR|GIT_REF [--to DIR]`: what a `pulumi up` from
that render (or that commit) to this checkout's will do to the running cluster."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.settings import SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="run the program under Pulumi's mocks, write files")
    render.add_argument("--stack", required=True, help="stack name: Pulumi.<NAME>.yaml")
    render.add_argument("--out", required=True, type=Path, help="directory to write into")
    plan = sub.add_parser("plan", help="what a pulumi up will do to the running cluster")
    plan.add_argument("--stack", required=True, help="stack name: Pulumi.<NAME>.yaml")
    plan.add_argument(
        "--from", dest="source", required=True, help="a render directory or a git ref (deployed)"
    )
    plan.add_argument("--to", type=Path, help="a render directory (default: this checkout)")
    args = parser.parse_args(argv)
    if args.command == "plan":
        from infra.plan import plan_command

        return plan_command(args.stack, args.source, args.to)

    from infra.heat import AGENT_BUNDLE, MAX_TEMPLATE_SIZE
    from infra.render import run_program, write_render
    from infra.userdata import BUDGET

    try:
        run = run_program(args.stack)
    except (SettingsError, FileNotFoundError) as error:
        print(error, file=sys.stderr)
        return 2
    paths = write_render(run, args.out)
    for path in paths.values():
        print(f"{path}  ({path.stat().st_size} bytes)")
    size = paths["user-data.yaml"].stat().st_size
    template = paths["heat-template.yaml"].stat().st_size
    bundle = paths["agent.pyz"].stat().st_size
    print(f"{len(run.resources)} resources; member user-data {size} bytes (budget {BUDGET})")
    print(
        f"agent bundle {bundle} bytes, in the Heat stack's {AGENT_BUNDLE} metadata (gzip+base64);"
        f" Heat template {template} bytes (Heat's max_template_size {MAX_TEMPLATE_SIZE})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
