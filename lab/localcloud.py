"""The lab's cloud: Heat's group (lab/group.py) and Nova (lab/nodes.py) behind a loopback API.

The agents reach it through `agent.cloud_local.LocalGroup`; the API mirrors the Heat
and Nova calls the OpenStack implementation makes:

    GET  /v1/servers/<id>                  Nova: the server (the metadata service's answer)
    GET  /v1/group                         Heat: the group's members (nested stack resources)
    POST /v1/servers/<id>/mark-unhealthy   Heat: PATCH .../resources/<member> mark_unhealthy
    POST /v1/policies/<name>/signal        Heat: POST .../resources/<policy>/signal
    POST /v1/group/update                  Heat: a stack update (operator), {"desired_capacity"}
    GET  /v1/events                        what happened (the lab's report)

A signal is answered with what Heat did: a resize, or NoActionRequired and why (Heat
itself only writes that into the stack's events; the agents need not read it).

The alarm stands in for Aodh's gnocchi aggregation alarm: every `evaluation` seconds
it averages the servers' CPU use over `period` seconds and, above `threshold`,
signals the scale-up policy (again at each evaluation: `repeat_actions: true`, as
the infra's template sets it).
"""

from __future__ import annotations

import itertools
import json
import random
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from lab.events import EventLog
from lab.group import Member, Policy, Resize, ScalingGroup, SignalOutcome


class Servers(Protocol):
    """What the cloud needs of Nova: boot and delete (lab.nodes.Nova, or a fake in tests)."""

    def boot(self, member: Member) -> object: ...

    def delete(self, member: Member) -> None: ...


@dataclass(frozen=True)
class AlarmSpec:
    threshold: float
    period: float
    evaluation: float
    repeat_actions: bool = True


def _short_id(rng: random.Random, size: int = 4) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(size))


class AddressPool:
    """Fresh 127.X.Y.n addresses, never handed out twice (a replacement gets a new one)."""

    def __init__(self, prefix: str, first: int = 10, last: int = 250) -> None:
        self.prefix = prefix
        self._next = itertools.count(first)
        self.last = last

    def take(self) -> str:
        n = next(self._next)
        if n > self.last:
            raise RuntimeError(f"the lab's range {self.prefix}.0/24 has no address left")
        return f"{self.prefix}.{n}"


class LocalCloud:
    def __init__(
        self,
        *,
        min_size: int,
        max_size: int,
        policies: dict[str, Policy],
        servers: Servers,
        addresses: AddressPool,
        events: EventLog,
        name_prefix: str = "etcd",
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.servers = servers
        self.addresses = addresses
        self.events = events
        self.clock = clock
        self.name_prefix = name_prefix
        self._rng = random.Random(seed)
        self._seq = itertools.count(1)
        self._lock = threading.RLock()
        self.group = ScalingGroup(
            min_size=min_size,
            max_size=max_size,
            policies=policies,
            new_server=self._new_server,
            new_slot=lambda: f"member-{_short_id(self._rng, 6)}",
        )
        self.deleted: list[Member] = []
        self.outcomes: list[tuple[float, str, SignalOutcome]] = []
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._alarm_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.alarm_state = "insufficient data"
        self.cpu_of: Callable[[Member, float], float | None] = lambda member, period: None

    # --- Nova: new servers ----------------------------------------------------------------

    def _new_server(self, slot: str, initial: bool) -> Member:
        seq = next(self._seq)
        return Member(
            slot=slot,
            server_id=f"srv-{seq:03d}-{_short_id(self._rng, 8)}",
            name=f"{self.name_prefix}-{seq:02d}-{_short_id(self._rng)}",
            ip=self.addresses.take(),
            # the resource's created_time; a counter breaks ties the way time would
            created_at=self.clock() + seq * 1e-6,
            status="BUILD",
            initial=initial,
        )

    # --- Heat ---------------------------------------------------------------------------

    def create(self, desired: int) -> Resize:
        """Create the group with `desired` servers (the stack's creation)."""
        with self._lock:
            plan = self.group.create(desired)
            self.group.in_progress = True
            try:
                self._carry_out(plan)
            finally:
                self.group.finished(self.clock(), 0.0, size_changed=False)
        self.events.add("stack-create", "", f"{len(plan.created)} servers")
        return plan

    def mark_unhealthy(self, server_id: str, reason: str, caller: str = "") -> Member:
        with self._lock:
            member = self.group.mark_unhealthy(server_id, reason)
        by = self._name_of(caller)
        self.events.add("mark-unhealthy", member.name, f"by {by}: {reason}" if by else reason)
        return member

    def signal(self, policy: str, caller: str = "") -> SignalOutcome:
        """A policy's signal, as Heat's engine handles it (the resize done before returning)."""
        if policy not in self.group.policies:
            raise KeyError(policy)
        by = self._name_of(caller) or caller or "?"
        with self._lock:
            outcome = self.group.signal(policy, self.clock())
            if outcome.resize is not None:
                try:
                    self._carry_out(outcome.resize)
                finally:
                    cooldown = self.group.policies[policy].cooldown
                    self.group.finished(self.clock(), cooldown, size_changed=True)
            self.outcomes.append((self.events.now(), by, outcome))
        kind = "scale-up" if self.group.policies[policy].adjustment > 0 else "scale-down"
        if outcome.action == "resize":
            self.events.add(kind, by, f"{policy}: {outcome.reason}")
        else:
            self.events.add("no-action", by, f"{policy}: {outcome.reason}")
        return outcome

    def update(self, desired: int | None) -> Resize:
        """A stack update by the operator: resize to `desired` (or the current capacity)."""
        with self._lock:
            if self.group.in_progress:
                raise RuntimeError("the group is being resized")
            plan = self.group.update(desired)
            try:
                self._carry_out(plan)
            finally:
                self.group.finished(self.clock(), 0.0, size_changed=False)
        self.events.add(
            "stack-update",
            "",
            f"desired_capacity {desired}: {plan.capacity_before} -> {plan.capacity_after}",
        )
        return plan

    def _carry_out(self, plan: Resize) -> None:
        for old, new in plan.replaced:
            self.events.add("replace", old.name, f"by {new.name} ({new.ip})")
        for member in plan.deletes:
            if member.status != "FAILED":
                member.reason = "not FAILED: cut by the resize (Heat keeps the newest)"
            self.servers.delete(member)
            self.deleted.append(member)
        for member in plan.boots:
            try:
                self.servers.boot(member)
                member.status = "ACTIVE"
            except Exception as error:  # a server that fails to boot is FAILED, as in Nova
                member.status = "FAILED"
                member.reason = f"boot failed: {error}"
                self.events.add("boot-failed", member.name, str(error))

    # --- reading ----------------------------------------------------------------------------

    def members(self) -> list[Member]:
        with self._lock:
            return list(self.group.members)

    def server(self, server_id: str) -> Member | None:
        with self._lock:
            return self.group.find(server_id)

    def _name_of(self, server_id: str) -> str:
        member = self.server(server_id) if server_id else None
        if member is not None:
            return member.name
        gone = next((m for m in self.deleted if m.server_id == server_id), None)
        return gone.name if gone else ""

    # --- Aodh -------------------------------------------------------------------------------

    def evaluate_alarm(self, spec: AlarmSpec) -> str:
        """One evaluation: the mean CPU use of the group's servers over the period."""
        values = [
            cpu
            for member in self.members()
            if (cpu := self.cpu_of(member, spec.period)) is not None
        ]
        if not values:
            state = "insufficient data"
        else:
            mean = sum(values) / len(values)
            state = "alarm" if mean > spec.threshold else "ok"
        if state != self.alarm_state:
            shown = f"mean CPU {sum(values) / len(values):.0f}%" if values else "no data"
            self.events.add(
                "alarm" if state == "alarm" else "alarm-ok",
                "",
                f"{shown} over {spec.period:g}s vs {spec.threshold:g}%",
            )
        previous, self.alarm_state = self.alarm_state, state
        if state == "alarm" and (spec.repeat_actions or previous != "alarm"):
            self.signal("scale_up", caller="alarm")
        return state

    def start_alarm(self, spec: AlarmSpec) -> None:
        def run() -> None:
            while not self._stopping.wait(spec.evaluation):
                try:
                    self.evaluate_alarm(spec)
                except Exception as error:  # keep evaluating, as Aodh does
                    self.events.add("alarm-error", "", str(error))

        self._alarm_thread = threading.Thread(target=run, name="aodh", daemon=True)
        self._alarm_thread.start()

    # --- the HTTP API -------------------------------------------------------------------------

    def serve(self, host: str, port: int = 0) -> str:
        self._http = ThreadingHTTPServer((host, port), _handler(self))
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._http_thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self._http is not None
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._alarm_thread is not None:
            self._alarm_thread.join(timeout=5)


def server_json(member: Member) -> dict[str, Any]:
    return {
        "id": member.server_id,
        "name": member.name,
        "ip": member.ip,
        "status": member.status,
        "created_at": member.created_at,
        "initial": member.initial,
        "slot": member.slot,
        "reason": member.reason,
    }


def _handler(cloud: LocalCloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:
                pass  # the caller is gone: its server was deleted by this very resize

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if not length:
                return {}
            data = json.loads(self.rfile.read(length) or b"{}")
            return data if isinstance(data, dict) else {}

        def do_GET(self) -> None:
            parts = [p for p in urlsplit(self.path).path.split("/") if p]
            if parts == ["v1", "group"]:
                group = cloud.group
                self._reply(
                    200,
                    {
                        "min_size": group.min_size,
                        "max_size": group.max_size,
                        "capacity": group.capacity(),
                        "cooldown_end": group.cooldown_end,
                        "members": [server_json(m) for m in cloud.members()],
                    },
                )
            elif len(parts) == 3 and parts[:2] == ["v1", "servers"]:
                member = cloud.server(parts[2])
                if member is None:
                    self._reply(404, {"error": f"no server {parts[2]}"})
                else:
                    self._reply(200, server_json(member))
            elif parts == ["v1", "events"]:
                self._reply(200, [e.to_json() for e in cloud.events.all()])
            else:
                self._reply(404, {"error": f"no such resource: {self.path}"})

        def do_POST(self) -> None:
            parts = [p for p in urlsplit(self.path).path.split("/") if p]
            try:
                body = self._body()
            except ValueError as error:
                self._reply(400, {"error": f"body is not JSON: {error}"})
                return
            caller = str(body.get("caller", ""))
            try:
                if (
                    len(parts) == 4
                    and parts[:2] == ["v1", "servers"]
                    and parts[3] == ("mark-unhealthy")
                ):
                    member = cloud.mark_unhealthy(parts[2], str(body.get("reason", "")), caller)
                    self._reply(200, server_json(member))
                elif len(parts) == 4 and parts[:2] == ["v1", "policies"] and parts[3] == "signal":
                    outcome = cloud.signal(parts[2], caller)
                    self._reply(
                        200,
                        {
                            "policy": outcome.policy,
                            "action": outcome.action,
                            "reason": outcome.reason,
                        },
                    )
                elif parts == ["v1", "group", "update"]:
                    desired = body.get("desired_capacity")
                    plan = cloud.update(int(desired) if desired is not None else None)
                    self._reply(200, {"capacity": plan.capacity_after})
                else:
                    self._reply(404, {"error": f"no such action: {self.path}"})
            except KeyError as error:
                self._reply(404, {"error": f"not found: {error}"})
            except RuntimeError as error:
                self._reply(409, {"error": str(error)})

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler
