"""The lab's cloud over HTTP: the OpenStack APIs the agent and the node's boot call.

One server on the lab's address answers, each under the path prefix of its catalog
endpoint (as a cloud behind one proxy does, e.g. devstack's):

- Keystone v3 under `/identity`: `POST /v3/auth/tokens` (application credential), `GET
  /v3/auth/tokens` (a service validating a token);
- Heat v1 under `/heat-api/v1/{project}` (https://docs.openstack.org/api-ref/orchestration/
  v1/): find stack (302 to `/stacks/{name}/{id}`), show stack, show resource, list
  resources (the `physical_resource_id` filter), mark a resource unhealthy (PATCH), send a
  signal to a resource (a scaling policy: 200 at once, the resize follows), show resource
  metadata;
- Nova v2.1 under `/compute/v2.1` (https://docs.openstack.org/api-ref/compute/): show
  server details, reboot a server (`POST .../action {"reboot": {"type": "HARD"}}`), delete;
- the Nova metadata service (https://docs.openstack.org/nova/latest/user/metadata.html):
  `openstack/latest/meta_data.json`, `openstack/latest/network_data.json` and the EC2
  `latest/meta-data/local-ipv4`, under `/metadata/{server id}` on loopback (a cloud tells
  its servers apart by their source address; on loopback every node's is 127.0.0.1, so
  each node's `metadata_url` names its server); with the lab's network namespaces, at
  http://169.254.169.254 inside each node's namespace (`metadata_handler`), as on a cloud.

Every Heat and Nova call needs a valid token, and a token of a credential with access
rules passes only the calls they allow (lab.cloud.keystone, as keystonemiddleware checks
them, with the service type each endpoint's middleware is configured with).

For tests: every request is kept in `requests`; `fail()` and `hang()` inject faults.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

from lab.cloud.heat import Member
from lab.cloud.keystone import UNAUTHORIZED, Endpoint, Keystone

Answer = tuple[int, dict[str, str], Any]
"""(status, extra headers, JSON-able body or text)"""

IDENTITY = "/identity"
HEAT = "/heat-api"
HEAT_CFN = "/heat-api-cfn"
NOVA = "/compute"
METADATA = "/metadata"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    source: str = ""
    """The caller's address (in the namespaces mode, the node's own)."""


@dataclass
class Fault:
    method: str
    path_part: str
    status: int = 500
    body: str = ""
    times: int = 1
    delay: float = 0.0


@dataclass(frozen=True)
class StackResource:
    """A resource of the parent stack other than the group's members."""

    name: str
    type: str
    physical_id: str
    metadata: dict[str, Any] | None = None
    status: str = "CREATE_COMPLETE"
    reason: str = "state changed"


class Orchestrator(Protocol):
    """What the API needs of the cloud behind it (lab.cloud.openstack.LabCloud)."""

    stack_name: str
    stack_id: str
    nested_name: str
    nested_id: str
    group_resource: str
    clock: Callable[[], float]

    def resources(self) -> list[StackResource]: ...

    def members(self) -> list[Member]: ...

    def nested_status(self) -> tuple[str, float | None, float | None]:
        """(stack_status, creation time, updated time) of the group's nested stack."""
        ...

    def member_by_slot(self, slot: str) -> Member | None: ...

    def server(self, server_id: str) -> Member | None: ...

    def mark_unhealthy(self, server_id: str, reason: str, caller: str = "") -> Member: ...

    def signal(self, policy: str, caller: str = "") -> Any: ...

    def wait_signal(self, handle: str, details: Any) -> None: ...

    def member_ready(self, stack_id: str, handle: str, details: Any) -> bool: ...

    def stack_update(
        self,
        template: dict[str, Any],
        parameters: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
    ) -> list[str]: ...

    def reboot(self, server_id: str, kind: str) -> None: ...

    def delete_server(self, server_id: str) -> None: ...


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


NOT_FOUND: Answer = (
    404,
    {},
    {
        "code": 404,
        "title": "Not Found",
        "error": {"type": "EntityNotFound", "message": "not found"},
    },
)


class OpenStackApi:
    def __init__(self, cloud: Orchestrator, keystone: Keystone) -> None:
        self.cloud = cloud
        self.keystone = keystone
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.service_types: dict[str, str | None] = {"orchestration": "orchestration"}
        """Each service's `[keystone_authtoken] service_type` (None: unset)."""
        self.service_types["compute"] = "compute"
        self.ec2_metadata = True
        """The EC2-compatible metadata (local-ipv4); off on some clouds (404)."""
        self.release = threading.Event()
        self.url = ""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._server: ThreadingHTTPServer | None = None
        self.on_request: list[Callable[[Recorded], None]] = []

    # --- life ----------------------------------------------------------------------------

    def serve(self, host: str, port: int = 0, *, tls: tuple[str, str] | None = None) -> str:
        """Answer on host:port; with `tls` (certificate and key files) over https, as a
        cloud whose APIs a private CA certifies."""
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://{host}:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self.url

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def default_endpoints(self, region: str = "RegionOne") -> list[Endpoint]:
        project = self.keystone.project_id
        return [
            Endpoint("identity", "keystone", "public", region, f"{self.url}{IDENTITY}/v3"),
            Endpoint("orchestration", "heat", "public", region, f"{self.url}{HEAT}/v1/{project}"),
            Endpoint("compute", "nova", "public", region, f"{self.url}{NOVA}/v2.1"),
        ]

    def metadata_url(self, server_id: str) -> str:
        return f"{self.url}{METADATA}/{server_id}"

    def metadata_handler(self, server_id: str) -> type[BaseHTTPRequestHandler]:
        """The metadata service as one server's network sees it at 169.254.169.254 (a
        cloud's metadata proxy tells servers apart by the network they ask from; in the
        lab's namespaces each node has its own listener): every path is that server's."""
        return _handler(self, prefix=f"{METADATA}/{quote(server_id)}")

    # --- test hooks ----------------------------------------------------------------------

    def fail(
        self, method: str, path_part: str, status: int = 500, body: str = "", times: int = 1
    ) -> None:
        self.faults.append(Fault(method, path_part, status, body, times))

    def hang(self, method: str, path_part: str, seconds: float) -> None:
        self.faults.append(Fault(method, path_part, 0, "", 1, seconds))

    def calls(self, method: str | None = None, path_part: str = "") -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and path_part in r.path
            ]

    # --- routing -------------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: Any,
        source: str = "",
    ) -> Answer:
        record = Recorded(method, path, query, headers, body, source)
        self._local.source = source
        with self._lock:
            self.requests.append(record)
            fault = next(
                (f for f in self.faults if f.method == method and f.path_part in path and f.times),
                None,
            )
            if fault is not None:
                fault.times -= 1
        for listener in list(self.on_request):
            listener(record)
        if fault is not None and fault.delay:
            self.release.wait(fault.delay)
            return 0, {}, ""
        if fault is not None:
            return fault.status, {}, fault.body
        if path.startswith(METADATA + "/"):
            return self._metadata([unquote(p) for p in path[len(METADATA) :].split("/") if p])
        if path.startswith(HEAT_CFN + "/v1/signal/") and method == "POST":
            return self._presigned_signal(path, query)
        if path.startswith(IDENTITY + "/v3/auth/tokens"):
            if method == "POST":
                return self.keystone.authenticate(body)
            if method == "GET" and self.keystone.valid(headers.get("x-auth-token")):
                return self.keystone.validate(headers.get("x-subject-token", ""))
            return 401, {}, UNAUTHORIZED
        endpoint = self._endpoint_of(path)
        if endpoint is None:
            return 404, {}, {"error": f"nothing at {path}"}
        token = self.keystone.valid(headers.get("x-auth-token"))
        if token is None:
            return 401, {}, UNAUTHORIZED
        refused = self.keystone.allowed(
            token, self.service_types.get(endpoint.service_type), method, path
        )
        if refused is not None:
            return 401, {}, {"error": {"code": 401, "title": "Unauthorized", "message": refused}}
        rest = [unquote(p) for p in path[len(urlsplit(endpoint.url).path) :].split("/") if p]
        if endpoint.service_type == "orchestration":
            return self._heat(method, rest, query, body, endpoint)
        if endpoint.service_type == "compute":
            return self._nova(method, rest, body)
        return NOT_FOUND

    def _presigned_signal(self, path: str, query: dict[str, list[str]]) -> Answer:
        """Heat's pre-signed `alarm_url` (heat-api-cfn, an EC2-style signature in the query):
        no token; the resource is the last segment of the ARN in the path."""
        if not query.get("Signature"):
            return 403, {}, {"error": "the signature is missing"}
        policy = unquote(path.rstrip("/").rsplit("/", 1)[-1])
        if policy not in {r.name for r in self.cloud.resources()}:
            return NOT_FOUND
        self.cloud.signal(policy)
        return 200, {}, ""

    def _endpoint_of(self, path: str) -> Endpoint | None:
        found = [
            e
            for e in self.keystone.endpoints
            if e.service_type != "identity"
            and (path + "/").startswith(urlsplit(e.url).path.rstrip("/") + "/")
        ]
        return max(found, key=lambda e: len(urlsplit(e.url).path), default=None)

    def _caller(self) -> str:
        """The server a request came from, by its source address (the namespaces mode: each
        node has its own; on loopback every caller is 127.0.0.1 and none is told apart)."""
        source = getattr(self._local, "source", "")
        found = next((m for m in self.cloud.members() if source and m.ip == source), None)
        return found.server_id if found is not None else ""

    # --- the metadata service ------------------------------------------------------------

    def _metadata(self, parts: list[str]) -> Answer:
        if not parts:
            return 404, {}, "Not Found"
        member = self.cloud.server(parts[0])
        rest = parts[1:]
        if member is None:
            return 404, {}, "Not Found"
        if rest == ["openstack", "latest", "meta_data.json"]:
            return (
                200,
                {},
                {
                    "uuid": member.server_id,
                    "name": member.name,
                    "hostname": member.name + ".novalocal",
                    "launch_index": 0,
                    "availability_zone": "nova",
                    "project_id": self.keystone.project_id,
                    "meta": {"metering.server_group": self.cloud.stack_id},
                },
            )
        if rest == ["openstack", "latest", "network_data.json"]:
            return (
                200,
                {},
                {
                    "links": [{"id": "tap0", "type": "ovs"}],
                    "networks": [
                        {
                            "id": "network0",
                            "type": "ipv4",
                            "link": "tap0",
                            "ip_address": member.ip,
                            "netmask": "255.255.255.0",
                            "network_id": "lab-net",
                        }
                    ],
                    "services": [],
                },
            )
        if rest == ["latest", "meta-data", "local-ipv4"] and self.ec2_metadata:
            return 200, {"Content-Type": "text/plain"}, member.ip
        return 404, {}, "Not Found"

    # --- Nova ----------------------------------------------------------------------------

    def _nova(self, method: str, parts: list[str], body: Any) -> Answer:
        if len(parts) < 2 or parts[0] != "servers":
            return NOT_FOUND
        member = self.cloud.server(parts[1])
        if member is None or member.nova_status is None:
            return 404, {}, {"itemNotFound": {"code": 404, "message": "Instance not found."}}
        if len(parts) == 2 and method == "GET":
            return 200, {}, {"server": self._server_body(member)}
        if len(parts) == 2 and method == "DELETE":
            self.cloud.delete_server(member.server_id)
            return 204, {}, ""
        if parts[2:] == ["action"] and method == "POST":
            reboot = body.get("reboot") if isinstance(body, dict) else None
            kind = reboot.get("type") if isinstance(reboot, dict) else None
            if kind not in ("HARD", "SOFT"):
                return 400, {}, {"badRequest": {"code": 400, "message": f"bad action {body!r}"}}
            self.cloud.reboot(member.server_id, kind)
            return 202, {}, ""
        return NOT_FOUND

    def _server_body(self, member: Member) -> dict[str, Any]:
        return {
            "id": member.server_id,
            "name": member.name,
            "status": member.nova_status,
            "addresses": {
                "lab-net": [
                    {
                        "version": 4,
                        "addr": member.ip,
                        "OS-EXT-IPS:type": "fixed",
                        "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01",
                    }
                ]
            },
            "created": _iso(member.created_at),
            "tenant_id": self.keystone.project_id,
        }

    # --- Heat ----------------------------------------------------------------------------

    def _stacks(self) -> dict[tuple[str, str], str]:
        """(name, id) -> "parent", "group", or the slot of a member with a stack of its own."""
        cloud = self.cloud
        stacks = {
            (cloud.stack_name, cloud.stack_id): "parent",
            (cloud.nested_name, cloud.nested_id): "group",
        }
        for member in cloud.members():
            if member.stack_id:
                stacks[(member.stack_name, member.stack_id)] = member.slot
        return stacks

    def _heat(
        self,
        method: str,
        parts: list[str],
        query: dict[str, list[str]],
        body: Any,
        endpoint: Endpoint,
    ) -> Answer:
        if not parts or parts[0] != "stacks":
            return NOT_FOUND
        stacks = self._stacks()
        if len(parts) == 2 and method == "GET":  # find stack: 302 to the canonical URL
            for name, stack_id in stacks:
                if parts[1] in (name, stack_id):
                    location = f"{endpoint.url}/stacks/{quote(name)}/{stack_id}"
                    return 302, {"Location": location}, {"location": location}
            return NOT_FOUND
        if len(parts) < 3 or (parts[1], parts[2]) not in stacks:
            return NOT_FOUND
        kind = stacks[(parts[1], parts[2])]
        if kind not in ("parent", "group"):
            return self._member_stack(method, kind, parts, body, endpoint)
        nested = kind == "group"
        rest = parts[3:]
        base = f"{endpoint.url}/stacks/{quote(parts[1])}/{parts[2]}"
        if not rest and method == "GET":
            return 200, {}, {"stack": self._stack_body(nested)}
        if not rest and method in ("PATCH", "PUT") and not nested:
            return self._update_stack(body)
        if rest == ["resources"] and method == "GET":
            try:
                depth = int((query.get("nested_depth") or ["0"])[0])
            except ValueError:
                return 400, {}, {"error": {"message": "nested_depth must be an integer"}}
            resources = self._resources(nested, base)
            if nested and depth > 0:
                resources += self._member_resources(endpoint)
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
        if len(rest) >= 2 and rest[0] == "resources":
            found = next(
                (r for r in self._resources(nested, base) if r["resource_name"] == rest[1]), None
            )
            if found is None:
                return NOT_FOUND
            if len(rest) == 2 and method == "GET":
                return 200, {}, {"resource": found}
            if len(rest) == 2 and method == "PATCH":
                return self._mark_unhealthy(nested, rest[1], body)
            if rest[2:] == ["metadata"] and method == "GET":
                return 200, {}, {"metadata": self._metadata_of(nested, rest[1])}
            if rest[2:] == ["signal"] and method == "POST":
                if found["resource_type"] == "OS::Heat::WaitConditionHandle":
                    self.cloud.wait_signal(rest[1], body)
                    return 200, {}, ""
                if found["resource_type"] != "OS::Heat::ScalingPolicy":
                    # Heat: ResourceActionNotSupported for a resource without handle_signal
                    message = f"signal is not supported for resource {rest[1]}."
                    return 400, {}, {"error": {"message": message}}
                self.cloud.signal(rest[1], caller=self._caller())
                return 200, {}, ""
        return NOT_FOUND

    def _update_stack(self, body: Any) -> Answer:
        """Heat "Update stack" (PUT) / "Update stack (PATCH)": the new `template` (a
        mapping, or its YAML/JSON text), carried out for what the lab's Heat models."""
        import yaml

        template = body.get("template") if isinstance(body, dict) else None
        if isinstance(template, str):
            try:
                template = yaml.safe_load(template)
            except yaml.YAMLError as error:
                return 400, {}, {"error": {"message": f"the template does not parse: {error}"}}
        if not isinstance(template, dict):
            return 400, {}, {"error": {"message": "an update needs a template"}}
        parameters = body.get("parameters") if isinstance(body, dict) else None
        files = body.get("files") if isinstance(body, dict) else None
        try:
            self.cloud.stack_update(
                template,
                parameters if isinstance(parameters, dict) else None,
                files if isinstance(files, dict) else None,
            )
        except ValueError as error:
            return 400, {}, {"error": {"type": "NotSupported", "message": str(error)}}
        return 202, {}, ""

    def _stack_body(self, nested: bool) -> dict[str, Any]:
        cloud = self.cloud
        if nested:
            status, created, updated = cloud.nested_status()
            return {
                "id": cloud.nested_id,
                "stack_name": cloud.nested_name,
                "stack_status": status,
                "creation_time": _iso(created),
                "updated_time": _iso(updated),
                "parent": cloud.stack_id,
            }
        return {
            "id": cloud.stack_id,
            "stack_name": cloud.stack_name,
            "stack_status": "CREATE_COMPLETE",
            "creation_time": _iso(created_at_of(cloud)),
            "updated_time": None,
            "parent": None,
        }

    def _resources(self, nested: bool, base: str) -> list[dict[str, Any]]:
        """A stack's resources as Heat's "List resources" shows them (heat/api/openstack/
        v1/resources.py `format_resource`: `links` self and stack, and nested for a
        resource with a stack of its own; `parent_resource` in a nested stack)."""

        def links(name: str, nested_stack: str = "") -> list[dict[str, str]]:
            out = [
                {"href": f"{base}/resources/{quote(name)}", "rel": "self"},
                {"href": base, "rel": "stack"},
            ]
            if nested_stack:
                out.append({"href": nested_stack, "rel": "nested"})
            return out

        if nested:
            stacks = base.rsplit("/stacks/", 1)[0] + "/stacks"
            return [
                {
                    "resource_name": m.slot,
                    "logical_resource_id": m.slot,
                    "resource_type": m.type,
                    "physical_resource_id": m.stack_id or m.server_id,
                    "resource_status": m.resource_status,
                    "resource_status_reason": m.reason or "state changed",
                    "creation_time": _iso(m.created_at),
                    "updated_time": _iso(m.server_created_at or m.created_at),
                    "required_by": [],
                    "parent_resource": self.cloud.group_resource,
                    "links": links(
                        m.slot,
                        f"{stacks}/{quote(m.stack_name)}/{m.stack_id}" if m.stack_id else "",
                    ),
                }
                for m in self.cloud.members()
            ]
        return [
            {
                "resource_name": r.name,
                "logical_resource_id": r.name,
                "resource_type": r.type,
                "physical_resource_id": r.physical_id,
                "resource_status": r.status,
                "resource_status_reason": r.reason,
                "creation_time": _iso(created_at_of(self.cloud)),
                "updated_time": _iso(created_at_of(self.cloud)),
                "required_by": [],
                "links": links(r.name),
            }
            for r in self.cloud.resources()
        ]

    def _member_resources(self, endpoint: Endpoint) -> list[dict[str, Any]]:
        """The resources inside each member stack (`nested_depth` 1 of the group's)."""
        rows: list[dict[str, Any]] = []
        for member in self.cloud.members():
            if member.stack_id:
                rows += self._inside(member, f"{endpoint.url}/stacks")
        return rows

    def _inside(self, member: Member, stacks: str) -> list[dict[str, Any]]:
        """A member stack's resources: its server, its wait condition handle and condition
        (infra.heat.MemberStack), as Heat lists them."""
        base = f"{stacks}/{quote(member.stack_name)}/{member.stack_id}"
        if member.nova_status == "ERROR":
            server_status = "CREATE_FAILED"
        elif member.status == "BUILD":
            server_status = "CREATE_IN_PROGRESS"
        else:  # a member marked unhealthy or whose wait failed: the member, not its server
            server_status = "CREATE_COMPLETE"
        rows = [("server", "OS::Nova::Server", member.server_id, server_status, "state changed")]
        if member.handle:
            rows.append(
                (
                    member.handle,
                    "OS::Heat::WaitConditionHandle",
                    f"{member.stack_id}-{member.handle}",
                    "CREATE_COMPLETE",
                    "state changed",
                )
            )
            ready = member.ready
            if ready is not None:
                status, reason = ready.outcome(self.cloud.clock())
                shown = "INIT_COMPLETE" if status == "INIT" else f"CREATE_{status}"
                rows.append(("ready", "OS::Heat::WaitCondition", "", shown, reason or ""))
        created = _iso(member.server_created_at or member.created_at)
        return [
            {
                "resource_name": name,
                "logical_resource_id": name,
                "resource_type": rtype,
                "physical_resource_id": physical,
                "resource_status": status,
                "resource_status_reason": reason,
                "creation_time": created,
                "updated_time": created,
                "required_by": [],
                "parent_resource": member.slot,
                "links": [
                    {"href": f"{base}/resources/{quote(name)}", "rel": "self"},
                    {"href": base, "rel": "stack"},
                ],
            }
            for name, rtype, physical, status, reason in rows
        ]

    def _member_stack(
        self, method: str, slot: str, parts: list[str], body: Any, endpoint: Endpoint
    ) -> Answer:
        """A member stack's own API: show it, list its resources, signal its handle."""
        member = self.cloud.member_by_slot(slot)
        if member is None:
            return NOT_FOUND
        rest = parts[3:]
        stacks = f"{endpoint.url}/stacks"
        if not rest and method == "GET":
            return (
                200,
                {},
                {
                    "stack": {
                        "id": member.stack_id,
                        "stack_name": member.stack_name,
                        "stack_status": member.resource_status,
                        "creation_time": _iso(member.created_at),
                        "updated_time": _iso(member.server_created_at),
                        "parent": self.cloud.nested_id,
                    }
                },
            )
        rows = self._inside(member, stacks)
        if rest == ["resources"] and method == "GET":
            return 200, {}, {"resources": rows}
        if len(rest) >= 2 and rest[0] == "resources":
            found = next((r for r in rows if r["resource_name"] == rest[1]), None)
            if found is None:
                return NOT_FOUND
            if len(rest) == 2 and method == "GET":
                return 200, {}, {"resource": found}
            if rest[2:] == ["signal"] and method == "POST":
                if found["resource_type"] != "OS::Heat::WaitConditionHandle":
                    message = f"signal is not supported for resource {rest[1]}."
                    return 400, {}, {"error": {"message": message}}
                self.cloud.member_ready(member.stack_id, rest[1], body)
                return 200, {}, ""
        return NOT_FOUND

    def _metadata_of(self, nested: bool, name: str) -> dict[str, Any]:
        if nested:
            return {}
        found = next((r for r in self.cloud.resources() if r.name == name), None)
        return dict(found.metadata or {}) if found is not None else {}

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
        member = self.cloud.member_by_slot(name)
        if member is None:
            return NOT_FOUND
        if body["mark_unhealthy"]:
            try:
                self.cloud.mark_unhealthy(
                    member.server_id,
                    str(body.get("resource_status_reason")),
                    caller=self._caller(),
                )
            except RuntimeError as error:  # Heat: the resource is locked (an update)
                return 409, {}, {"error": {"type": "ActionInProgress", "message": str(error)}}
        return 200, {}, ""


def created_at_of(cloud: Orchestrator) -> float | None:
    status = cloud.nested_status()
    return status[1]


def new_id() -> str:
    return str(uuid.uuid4())


def _handler(api: OpenStackApi, prefix: str = "") -> type[BaseHTTPRequestHandler]:
    """Requests to `api`; `prefix` goes before every path (a server's own metadata service)."""

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(prefix + self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                status, extra, answer = api.handle(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    headers,
                    body,
                    source=str(self.client_address[0]),
                )
            except Exception as error:  # a bug of the lab's cloud is a 500, as a cloud's is
                status, extra, answer = 500, {}, {"error": f"{type(error).__name__}: {error}"}
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
                pass  # the caller is gone (its server was deleted meanwhile)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    return Handler
