"""The local lab: the autoscaling etcd cluster on this machine, with a local cloud.

python -m lab up [--detach]            start `capacity` nodes; a live status until Ctrl-C
python -m lab status [--json]          the nodes of the lab that is up
python -m lab down                     stop everything the lab started, remove its files
python -m lab scenario NAME [--json FILE] [--plot FILE]
                                       burst, node-loss, etcd-outage, freeze, partition,
                                       split, peer-cut, cloud-cut, bad-metrics, reboot,
                                       skewed, update
python -m lab reboot NODE [NODE ...] | --majority | --all
                                       Nova's hard reboot of those servers of the lab that is
                                       up: power off, the disk kept, then boot
python -m lab update --set KEY=VALUE   a `pulumi up` of the lab that is up: the program's
                                       template for the changed stack through Heat's
                                       "Update stack"; settings reach the agents live
python -m lab metrics [--seconds N]    a real netdata parent and child with the stack's
                                       rendered stream.conf: what the parent serves
python -m lab chaos --rounds N --seed S [--json FILE] [--plan]
                                       seeded random faults, the invariants after each round

Common options: --stack NAME (Pulumi.<NAME>.yaml, default dev), --fast (the tests'
time factor) or --factor F, --root DIR (default .lab), --network auto|netns|loopback
(auto: each node in a network namespace of its own where this machine allows it, as root
does here; the network faults need it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from infra.settings import (
    PROJECT_DIR,
    Problem,
    SettingsError,
    StackSettings,
    load_stack_file,
    parse_settings,
    stack_file,
)
from lab.timings import DEFAULT_FACTOR, FAST_FACTOR, LabTimings

DEFAULT_ROOT = PROJECT_DIR / ".lab"
SCENARIO_NAMES = [
    "burst",
    "node-loss",
    "etcd-outage",
    "freeze",
    "partition",
    "split",
    "peer-cut",
    "cloud-cut",
    "bad-metrics",
    "reboot",
    "skewed",
    "update",
    "update-grown",
    "nospace",
    "disaster",
    "rolling-update",
    "rolling-update-grown",
    "rolling-update-fault",
    "rolling-update-etcd",
    "rolling-update-etcd-grown",
]
"""lab.scenarios.SCENARIOS, named here so that `--help` imports no lab."""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--stack", default="dev", help="stack name: reads Pulumi.<stack>.yaml")
    common.add_argument("--fast", action="store_true", help=f"time factor {FAST_FACTOR}")
    common.add_argument("--factor", type=float, help=f"time factor (default {DEFAULT_FACTOR})")
    common.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the lab's directory")
    common.add_argument(
        "--network",
        choices=("auto", "netns", "loopback"),
        default="auto",
        help="netns: each node in a network namespace of its own (root); loopback: every"
        " node on 127.X.Y.n; auto (default): netns where this machine allows it",
    )
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a stack key changed for this run (e.g. downmetric_scope=node); repeatable",
    )
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start the lab's nodes")
    up.add_argument("--detach", action="store_true", help="return once the cluster is healthy")
    status = sub.add_parser("status", parents=[common], help="the nodes of the lab that is up")
    status.add_argument("--json", action="store_true")
    sub.add_parser("down", parents=[common], help="stop everything the lab started")
    reboot = sub.add_parser("reboot", parents=[common], help="Nova's hard reboot of servers")
    reboot.add_argument("nodes", nargs="*", help="node names (see `python -m lab status`)")
    which = reboot.add_mutually_exclusive_group()
    which.add_argument("--majority", action="store_true", help="the leader and others: a quorum")
    which.add_argument("--all", action="store_true", help="every server of the group")
    sub.add_parser(
        "update",
        parents=[common],
        help="a pulumi up of the lab that is up: its stack with --set KEY=VALUE changes",
    )
    scenario = sub.add_parser("scenario", parents=[common], help="run one scenario and check it")
    scenario.add_argument("name", choices=SCENARIO_NAMES)
    scenario.add_argument("--json", type=Path, help="write the JSON report here")
    scenario.add_argument("--plot", type=Path, help="write the timeline PNG here")
    scenario.add_argument("--keep", action="store_true", help="keep the nodes' logs")
    chaos = sub.add_parser("chaos", parents=[common], help="seeded random faults, checked")
    chaos.add_argument("--rounds", type=int, default=10, help="rounds (one fault each)")
    chaos.add_argument("--seed", type=int, default=1, help="fixes the fault sequence")
    chaos.add_argument("--kinds", help="comma-separated fault kinds (default: all)")
    chaos.add_argument("--json", type=Path, help="write the JSON report here")
    chaos.add_argument("--plan", action="store_true", help="print the fault sequence only")
    chaos.add_argument("--verbose", action="store_true", help="print every lab event")
    chaos.add_argument("--keep", action="store_true", help="keep the nodes' logs")
    metrics = sub.add_parser("metrics", parents=[common], help="a real netdata parent and child")
    metrics.add_argument("--seconds", type=float, default=20.0, help="how long the pair runs")
    metrics.add_argument(
        "--readings", type=int, default=0, help="stop once this many values were read (0: never)"
    )
    metrics.add_argument("--keep", action="store_true", help="keep the daemons' files")
    sub.add_parser("_serve", parents=[common])  # the detached lab's own process
    return parser


def _stack(args: argparse.Namespace) -> tuple[StackSettings, LabTimings]:
    path = stack_file(args.stack)
    if not path.is_file():  # the test stacks (e.g. https) live in tests/stacks
        path = PROJECT_DIR / "tests" / "stacks" / path.name
    try:
        stack = load_stack_file(path)
        if getattr(args, "set", None):
            stack = with_changes(stack, args.set, base_dir=path.parent)
    except FileNotFoundError:
        raise SystemExit(f"no stack file {path}") from None
    except SettingsError as error:
        raise SystemExit(str(error)) from None
    factor = args.factor or (FAST_FACTOR if args.fast else DEFAULT_FACTOR)
    return stack, LabTimings.scaled(stack, factor)


def with_changes(stack: StackSettings, changes: Sequence[str], *, base_dir: Path) -> StackSettings:
    """The stack with `KEY=VALUE` changes, validated as a stack file's keys are."""
    raw: dict[str, object] = stack.model_dump()
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep:
            raise SettingsError([Problem(change, change, "write KEY=VALUE")], "--set")
        raw[key.strip()] = value
    return parse_settings(raw, base_dir=base_dir, source="the stack with --set")


def _show_timings(stack: StackSettings, timings: LabTimings) -> None:
    print(f"lab time: the stack's periods x {timings.factor:g}")
    for key, theirs, ours in timings.rows(stack):
        print(f"  {key:24} {theirs:>12} -> {ours}")
    print(flush=True)


def _lab_is_up(root: Path) -> bool:
    from lab.nodes import pid_alive
    from lab.status import NoLab, read_state

    try:
        state = read_state(root)
    except NoLab:
        return False
    return pid_alive(state.get("pid"), "lab")


def cmd_scenario(args: argparse.Namespace) -> int:
    from lab.scenarios import run_scenario

    stack, timings = _stack(args)
    _show_timings(stack, timings)
    root = args.root / f"scenario-{args.name}-{os.getpid()}"
    outcome = run_scenario(
        args.name,
        stack,
        timings,
        root,
        stack_name=args.stack,
        json_path=args.json,
        plot_path=args.plot,
        out=sys.stdout,
        network=args.network,
    )
    if outcome.ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if outcome.ok else 1


def cmd_chaos(args: argparse.Namespace) -> int:
    from lab.chaos import KINDS, NETWORK_KINDS, plan, plan_lines, run_chaos
    from lab.netns import unavailable

    stack, timings = _stack(args)
    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else KINDS
    if not args.kinds:
        why = "--network loopback" if args.network == "loopback" else unavailable()
        if why is not None:
            kinds = tuple(k for k in KINDS if k not in NETWORK_KINDS)
            print(f"chaos: no network faults ({why})")
    try:
        planned = plan(
            args.rounds, args.seed, max_grow=stack.max_cluster - stack.capacity, kinds=kinds
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(f"chaos: seed {args.seed}, {args.rounds} rounds")
    print("\n".join(plan_lines(planned)), flush=True)
    if args.plan:
        return 0
    _show_timings(stack, timings)
    root = args.root / f"chaos-{args.seed}-{os.getpid()}"
    outcome = run_chaos(
        stack,
        timings,
        root,
        rounds=args.rounds,
        seed=args.seed,
        kinds=kinds,
        stack_name=args.stack,
        json_path=args.json,
        out=sys.stdout,
        verbose=args.verbose,
        network=args.network,
    )
    if outcome.ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if outcome.ok else 1


def cmd_metrics(args: argparse.Namespace) -> int:
    from lab.metrics_pair import run_pair

    stack, _ = _stack(args)
    root = args.root / f"metrics-{os.getpid()}"

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        outcome = run_pair(
            stack,
            root,
            stack_name=args.stack,
            seconds=args.seconds,
            readings=args.readings,
            out=sys.stdout,
        )
    except (FileNotFoundError, RuntimeError) as error:  # no netdata, or it did not start
        print(error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if outcome.ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"the daemons' configs and logs: {root}")
    return 0 if outcome.ok else 1


def _serve(args: argparse.Namespace, *, show: bool) -> int:
    from lab.cluster import Lab
    from lab.display import Display

    stack, timings = _stack(args)
    lab = Lab(stack, timings, args.root, stack_name=args.stack, network=args.network)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if show:
        display = Display(sys.stdout)
        lab.events.listeners.append(display.event)
        lab.on_sample.append(display.sample)
    lab.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        lab.stop()
        if show:
            print(f"\nstopped; node logs in {lab.nova.logs}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    if _lab_is_up(args.root):
        raise SystemExit(f"a lab is up already in {args.root}: python -m lab down")
    if args.root.exists():
        shutil.rmtree(args.root)
    stack, timings = _stack(args)
    _show_timings(stack, timings)
    if not args.detach:
        return _serve(args, show=True)
    args.root.mkdir(parents=True)
    log = open(args.root / "daemon.log", "ab")  # the daemon keeps it open
    command = [sys.executable, "-m", "lab", "_serve", "--stack", args.stack]
    command += ["--factor", str(timings.factor), "--root", str(args.root)]
    command += ["--network", args.network]
    for change in args.set:  # the daemon's stack is the one shown, --set included
        command += ["--set", change]
    daemon = subprocess.Popen(
        command,
        cwd=PROJECT_DIR,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (args.root / "daemon.pid").write_text(f"{daemon.pid}\n")
    from lab.status import NoLab, format_status, read_state, status

    deadline = time.monotonic() + 60 + 40 * timings.lockattemptperiod
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            tail = (args.root / "daemon.log").read_text(errors="replace")[-2000:]
            print(f"the lab daemon exited ({daemon.returncode}):\n{tail}", file=sys.stderr)
            return 1
        try:
            if read_state(args.root).get("status") == "healthy":
                print(format_status(status(args.root)))
                print(
                    f"\nthe lab runs in the background (pid {daemon.pid}); stop it with"
                    " `python -m lab down`"
                )
                return 0
        except NoLab:
            pass
        time.sleep(0.3)
    print("the cluster did not become healthy in time; `python -m lab down` stops it")
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    from lab.status import NoLab, format_status, status

    try:
        data = status(args.root)
    except NoLab as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else format_status(data))
    return 0


def cmd_reboot(args: argparse.Namespace) -> int:
    from lab.operator import CloudCallError, Operator
    from lab.status import NoLab, read_state, status

    try:
        state = read_state(args.root)
        seen = status(args.root)
    except NoLab as error:
        print(error, file=sys.stderr)
        return 1
    servers = {n["name"]: n["server_id"] for n in state.get("nodes", []) if not n.get("crashed")}
    names = sorted(servers)
    if args.all or args.majority:
        leader = seen.get("leader")
        ordered = ([leader] if leader in servers else []) + [n for n in names if n != leader]
        chosen = ordered if args.all else ordered[: len(names) // 2 + 1]
    else:
        unknown = [n for n in args.nodes if n not in servers]
        if unknown or not args.nodes:
            print(
                f"name the nodes to reboot ({', '.join(names)}), or --majority or --all"
                + (f"; not in the lab: {', '.join(unknown)}" if unknown else ""),
                file=sys.stderr,
            )
            return 2
        chosen = list(args.nodes)
    try:
        operator = Operator.from_state(state)
        for name in chosen:
            operator.reboot(servers[name])
            print(f"reboot {name} (server {servers[name]}): accepted by Nova")
    except CloudCallError as error:
        print(f"the lab's cloud refused: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    """`pulumi up` of the lab's stack with `--set` changes: the program's template (with the
    lab's periods) through Heat's "Update stack" on the lab's cloud, after the plan."""
    from lab.operator import CloudCallError, Operator
    from lab.status import NoLab, read_state
    from lab.timings import lab_files, lab_parameters, planned_update

    try:
        state = read_state(args.root)
    except NoLab as error:
        print(error, file=sys.stderr)
        return 1
    if not args.set:
        print("say what changes: --set KEY=VALUE (repeatable)", file=sys.stderr)
        return 2
    if not isinstance(state.get("settings"), dict) or not state.get("heat_stack"):
        print("the lab's state names no stack settings (an older lab?)", file=sys.stderr)
        return 1
    stack = StackSettings.model_validate(state["settings"])
    base_dir = stack_file(args.stack).parent
    try:
        new = with_changes(stack, args.set, base_dir=base_dir)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    verdict, after = planned_update(
        stack, new, float(state["factor"]), cluster_name=state["cluster"]
    )
    sys.stdout.write(verdict.text())
    if verdict.refused:
        print("refused: nothing was sent to Heat", file=sys.stderr)
        return 1
    if not verdict.changed:
        return 0
    try:
        files = lab_files(new, float(state["factor"]), cluster_name=state["cluster"])
        Operator.from_state(state).update_stack(
            state["heat_stack"], after, lab_parameters(new), files
        )
    except CloudCallError as error:
        print(f"the lab's cloud refused: {error}", file=sys.stderr)
        return 1
    print(f"stack update accepted by Heat ({state['heat_stack'].split('/')[0]})")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from lab.status import down

    done = down(args.root)
    print("\n".join(done) if done else "nothing to stop")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command. SIGTERM is an interrupt, as Ctrl-C is: the command's own cleanup
    stops every process the lab started (by pid) before the exit."""
    args = _parser().parse_args(argv)
    args.root = args.root.resolve()
    handlers = {
        "scenario": cmd_scenario,
        "chaos": cmd_chaos,
        "up": cmd_up,
        "status": cmd_status,
        "down": cmd_down,
        "reboot": cmd_reboot,
        "update": cmd_update,
        "metrics": cmd_metrics,
        "_serve": lambda a: _serve(a, show=False),
    }
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: the lab's processes were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
