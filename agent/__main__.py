"""The agent's command line.

python -m agent --config FILE bootstrap      join or start the cluster, then exit
python -m agent --config FILE run            bootstrap, then cycle until the node leaves
                                             (role proxy: keep the gRPC proxy on the members)
python -m agent --config FILE status [--json]
python -m agent status --endpoints URL[,URL] [--cluster NAME] [--json]
python -m agent metric NAME --netdata URL [--window S]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from agent.settings import AgentSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="the node's agent settings (JSON)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bootstrap", help="join or start the cluster, then exit")
    sub.add_parser("run", help="bootstrap, then scale down / heal until the node leaves")
    status = sub.add_parser("status", help="every member, its health and the kill-lock holder")
    status.add_argument("--endpoints", help="comma-separated etcd client URLs (no config needed)")
    status.add_argument("--cluster", help="cluster name, for the lock keys (default: all)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    restore = sub.add_parser(
        "restore", help="a lost cluster made again from a snapshot in Swift (agent/restore.py)"
    )
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--latest", action="store_true", help="the newest snapshot")
    which.add_argument("--object", help="the snapshot object's name (snapshots/...)")
    which.add_argument(
        "--join",
        action="store_true",
        help="on each other node: set its old data aside, so its agent joins the restored one",
    )
    restore.add_argument(
        "--force", action="store_true", help="restore even though a cluster with quorum answers"
    )
    metric = sub.add_parser("metric", help="read one netdata metric as the agent does")
    metric.add_argument("name", help="netdata allmetrics name, e.g. NETDATA_SYSTEM_CPU_IDLE")
    metric.add_argument("--netdata", required=True, help="netdata URL, e.g. http://127.0.0.1:19999")
    metric.add_argument("--window", type=int, default=0, help="seconds to average (0: now)")
    return parser


def _load(path: str | None) -> AgentSettings:
    if path is None:
        raise SystemExit("this command needs --config FILE (the node's agent settings)")
    try:
        return AgentSettings.load(path)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot read agent settings {path}: {error}") from error


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _agent(settings: AgentSettings, path: str):  # imports stay lazy for `metric`/`status`
    from agent.cloud import make_cloud

    if settings.role == "proxy":
        from agent.proxy import ProxyAgent, make_proxy_service

        return ProxyAgent(
            settings, cloud=make_cloud(settings), service=make_proxy_service(settings)
        )
    from agent.etcd_server import make_service
    from agent.loop import Agent
    from agent.upgrade import running_bundle

    return Agent(
        settings,
        cloud=make_cloud(settings),
        service=make_service(settings.etcd),
        settings_path=Path(path),
        bundle_path=running_bundle(),
    )


def _restore(settings: AgentSettings, args: argparse.Namespace) -> int:
    from agent.cloud import CloudError, make_cloud
    from agent.etcd_server import client_url, make_service
    from agent.restore import RestoreError, join_restored, restore_here
    from agent.swift import SwiftError, SwiftStore

    service = make_service(settings.etcd)
    if args.join:
        print(join_restored(settings, service=service))
        return 0
    if settings.backup.kind != "swift":
        print(
            "restore: this node's settings have no Swift backups (backups: none)", file=sys.stderr
        )
        return 2
    cloud = make_cloud(settings)
    try:
        me = cloud.whoami()
        endpoints = [client_url(n.ip, settings.etcd) for n in cloud.group_members() if n.ip]
        store = SwiftStore.for_cloud(cloud, settings)
        done = restore_here(
            settings,
            me=me,
            group_endpoints=endpoints,
            store=store,
            service=service,
            name=None if args.latest else args.object,
            force=args.force,
        )
    except (RestoreError, CloudError, SwiftError) as error:
        print(f"restore: {error}", file=sys.stderr)
        return 1
    print(done)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "metric":
        from agent.metrics import metric_command

        return metric_command(args.name, args.netdata, args.window)
    if args.command == "status":
        from agent.status import status_command

        settings = _load(args.config) if args.endpoints is None else None
        return status_command(
            endpoints=args.endpoints.split(",") if args.endpoints else None,
            settings=settings,
            cluster=args.cluster,
            as_json=args.json,
        )
    settings = _load(args.config)
    if args.command == "restore":
        _logging(settings.log_level)
        return _restore(settings, args)
    if args.command == "bootstrap" and settings.role == "proxy":
        print("a proxy has nothing to bootstrap (it is not a member); use run", file=sys.stderr)
        return 2
    _logging(settings.log_level)
    agent = _agent(settings, args.config)

    def _stop(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("agent").info("signal %d: stopping after this cycle", signum)
        agent.stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.command == "bootstrap":
        from agent.bootstrap import BootstrapError

        try:
            member = agent.bootstrap()
        except BootstrapError as error:
            print(f"bootstrap failed: {error}", file=sys.stderr)
            return 1
        print(json.dumps({"member": member.name, "id": f"{member.id:x}"}))
        return 0
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
