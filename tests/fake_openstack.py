"""One local HTTP server that answers as OpenStack's API references describe, and records.

It plays, on a random 127.0.0.x port:
- Nova's metadata service: /openstack/latest/meta_data.json, /openstack/latest/
  network_data.json, /latest/meta-data/local-ipv4
  (https://docs.openstack.org/nova/latest/user/metadata.html);
- Keystone v3: POST /v3/auth/tokens with an application credential, a catalog pointing
  back here (https://docs.openstack.org/api-ref/identity/v3/);
- Heat v1 under /heat/v1/{project} (and the same under /heat-internal/... and
  /heat-r2/... for the internal interface and a second region): find stack (302), show
  stack, show resource, list resources (with the physical_resource_id filter), mark a
  resource unhealthy, signal a resource, show resource metadata (`resource_metadata`
  holds the parent stack's; any other known resource has none)
  (https://docs.openstack.org/api-ref/orchestration/v1/);
- Nova: GET /compute/v2.1/servers/{id} (https://docs.openstack.org/api-ref/compute/);
- a pre-signed scale-up webhook: POST /webhook/scale-up?Signature=....

Every request is kept in `requests` (method, path, query, headers, JSON body).
`fail()` and `hang()` inject faults; `expire_tokens()` makes Heat and Nova answer 401.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from agent.settings import OpenStackCloud

PROJECT = "5b6c1e0f8a2d4c7e9f3a1b2c3d4e5f60"
CREDENTIAL_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
CREDENTIAL_SECRET = "s3cr3t-Zq8-xW4-only-in-the-node-file"
HEAT_PREFIXES = {"heat": ("public", "RegionOne"), "heat-internal": ("internal", "RegionOne")}
HEAT_PREFIXES["heat-r2"] = ("public", "RegionTwo")
Answer = tuple[int, dict[str, str], Any]
"""(status, extra headers, JSON-able body or text)"""


def _error(code: int, title: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "title": title, "message": message}}


UNAUTHORIZED = _error(401, "Unauthorized", "The request you have made requires authentication.")


def _service(kind: str, name: str, endpoints: list[tuple[str, str, str]]) -> dict[str, Any]:
    """A Keystone catalog entry: (interface, region, url) per endpoint."""
    return {
        "type": kind,
        "name": name,
        "id": f"{name}-id",
        "endpoints": [
            {"id": f"{name}-{n}", "interface": i, "region": r, "region_id": r, "url": u}
            for n, (i, r, u) in enumerate(endpoints)
        ],
    }


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Member:
    """A group member: its Heat resource in the nested stack and its Nova server."""

    resource_name: str
    server_name: str
    ip: str
    server_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    resource_status: str = "CREATE_COMPLETE"
    resource_status_reason: str = "state changed"
    nova_status: str | None = "ACTIVE"
    """None: Nova no longer knows the server (404)."""
    creation_time: str = "2026-03-01T10:00:00"


@dataclass
class Fault:
    method: str
    path_part: str
    status: int = 500
    body: str = ""
    times: int = 1
    delay: float = 0.0


class FakeOpenStack:
    def __init__(self) -> None:
        self.stack_name = "etcd-prod"
        self.stack_id = str(uuid.uuid4())
        self.nested_name = "etcd-prod-etcd_group-4kq2xw3mfz7a"
        self.nested_id = str(uuid.uuid4())
        self.nested_status = "CREATE_COMPLETE"
        self.nested_updated: str | None = None
        self.members = [
            Member(
                "k3v7yq2mxa1b", "etcd-prod-node-a", "10.0.0.11", creation_time="2026-03-01T10:00:01"
            ),
            Member(
                "p9t2hf8wzc4d", "etcd-prod-node-b", "10.0.0.12", creation_time="2026-03-01T10:00:02"
            ),
            Member(
                "r5n1jd6gqe7f", "etcd-prod-node-c", "10.0.0.13", creation_time="2026-03-01T10:00:03"
            ),
        ]
        self.me = self.members[0]
        self.resource_metadata: dict[str, dict[str, Any]] = {}
        """Metadata of resources of the parent stack, by resource name (e.g. agent_bundle)."""
        self.local_ipv4: str | None = self.me.ip
        self.token_lifetime = timedelta(hours=1)
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.valid_tokens: set[str] = set()
        self.issued_tokens: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # ---- control ----------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(20):
            host = f"127.0.0.{random.randint(2, 250)}"
            try:
                self._server = ThreadingHTTPServer((host, 0), _handler(self))
                break
            except OSError:
                continue
        else:
            raise RuntimeError("no free 127.0.0.x address")
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def settings(self, **changes: Any) -> OpenStackCloud:
        values: dict[str, Any] = {
            "auth_url": self.url + "/v3",
            "application_credential_id": CREDENTIAL_ID,
            "application_credential_secret": CREDENTIAL_SECRET,
            "stack_id": f"{self.stack_name}/{self.stack_id}",
            "metadata_url": self.url,
        }
        values.update(changes)
        return OpenStackCloud(**values)

    def fail(self, method: str, path_part: str, status: int = 500, body: str = "", times: int = 1):
        self.faults.append(Fault(method, path_part, status, body, times))

    def hang(self, method: str, path_part: str, seconds: float) -> None:
        self.faults.append(Fault(method, path_part, 0, "", 1, seconds))

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def calls(self, method: str | None = None, path_part: str = "") -> list[Recorded]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and path_part in r.path
        ]

    def member(self, server_id: str) -> Member:
        return next(m for m in self.members if m.server_id == server_id)

    # ---- the APIs ---------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: Any,
    ) -> Answer:
        with self._lock:
            self.requests.append(Recorded(method, path, query, headers, body))
            fault = next(
                (f for f in self.faults if f.method == method and f.path_part in path and f.times),
                None,
            )
            if fault is not None:
                fault.times -= 1
        if fault is not None and fault.delay:
            self.release.wait(fault.delay)
        elif fault is not None:
            return fault.status, {}, fault.body
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] in (["openstack", "latest"], ["latest", "meta-data"]):
            return self._metadata(parts)
        if parts[:3] == ["v3", "auth", "tokens"] and method == "POST":
            return self._keystone(body)
        if parts[:1] == ["webhook"] and method == "POST":
            return 200, {}, ""
        if headers.get("x-auth-token") not in self.valid_tokens:
            return 401, {}, UNAUTHORIZED
        if parts[:2] == ["compute", "v2.1"] and parts[2:3] == ["servers"] and method == "GET":
            return self._nova_server(parts[3])
        if parts[:1] and parts[0] in HEAT_PREFIXES and parts[1:3] == ["v1", PROJECT]:
            return self._heat(method, parts[3:], query, body)
        return 404, {}, {"error": "not found"}

    def _metadata(self, parts: list[str]) -> Answer:
        me = self.me
        if parts == ["openstack", "latest", "meta_data.json"]:
            return (
                200,
                {},
                {
                    "uuid": me.server_id,
                    "name": me.server_name,
                    "hostname": me.server_name + ".novalocal",
                    "launch_index": 0,
                    "availability_zone": "nova",
                    "project_id": PROJECT,
                    "meta": {"metering.server_group": self.stack_id},
                },
            )
        if parts == ["openstack", "latest", "network_data.json"]:
            return (
                200,
                {},
                {
                    "links": [
                        {"id": "tap0", "type": "ovs", "ethernet_mac_address": "fa:16:3e:00:00:01"}
                    ],
                    "networks": [
                        {
                            "id": "network0",
                            "type": "ipv6",
                            "link": "tap0",
                            "ip_address": "fd00::11",
                            "network_id": "n0",
                        },
                        {
                            "id": "network1",
                            "type": "ipv4",
                            "link": "tap0",
                            "ip_address": me.ip,
                            "netmask": "255.255.255.0",
                            "network_id": "n1",
                        },
                    ],
                    "services": [],
                },
            )
        if parts == ["latest", "meta-data", "local-ipv4"] and self.local_ipv4 is not None:
            return 200, {"Content-Type": "text/plain"}, self.local_ipv4
        return 404, {}, "Not Found"

    def _keystone(self, body: Any) -> Answer:
        try:
            identity = body["auth"]["identity"]
            credential = identity["application_credential"]
            good = identity["methods"] == ["application_credential"] and credential == {
                "id": CREDENTIAL_ID,
                "secret": CREDENTIAL_SECRET,
            }
        except (KeyError, TypeError):
            return 400, {}, _error(400, "Bad Request", "Invalid input for field 'identity'")
        if not good:
            return 401, {}, UNAUTHORIZED
        token = "gAAAAA" + uuid.uuid4().hex
        with self._lock:
            self.valid_tokens.add(token)
            self.issued_tokens.append(token)
        now = datetime.now(UTC)
        expires = (now + self.token_lifetime).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        catalog = [
            _service("identity", "keystone", [("public", "RegionOne", self.url + "/v3")]),
            _service(
                "orchestration",
                "heat",
                [(i, r, f"{self.url}/{p}/v1/{PROJECT}") for p, (i, r) in HEAT_PREFIXES.items()],
            ),
            _service(
                "compute",
                "nova",
                [(i, r, f"{self.url}/compute/v2.1") for i, r in set(HEAT_PREFIXES.values())],
            ),
        ]
        answer = {
            "token": {
                "methods": ["application_credential"],
                "expires_at": expires,
                "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "project": {"id": PROJECT, "name": "etcd", "domain": {"id": "default"}},
                "user": {"id": "u1", "name": "etcd-agent", "domain": {"id": "default"}},
                "application_credential": {
                    "id": CREDENTIAL_ID,
                    "name": "etcd-agents",
                    "restricted": True,
                },
                "catalog": catalog,
            }
        }
        return 201, {"X-Subject-Token": token}, answer

    def _nova_server(self, server_id: str) -> Answer:
        member = next((m for m in self.members if m.server_id == server_id), None)
        if member is None or member.nova_status is None:
            return (
                404,
                {},
                {"itemNotFound": {"code": 404, "message": "Instance could not be found."}},
            )
        addresses = {
            "etcd-net": [
                {
                    "version": 4,
                    "addr": member.ip,
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01",
                },
                {
                    "version": 4,
                    "addr": "203.0.113.7",
                    "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01",
                },
            ]
        }
        return (
            200,
            {},
            {
                "server": {
                    "id": member.server_id,
                    "name": member.server_name,
                    "status": member.nova_status,
                    "addresses": addresses,
                    "created": member.creation_time + "Z",
                    "tenant_id": PROJECT,
                }
            },
        )

    def _stack_body(self, nested: bool) -> dict[str, Any]:
        if nested:
            return {
                "id": self.nested_id,
                "stack_name": self.nested_name,
                "stack_status": self.nested_status,
                "creation_time": "2026-03-01T10:00:00Z",
                "updated_time": self.nested_updated,
                "parent": self.stack_id,
            }
        return {
            "id": self.stack_id,
            "stack_name": self.stack_name,
            "stack_status": "CREATE_COMPLETE",
            "creation_time": "2026-03-01T09:59:00Z",
            "updated_time": None,
            "parent": None,
        }

    def _resource(self, nested: bool, name: str) -> dict[str, Any] | None:
        base = f"{self.url}/heat/v1/{PROJECT}/stacks"
        if not nested:
            kinds = {
                "etcd_group": ("OS::Heat::AutoScalingGroup", self.nested_id),
                "scale_up": ("OS::Heat::ScalingPolicy", "sp-up"),
                "scale_down": ("OS::Heat::ScalingPolicy", "sp-down"),
            }
            if name not in kinds:
                return None
            kind, physical = kinds[name]
            links = [
                {
                    "href": f"{base}/{self.stack_name}/{self.stack_id}/resources/{name}",
                    "rel": "self",
                }
            ]
            if name == "etcd_group":
                links.append(
                    {"href": f"{base}/{self.nested_name}/{self.nested_id}", "rel": "nested"}
                )
            return {
                "resource_name": name,
                "logical_resource_id": name,
                "resource_type": kind,
                "physical_resource_id": physical,
                "resource_status": "CREATE_COMPLETE",
                "resource_status_reason": "state changed",
                "creation_time": "2026-03-01T09:59:10",
                "updated_time": "2026-03-01T09:59:10",
                "required_by": [],
                "links": links,
            }
        member = next((m for m in self.members if m.resource_name == name), None)
        if member is None:
            return None
        return {
            "resource_name": member.resource_name,
            "logical_resource_id": member.resource_name,
            "resource_type": "OS::Nova::Server",
            "physical_resource_id": member.server_id,
            "resource_status": member.resource_status,
            "resource_status_reason": member.resource_status_reason,
            "creation_time": member.creation_time,
            "updated_time": member.creation_time,
            "required_by": [],
            "links": [
                {
                    "href": f"{base}/{self.nested_name}/{self.nested_id}/resources/{name}",
                    "rel": "self",
                }
            ],
        }

    def _heat(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: Any
    ) -> Answer:
        not_found = (
            404,
            {},
            {
                "code": 404,
                "title": "Not Found",
                "error": {"type": "EntityNotFound", "message": "not found"},
            },
        )
        if not parts or parts[0] != "stacks":
            return not_found
        stacks = {(self.stack_name, self.stack_id): False, (self.nested_name, self.nested_id): True}
        if len(parts) == 2 and method == "GET":  # find stack: 302 to the canonical URL
            for name, stack_id in stacks:
                if parts[1] in (name, stack_id):
                    location = f"{self.url}/heat/v1/{PROJECT}/stacks/{name}/{stack_id}"
                    return 302, {"Location": location}, {"location": location}
            return not_found
        if len(parts) < 3 or (parts[1], parts[2]) not in stacks:
            return not_found
        nested = stacks[(parts[1], parts[2])]
        rest = parts[3:]
        if not rest and method == "GET":
            return 200, {}, {"stack": self._stack_body(nested)}
        if rest == ["resources"] and method == "GET":
            names = (
                [m.resource_name for m in self.members]
                if nested
                else ["etcd_group", "scale_up", "scale_down"]
            )
            resources = [self._resource(nested, n) for n in names]
            wanted = query.get("physical_resource_id")
            return (
                200,
                {},
                {
                    "resources": [
                        r for r in resources if not wanted or r["physical_resource_id"] in wanted
                    ]
                },
            )
        if len(rest) == 2 and rest[0] == "resources":
            resource = self._resource(nested, rest[1])
            if resource is None:
                return not_found
            if method == "GET":
                return 200, {}, {"resource": resource}
            if method == "PATCH":
                return self._mark_unhealthy(nested, rest[1], body)
        if len(rest) == 3 and rest[0] == "resources" and rest[2] == "metadata" and method == "GET":
            if not nested and rest[1] in self.resource_metadata:
                return 200, {}, {"metadata": self.resource_metadata[rest[1]]}
            if self._resource(nested, rest[1]) is None:
                return not_found
            return 200, {}, {"metadata": {}}
        if len(rest) == 3 and rest[0] == "resources" and rest[2] == "signal" and method == "POST":
            resource = self._resource(nested, rest[1])
            if resource is None:
                return not_found
            if resource["resource_type"] != "OS::Heat::ScalingPolicy":
                return (
                    400,
                    {},
                    {"error": {"message": "Signal resource during SIGNAL is not supported."}},
                )
            return 200, {}, ""
        return not_found

    def _mark_unhealthy(self, nested: bool, name: str, body: Any) -> Answer:
        allowed = {"mark_unhealthy", "resource_status_reason"}
        if (
            not isinstance(body, dict)
            or not set(body) <= allowed
            or not isinstance(body.get("mark_unhealthy"), bool)
        ):
            return 400, {}, {"error": {"message": f"Invalid body {body!r}"}}
        if not nested:
            return 400, {}, {"error": {"message": "not a group member"}}
        member = next(m for m in self.members if m.resource_name == name)
        if body["mark_unhealthy"]:
            member.resource_status = "CHECK_FAILED"
            member.resource_status_reason = body.get("resource_status_reason", "")
        return 200, {}, ""


def _handler(fake: FakeOpenStack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, answer = fake.handle(
                self.command, parts.path, parse_qs(parts.query), headers, body
            )
            if status == 0:
                return  # a hang that was released: just close
            data = answer if isinstance(answer, str) else json.dumps(answer)
            payload = data.encode()
            try:
                self.send_response(status)
                ctype = "application/json" if not isinstance(answer, str) else "text/plain"
                self.send_header("Content-Type", extra.pop("Content-Type", ctype))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    return Handler
