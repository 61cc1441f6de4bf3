"""The lab's cloud (lab.cloud) for unit tests: three servers, no machines behind them.

The very cloud the lab runs (Keystone v3, Heat's group with Heat's own rules, Nova and
its metadata service, as lab/cloud/api.py describes) on a random 127.0.0.x, with a group
of three members `etcd-prod-node-a/b/c` on 10.0.0.11-13 whose "machines" only record
what Nova did to them. Resizes run before the signal's answer (`background=False`), so a
test sees their outcome at once. Heat also answers for the internal interface and a
second region (extra catalog endpoints), for the driver's endpoint choice.

Every request is kept (`requests`, `calls()`); `fail()` and `hang()` inject faults;
`expire_tokens()` makes Heat and Nova answer 401.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from agent.settings import OpenStackCloud
from infra.heat import GROUP, READY, READY_HANDLE
from lab.cloud.api import StackResource
from lab.cloud.heat import Member, Policy
from lab.cloud.keystone import AccessRule, Endpoint
from lab.cloud.openstack import SCALE_DOWN, SCALE_UP, AddressPool, LabCloud
from lab.events import EventLog

PROJECT = "5b6c1e0f8a2d4c7e9f3a1b2c3d4e5f60"
CREDENTIAL_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
CREDENTIAL_SECRET = "s3cr3t-Zq8-xW4-only-in-the-node-file"
HEAT = f"/heat-api/v1/{PROJECT}"
IDENTITY = "/identity/v3"
TOKENS = "/identity/v3/auth/tokens"
MEMBERS = (
    ("etcd-prod-node-a", "10.0.0.11"),
    ("etcd-prod-node-b", "10.0.0.12"),
    ("etcd-prod-node-c", "10.0.0.13"),
)


@dataclass
class Machines:
    """The hypervisor of a cloud with no machines: it records what Nova did."""

    booted: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    rebooted: list[str] = field(default_factory=list)

    def boot(self, member: Member) -> None:
        self.booted.append(member.name)

    def delete(self, member: Member) -> None:
        self.deleted.append(member.name)

    def reboot(self, member: Member, kind: str) -> None:
        self.rebooted.append(member.name)


class FakeOpenStack:
    def __init__(
        self,
        *,
        access_rules: list[AccessRule] | None = None,
        member_files: dict[str, str] | None = None,
    ) -> None:
        """`member_files`: the members are stacks of this provider template (its URL and
        text, infra.heat.MemberStack), each waiting for its agent's signal."""
        self.member_files = member_files
        self.machines = Machines()
        self.events = EventLog()
        self.cloud = LabCloud(
            min_size=1,
            max_size=7,
            policies={
                SCALE_UP: Policy(SCALE_UP, +1, 0.0),
                SCALE_DOWN: Policy(SCALE_DOWN, -1, 0.0),
            },
            hypervisor=self.machines,
            addresses=AddressPool("10.0.0", first=11),
            events=self.events,
            stack_name="etcd-prod",
            seed=7,
            background=False,
            project_id=PROJECT,
        )
        self.keystone = self.cloud.keystone
        self.api = self.cloud.api
        self.credential = self.keystone.add_credential(
            "etcd-prod-agents", access_rules, credential_id=CREDENTIAL_ID, secret=CREDENTIAL_SECRET
        )
        self.url = ""
        self.ready_url = self.ready_token = ""

    # ---- control ----------------------------------------------------------------------

    def start(self, *, host: str | None = None, tls: tuple[str, str] | None = None) -> None:
        """Serve on a free 127.0.0.x (or `host`); over https with `tls` (cert, key files)."""
        for _ in range(20):
            address = host or f"127.0.0.{random.randint(2, 250)}"
            try:
                self.cloud.serve(address, tls=tls)
                break
            except OSError:
                if host is not None:
                    raise
                continue
        else:
            raise RuntimeError("no free 127.0.0.x address")
        self.url = self.cloud.url
        self.keystone.endpoints += [
            Endpoint(
                "orchestration",
                "heat",
                "internal",
                "RegionOne",
                f"{self.url}/heat-api-internal/v1/{PROJECT}",
            ),
            Endpoint(
                "orchestration",
                "heat",
                "public",
                "RegionTwo",
                f"{self.url}/heat-api-r2/v1/{PROJECT}",
            ),
            Endpoint("compute", "nova", "internal", "RegionOne", f"{self.url}/compute/v2.1"),
            Endpoint("compute", "nova", "public", "RegionTwo", f"{self.url}/compute/v2.1"),
        ]
        self.ready_url, self.ready_token = self.cloud.add_wait_handle(
            READY_HANDLE, condition=READY, count=1, timeout=600
        )
        if self.member_files:
            (url,) = self.member_files
            resource = {"type": url, "properties": {}}
            template = {"resources": {GROUP: {"properties": {"resource": resource}}}}
            self.cloud.load_template(template, {}, self.member_files)
            self.cloud.background = True  # the create waits for the members' signals
        self.cloud.create(len(MEMBERS))
        self.cloud.background = False
        self.cloud.start_waits()
        for member, (name, ip) in zip(self.cloud.members(), MEMBERS, strict=True):
            member.name, member.ip = name, ip
        self.requests.clear()

    def stop(self) -> None:
        self.cloud.stop()

    def settings(self, **changes: Any) -> OpenStackCloud:
        values: dict[str, Any] = {
            "auth_url": self.url + IDENTITY,
            "application_credential_id": CREDENTIAL_ID,
            "application_credential_secret": CREDENTIAL_SECRET,
            "stack_id": f"{self.stack_name}/{self.stack_id}",
            "metadata_url": self.cloud.metadata_url(self.me.server_id),
        }
        values.update(changes)
        return OpenStackCloud(**values)

    # ---- what tests read and change ------------------------------------------------------

    @property
    def stack_name(self) -> str:
        return self.cloud.stack_name

    @property
    def stack_id(self) -> str:
        return self.cloud.stack_id

    @property
    def nested_name(self) -> str:
        return self.cloud.nested_name

    @property
    def nested_id(self) -> str:
        return self.cloud.nested_id

    @property
    def members(self) -> list[Member]:
        return self.cloud.members()

    @property
    def me(self) -> Member:
        return self.members[0]

    @property
    def requests(self) -> list[Any]:
        return self.api.requests

    @property
    def issued_tokens(self) -> list[str]:
        """The agents' credential's tokens (not Heat's stack-user token of the handle)."""
        return [t.id for t in self.keystone.issued if t.credential is self.credential]

    @property
    def valid_tokens(self) -> set[str]:
        return set(self.keystone.tokens)

    @property
    def resource_metadata(self) -> _Metadata:
        return _Metadata(self.cloud)

    def fail(self, method: str, path_part: str, status: int = 500, body: str = "", times: int = 1):
        self.api.fail(method, path_part, status, body, times)

    def hang(self, method: str, path_part: str, seconds: float) -> None:
        self.api.hang(method, path_part, seconds)

    def expire_tokens(self) -> None:
        self.keystone.expire_tokens()

    def calls(self, method: str | None = None, path_part: str = "") -> list[Any]:
        return self.api.calls(method, path_part)

    def cloud_metadata(self, name: str) -> dict[str, Any]:
        """The metadata of the parent stack's resource `name`, as Heat answers it."""
        (found,) = [r for r in self.cloud.resources() if r.name == name]
        return dict(found.metadata or {})

    def ready(self) -> tuple[str, str]:
        """The agents_ready wait condition's (status, reason), as `pulumi up` would see it."""
        (condition,) = [r for r in self.cloud.resources() if r.name == READY]
        return condition.status, condition.reason

    @property
    def ready_signals(self) -> dict[str, dict[str, Any]]:
        return dict(self.cloud.wait_handles[READY_HANDLE].metadata)

    def member(self, server_id: str) -> Member:
        return next(m for m in self.members if m.server_id == server_id)


class _Metadata:
    """`fake.resource_metadata[name] = {...}`: a resource of the parent stack with that
    metadata (Heat's "Show resource metadata"), such as the agent bundle."""

    _lock = threading.Lock()

    def __init__(self, cloud: LabCloud) -> None:
        self.cloud = cloud

    def __setitem__(self, name: str, metadata: dict[str, Any]) -> None:
        with self._lock:
            kept = [r for r in self.cloud.extra_resources if r.name != name]
            resource = StackResource(name, "OS::Heat::RandomString", f"{name}-id", metadata)
            self.cloud.extra_resources = [*kept, resource]
