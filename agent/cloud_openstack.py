"""The cloud on OpenStack: Nova's metadata service, Keystone v3, Heat and Nova's API.

Calls, each with its API reference:

- who am I: the metadata service, `GET /openstack/latest/meta_data.json` (`uuid`, `name`)
  and `GET /latest/meta-data/local-ipv4` (EC2-compatible), falling back to the
  `ip_address` of an `ipv4` network in `/openstack/latest/network_data.json`
  (https://docs.openstack.org/nova/latest/user/metadata.html#metadata-service). A cloud
  without a metadata service gives its servers a config drive; cloud-init reads it at
  boot and writes `/run/cloud-init/instance-data.json` (https://cloudinit.readthedocs.io/
  en/latest/explanation/instancedata.html), whose `ds.meta_data` is Nova's meta_data.json
  and `ds.ec2_metadata` its EC2 meta-data (`local-ipv4`). The agent reads that file when
  the metadata service does not answer within a few seconds (its sandbox has no devices,
  so it does not mount the drive itself).
- a token: `POST /v3/auth/tokens` with the application credential; the token is the
  `X-Subject-Token` header, the body holds the catalog and the project
  (https://docs.openstack.org/api-ref/identity/v3/#authenticating-with-an-application-credential).
  Heat is the catalog's `orchestration` service, Nova its `compute` service, at
  `settings.interface` in `settings.region`. A 401 from Heat or Nova gets one new token
  and one retry.
- Heat (https://docs.openstack.org/api-ref/orchestration/v1/): "Find stack"
  (`GET /stacks/{id}`, a 302 to `/stacks/{name}/{id}`), "Show stack details",
  "Show resource data" (the group's `physical_resource_id` is its nested stack),
  "List stack resources" (`physical_resource_id` of a member is its Nova server),
  "Mark a resource as unhealthy" (`PATCH .../resources/{name}`) and "Send a signal to a
  resource" (`POST .../resources/{policy}/signal`).
- Nova: "Show server details" (`GET /servers/{id}`: status, name, fixed IPv4)
  (https://docs.openstack.org/api-ref/compute/#show-server-details).

Every call has a timeout; a failure raises `CloudError` naming the call, with the
status and an excerpt of the answer. The application credential secret and the token
never reach a log line or an error message.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from agent.cloud import CloudError
from agent.httpclient import Http, HttpError, HttpTimeout, Response
from agent.settings import OpenStackCloud
from agent.snapshot import CloudNode, CloudStatus, NodeIdentity

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
METADATA_TIMEOUT = 3.0
"""Seconds the metadata service is given before the config drive's copy is read."""
TOKEN_MARGIN = 60.0
"""Seconds before its `expires_at` that a token is renewed."""


class OpenStackGroup:
    """This node's autoscaling group, through Heat; implements `agent.cloud.Cloud`."""

    def __init__(
        self,
        settings: OpenStackCloud,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        session: Http | None = None,
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self.http = session or Http()
        self._token: str | None = None
        self._token_expires = 0.0
        self._catalog: list[dict[str, Any]] = []
        self._parent: tuple[str, str] | None = None
        self._group_status = ""
        """The group resource's status, as last read (`_nested_stack`)."""

    # ---- the Cloud interface -------------------------------------------------------------

    def whoami(self) -> NodeIdentity:
        """Server id and name from meta_data.json; IPv4 from local-ipv4 or network_data.json;
        from cloud-init's instance data (the config drive) when the service does not answer."""
        try:
            meta = self._metadata_json("openstack/latest/meta_data.json")
        except CloudError as error:
            log.info("metadata service: %s; reading %s", error, self.settings.instance_data)
            return self._from_instance_data(str(error))
        server_id, name = meta.get("uuid"), meta.get("name")
        if not isinstance(server_id, str) or not server_id or not isinstance(name, str):
            raise CloudError(f"metadata meta_data.json: no uuid/name in {str(meta)[:200]}")
        return NodeIdentity(id=server_id, name=name, ip=self._my_ipv4())

    def _from_instance_data(self, why: str) -> NodeIdentity:
        path = self.settings.instance_data
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CloudError(
                f"who am I: the metadata service did not answer ({why}) and {path} is not"
                f" readable ({error})"
            ) from None
        ds = _dict(_dict(data).get("ds"))
        meta = _dict(ds.get("meta_data"))
        v1 = _dict(_dict(data).get("v1"))
        server_id = meta.get("uuid") or v1.get("instance_id")
        name = meta.get("name")
        candidates = [_dict(ds.get("ec2_metadata")).get("local-ipv4")]
        for entry in _dict(ds.get("network_json")).get("networks") or []:
            if isinstance(entry, dict) and entry.get("type") == "ipv4":
                candidates.append(entry.get("ip_address"))
        ip = next((str(c) for c in candidates if c and _is_ipv4(str(c))), None)
        if not isinstance(server_id, str) or not isinstance(name, str) or not name or ip is None:
            raise CloudError(
                f"who am I: {path} has no server uuid, name and IPv4 (ds.meta_data.uuid/name,"
                f" ds.ec2_metadata.local-ipv4): uuid {server_id!r}, name {name!r}, ip {ip!r}"
            )
        return NodeIdentity(id=server_id, name=name, ip=ip)

    def group_members(self) -> list[CloudNode]:
        """Every server of the group, from the group's nested stack and Nova.

        A member is either a server (an older template) or a stack of its own holding its
        server and the wait condition its agent signals (infra.heat.MemberStack): the
        group's resources are listed with `nested_depth=1`, and a member stack's server
        is the `OS::Nova::Server` row whose `parent_resource` is the member.

        - status: FAILED when Heat says the member or its server is `*_FAILED` (a member
          marked unhealthy is `CHECK_FAILED`) or Nova says ERROR; DELETED when Heat is
          deleting it or Nova no longer knows it; BUILD while Heat creates the server or
          Nova builds, rebuilds or reboots it; else ACTIVE. A member stack still waiting
          for its agent's signal is ACTIVE once its server is.
        - initial: True for every member while the nested stack has never been updated
          (its `stack_status` is `CREATE_*` and it has no `updated_time`). The group's
          first creation is the nested stack's CREATE; any later change of the group
          (scale up, scale down, replacement) is an UPDATE of it, after which no member
          counts as initial, so a node that finds no cluster later joins, never bootstraps.
        - group_updating: the group resource (in the parent stack) is not `*_COMPLETE`:
          a stack create or update runs (a rolling update, pause_time included) or
          failed, and Heat's `adjust` drops every scaling signal until one succeeds.
        - created_at: the member resource's `creation_time` (UTC) as a Unix time;
          resource: its `resource_name` (with it, Heat's order of removal). A member stack
          updated in place keeps both when its server is replaced.
        Members whose server does not exist yet (no `physical_resource_id`) are left out.
        """
        nested, members = self._members()
        initial = str(nested.get("stack_status", "")).startswith("CREATE_") and not nested.get(
            "updated_time"
        )
        # adjust() acts only on a COMPLETE group resource (a create or update running, or
        # one that failed, until an update succeeds)
        updating = bool(self._group_status) and not self._group_status.endswith("_COMPLETE")
        nodes = []
        for member in members:
            server = self._server(member.server_id)
            nodes.append(
                CloudNode(
                    id=member.server_id,
                    name=str((server or {}).get("name") or member.name),
                    ip=_fixed_ipv4(server) if server else None,
                    status=_status(member.status, server),
                    created_at=_unix_time(member.created),
                    initial=initial,
                    resource=member.name,
                    booted_at=_unix_time(member.booted) if member.booted else None,
                    waiting=member.waiting,
                    group_updating=updating,
                )
            )
        return nodes

    def mark_unhealthy(self, node_id: str, reason: str) -> None:
        """Heat "Mark a resource as unhealthy" on the group member backed by server `node_id`
        (the member resource: a member stack is replaced whole, with a new wait condition)."""
        nested, members = self._members()
        match = [m for m in members if m.server_id == node_id]
        if not match:
            raise CloudError(f"mark unhealthy: server {node_id} is not a member of the group")
        resource_name = match[0].name
        path = f"{_stack_path(nested)}/resources/{quote(resource_name, safe='')}"
        body = {"mark_unhealthy": True, "resource_status_reason": reason}
        self._call("heat", "PATCH", path, json=body, what="mark unhealthy")
        log.info("marked group member %s (server %s) unhealthy: %s", resource_name, node_id, reason)

    def member_ready(self, node_id: str, reason: str) -> bool:
        """Heat "Send a signal to a resource": SUCCESS to the wait condition handle in the
        member stack of server `node_id` (its id is the server's, so a repeated signal
        counts once). False when the member has no handle (a server of an older
        template): nothing waits for it.

        The server is found by its id (`physical_resource_id`, filtered in Heat's
        database: while a member stack is updated in place its old and new servers share
        the resource name, and a plain listing shows one of them), then the handle among
        the member stack's own resources (its current template's)."""
        nested = self._nested_stack()
        rows = self._nested_resources(nested, nested_depth="1", physical_resource_id=node_id)
        mine = [r for r in rows if r.get("physical_resource_id") == node_id]
        if not mine:
            raise CloudError(f"member ready: server {node_id} is not a member of the group")
        stack_path, stack_id = _stack_link(mine[0])
        if stack_id is None or stack_id == str(nested["id"]) or stack_path is None:
            return False  # a server of an older template: the member is the server
        answer = _body(
            self._call("heat", "GET", f"{stack_path}/resources", what="list member stack"),
            "heat list member stack",
        )
        handles = [
            r
            for r in answer.get("resources") or []
            if isinstance(r, dict)
            and r.get("resource_type") == "OS::Heat::WaitConditionHandle"
            and not str(r.get("resource_status", "")).startswith("DELETE_")
        ]
        if not handles:
            return False
        handle = str(max(handles, key=lambda r: str(r.get("creation_time") or ""))["resource_name"])
        path = f"{stack_path}/resources/{quote(handle, safe='')}/signal"
        body = {"status": "SUCCESS", "reason": reason, "data": "", "id": node_id}
        self._call("heat", "POST", path, json=body, what="member ready signal")
        log.info("signalled %s of the member stack of server %s: %s", handle, node_id, reason)
        return True

    def scale_down(self) -> None:
        """Heat "Send a signal to a resource": the scale-down policy (-1, FAILED first)."""
        self._signal(self.settings.scale_down_policy, "scale down")

    def scale_up(self) -> None:
        """POST `scale_up_url` if set, else signal the scale-up policy through Heat's API.

        The webhook is posted without a token first (Heat's pre-signed `alarm_url` needs
        none, and Keystone may be down); only when it answers 401/403 and lies under Heat's
        own endpoint (Heat's `signal_url`) is it posted again with the token. The token
        never goes anywhere else.
        """
        url = self.settings.scale_up_url
        if not url:
            self._signal(self.settings.scale_up_policy, "scale up")
            return
        response = self._send("scale up webhook", "POST", url, {}, None, None, ok=(401, 403))
        if response.status_code in (401, 403):
            heat = self._endpoint("orchestration")
            if not (_same_origin(url, heat) and url.startswith(heat + "/")):
                raise CloudError(f"scale up webhook: HTTP {response.status_code}, not Heat's URL")
            self._call("heat", "POST", url[len(heat) :], what="scale up webhook")
        log.info("scale-up webhook posted")

    def bundle_metadata(self) -> dict[str, Any]:
        """Heat "Show resource metadata" of the bundle resource of the parent stack."""
        found = self._resource_metadata(self.settings.bundle_resource, "bundle")
        if found is None:
            raise CloudError("heat show bundle: no metadata object in the answer")
        return found

    def stack_document(self) -> dict[str, Any] | None:
        """Heat "Show resource metadata" of the settings resource of the parent stack;
        None when the stack has none (an older stack)."""
        return self._resource_metadata(self.settings.settings_resource, "settings") or None

    def _resource_metadata(self, resource: str, what: str) -> dict[str, Any] | None:
        """A resource of the parent stack's metadata; None if it has none (or no such
        resource: 404)."""
        name, stack_id = self._parent_stack()
        path = (
            f"/stacks/{quote(name, safe='')}/{stack_id}/resources/{quote(resource, safe='')}"
            "/metadata"
        )
        response = self._call("heat", "GET", path, what=f"show {what}", ok=(404,))
        if response.status_code == 404:
            return None
        found = _body(response, f"heat show {what}").get("metadata")
        return found if isinstance(found, dict) else None

    # ---- Heat ---------------------------------------------------------------------------

    def _signal(self, policy: str, what: str) -> None:
        name, stack_id = self._parent_stack()
        path = f"/stacks/{quote(name, safe='')}/{stack_id}/resources/{quote(policy, safe='')}"
        self._call("heat", "POST", path + "/signal", what=f"{what} signal")
        log.info("signalled %s policy %s of stack %s", what, policy, name)

    def _parent_stack(self) -> tuple[str, str]:
        """(name, id) of settings.stack_id: "name/id" as is, a bare name or id found once."""
        if self._parent is None:
            given = self.settings.stack_id.strip("/")
            if "/" in given:
                name, stack_id = given.split("/", 1)
                self._parent = (name, stack_id)
            else:
                stack = self._find_stack(given)
                self._parent = (str(stack["stack_name"]), str(stack["id"]))
        return self._parent

    def _find_stack(self, identity: str) -> dict[str, Any]:
        """Heat "Find stack" then "Show stack details"; the 302 is read, not followed."""
        response = self._call(
            "heat", "GET", f"/stacks/{quote(identity, safe='')}", what="find stack", redirect=True
        )
        if response.status_code in (301, 302, 303, 307, 308):
            location = urlsplit(response.headers.get("Location", "")).path
            tail = location.rsplit("/stacks/", 1)[-1].split("/")
            if "/stacks/" not in location or len(tail) < 2:
                raise CloudError(f"heat find stack {identity}: odd Location {location!r}")
            response = self._call("heat", "GET", f"/stacks/{tail[0]}/{tail[1]}", what="show stack")
        stack = _body(response, "heat show stack").get("stack")
        if not isinstance(stack, dict) or not stack.get("id") or not stack.get("stack_name"):
            raise CloudError(f"heat show stack {identity}: no stack in the answer")
        return stack

    def _nested_stack(self) -> dict[str, Any]:
        name, stack_id = self._parent_stack()
        group = quote(self.settings.group_resource, safe="")
        path = f"/stacks/{quote(name, safe='')}/{stack_id}/resources/{group}"
        resource = _body(self._call("heat", "GET", path, what="show group"), "heat show group")
        self._group_status = str((resource.get("resource") or {}).get("resource_status", ""))
        nested_id = (resource.get("resource") or {}).get("physical_resource_id")
        if not nested_id:
            raise CloudError(
                f"heat show group {self.settings.group_resource}: no nested stack yet"
                f" ({(resource.get('resource') or {}).get('resource_status')})"
            )
        return self._find_stack(str(nested_id))

    def _nested_resources(self, nested: dict[str, Any], **filters: str) -> list[dict[str, Any]]:
        path = f"{_stack_path(nested)}/resources"
        answer = _body(
            self._call("heat", "GET", path, params=filters or None, what="list group members"),
            "heat list group members",
        )
        resources = answer.get("resources")
        if not isinstance(resources, list):
            raise CloudError("heat list group members: no resources list in the answer")
        return [r for r in resources if isinstance(r, dict) and r.get("resource_name")]

    def _members(self) -> tuple[dict[str, Any], list[_GroupMember]]:
        """The group's nested stack, and its members with their servers (Heat "List
        resources" with `nested_depth=1`: a member stack's own resources come with
        `parent_resource`, the member's name, and a `stack` link to that stack)."""
        nested = self._nested_stack()
        rows = self._nested_resources(nested, nested_depth="1")
        group_id = str(nested["id"])
        top: list[dict[str, Any]] = []
        inner: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if _stack_link(row)[1] in (None, group_id):
                top.append(row)
            elif row.get("parent_resource"):
                inner.setdefault(str(row["parent_resource"]), []).append(row)
        members = []
        for row in top:
            name = str(row["resource_name"])
            status = str(row.get("resource_status", ""))
            if row.get("resource_type") == "OS::Nova::Server":  # a server of an older template
                if row.get("physical_resource_id"):
                    members.append(
                        _GroupMember(
                            name, str(row["physical_resource_id"]), status, row.get("creation_time")
                        )
                    )
                continue
            own = inner.get(name, [])
            server = next((r for r in own if r.get("resource_type") == "OS::Nova::Server"), None)
            if server is None or not server.get("physical_resource_id"):
                continue
            ready = [r for r in own if r.get("resource_type") == "OS::Heat::WaitCondition"]
            waiting = any(
                str(r.get("resource_status", "")) == "INIT_COMPLETE"
                or str(r.get("resource_status", "")).endswith("_IN_PROGRESS")
                for r in ready
            )
            if not status.endswith("_FAILED") and not status.startswith("DELETE_"):
                status = str(server.get("resource_status", ""))
            members.append(
                _GroupMember(
                    name,
                    str(server["physical_resource_id"]),
                    status,
                    row.get("creation_time"),
                    server.get("creation_time"),
                    waiting,
                )
            )
        return nested, members

    # ---- Nova ---------------------------------------------------------------------------

    def server_gone(self, server_id: str) -> str | None:
        """Whether Nova has lost server `server_id` for good: how ("deleted": Nova does not
        know it or says DELETED; "in ERROR", as the issue's rule has it), None while it may
        come back (a SOFT_DELETED server can be restored, a SHUTOFF one started)."""
        server = self._server(server_id)
        status = str((server or {}).get("status", "")).upper()
        if server is None or status == "DELETED":
            return "deleted"
        if status == "ERROR":
            return "in ERROR"
        return None

    def _server(self, server_id: str) -> dict[str, Any] | None:
        """Nova "Show server details"; None when Nova does not know the server (404)."""
        response = self._call(
            "compute", "GET", f"/servers/{quote(server_id, safe='')}", what="show server", ok=(404,)
        )
        if response.status_code == 404:
            return None
        server = _body(response, "nova show server").get("server")
        if not isinstance(server, dict):
            raise CloudError(f"nova show server {server_id}: no server in the answer")
        return server

    # ---- metadata -----------------------------------------------------------------------

    def _metadata(self, path: str) -> Response:
        url = f"{self.settings.metadata_url.rstrip('/')}/{path}"
        timeout = min(self.timeout, METADATA_TIMEOUT)
        return self._send(f"metadata {path}", "GET", url, {}, None, None, timeout=timeout)

    def _metadata_json(self, path: str) -> dict[str, Any]:
        return _body(self._metadata(path), f"metadata {path}")

    def _my_ipv4(self) -> str:
        try:
            text = self._metadata("latest/meta-data/local-ipv4").text.strip()
            return str(ipaddress.IPv4Address(text))
        except (CloudError, ValueError) as error:
            log.info("EC2 local-ipv4 gave no address (%s); trying network_data.json", error)
        networks = self._metadata_json("openstack/latest/network_data.json").get("networks")
        for network in networks if isinstance(networks, list) else []:
            if isinstance(network, dict) and network.get("type") == "ipv4":
                try:
                    return str(ipaddress.IPv4Address(str(network.get("ip_address"))))
                except ValueError:
                    continue
        raise CloudError("metadata: no IPv4 address in local-ipv4 nor network_data.json")

    # ---- Keystone and the HTTP calls ----------------------------------------------------

    def _authenticate(self) -> None:
        """Keystone v3 "Authenticating with an application credential"."""
        base = self.settings.auth_url.rstrip("/")
        url = (base if base.endswith("/v3") else base + "/v3") + "/auth/tokens"
        credential = {
            "id": self.settings.application_credential_id,
            "secret": self.settings.application_credential_secret.get_secret_value(),
        }
        body = {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": credential,
                }
            }
        }
        response = self._send("keystone POST /v3/auth/tokens", "POST", url, {}, body, None)
        token = response.headers.get("X-Subject-Token")
        answer = _body(response, "keystone POST /v3/auth/tokens").get("token")
        if not token or not isinstance(answer, dict):
            raise CloudError("keystone POST /v3/auth/tokens: no X-Subject-Token or token body")
        catalog = answer.get("catalog")
        if not isinstance(catalog, list):
            raise CloudError("keystone POST /v3/auth/tokens: the token has no catalog")
        self._token, self._catalog = token, catalog
        expires = answer.get("expires_at")
        self._token_expires = _unix_time(expires) if expires else time.time() + 3600
        log.info("keystone: new token for application credential %s", credential["id"])

    def access(self, service_type: str, *, renew: bool = False) -> tuple[str, str]:
        """(the catalog's `service_type` endpoint, a valid token) for another client of the
        same credential (agent/swift.py); `renew`: a new token (after a 401)."""
        if renew or self._token is None or time.time() > self._token_expires - TOKEN_MARGIN:
            self._authenticate()
        return self._endpoint(service_type), self._token or ""

    def scrub(self, text: str) -> str:
        """The text without the credential secret or the token in it."""
        return self._scrub(text)

    def _endpoint(self, service_type: str) -> str:
        if self._token is None:
            self._authenticate()
        want = (self.settings.interface, self.settings.region)
        for service in self._catalog:
            if not isinstance(service, dict) or service.get("type") != service_type:
                continue
            for endpoint in service.get("endpoints") or []:
                if not isinstance(endpoint, dict):
                    continue
                region = endpoint.get("region_id") or endpoint.get("region")
                if (endpoint.get("interface"), region) == want and endpoint.get("url"):
                    return str(endpoint["url"]).rstrip("/")
        raise CloudError(
            f"keystone catalog: no {service_type} endpoint for interface"
            f" {self.settings.interface!r} in region {self.settings.region!r}"
        )

    def _call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (),
        redirect: bool = False,
    ) -> Response:
        """One authenticated call to Heat or Nova; a 401 gets a new token and one retry."""
        kind = "orchestration" if service == "heat" else "compute"
        name = f"{'heat' if service == 'heat' else 'nova'} {what} ({method} {path})"
        if self._token is None or time.time() > self._token_expires - TOKEN_MARGIN:
            self._authenticate()
        accepted = (*ok, *((301, 302, 303, 307, 308) if redirect else ()))
        for attempt in (1, 2):
            url = self._endpoint(kind) + path
            headers = {"X-Auth-Token": self._token or "", "Accept": "application/json"}
            response = self._send(name, method, url, headers, json, params, ok=(*accepted, 401))
            if response.status_code != 401:
                return response
            if attempt == 1:
                log.info("%s: 401, authenticating again", name)
                self._authenticate()
        raise CloudError(f"{name}: HTTP 401 even with a new token: {_excerpt(response, self)}")

    def _send(
        self,
        name: str,
        method: str,
        url: str,
        headers: dict[str, str],
        json: Any,
        params: dict[str, str] | None,
        *,
        ok: tuple[int, ...] = (),
        timeout: float | None = None,
    ) -> Response:
        """The HTTP call itself: timeout, no redirects followed, errors as CloudError."""
        seconds = timeout or self.timeout
        try:
            response = self.http.request(
                method,
                url,
                headers=headers,
                json=json,
                params=params,
                timeout=seconds,
                verify=(self.settings.cacert or True) if self.settings.verify_tls else False,
            )
        except HttpTimeout:
            raise CloudError(f"{name}: timed out after {seconds}s") from None
        except HttpError as error:
            # no query strings: a pre-signed webhook URL carries its signature there
            reason = re.sub(r"\?[^\s'\")]*", "?...", str(error))
            raise CloudError(self._scrub(f"{name}: {reason}")) from None
        log.debug("%s -> HTTP %s", name, response.status_code)
        if 200 <= response.status_code < 300 or response.status_code in ok:
            return response
        raise CloudError(f"{name}: HTTP {response.status_code}: {_excerpt(response, self)}")

    def _scrub(self, text: str) -> str:
        """The text without the credential secret or the token in it."""
        for secret in (self.settings.application_credential_secret.get_secret_value(), self._token):
            if secret:
                text = text.replace(secret, "***")
        return text


def _excerpt(response: Response, group: OpenStackGroup) -> str:
    text = " ".join(response.text.split())[:300]
    return group._scrub(text) or "(empty body)"


def _body(response: Response, name: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise CloudError(f"{name}: the answer is not JSON: {response.text[:100]!r}") from None
    if not isinstance(body, dict):
        raise CloudError(f"{name}: the answer is not a JSON object")
    return body


@dataclass(frozen=True)
class _GroupMember:
    """A member of the group as Heat lists it: its resource and its server."""

    name: str
    server_id: str
    status: str
    """Heat's status of the member, or of its server while the member stack is not failed."""
    created: object
    """The member resource's `creation_time`."""
    booted: object = None
    """The server resource's `creation_time` (a member stack's server); None: the member's."""
    waiting: bool = False
    """The member stack's wait condition waits (`INIT_COMPLETE`, `*_IN_PROGRESS`)."""


def _stack_link(row: dict[str, Any]) -> tuple[str | None, str | None]:
    """(`/stacks/{name}/{id}`, id) of the stack a listed resource is in, from its `stack`
    link; (None, None) without one."""
    for link in row.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "stack":
            path = urlsplit(str(link.get("href", ""))).path
            if "/stacks/" in path:
                tail = path.rsplit("/stacks/", 1)[1].strip("/").split("/")
                if len(tail) >= 2:
                    return f"/stacks/{tail[0]}/{tail[1]}", tail[1]
    return None, None


def _stack_path(stack: dict[str, Any]) -> str:
    return f"/stacks/{quote(str(stack['stack_name']), safe='')}/{quote(str(stack['id']), safe='')}"


def _same_origin(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _fixed_ipv4(server: dict[str, Any]) -> str | None:
    """The first fixed IPv4 of the server's `addresses` (floating ones are not the node's)."""
    addresses = server.get("addresses")
    for entries in (addresses or {}).values() if isinstance(addresses, dict) else []:
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("version") != 4:
                continue
            if entry.get("OS-EXT-IPS:type", "fixed") == "fixed" and entry.get("addr"):
                return str(entry["addr"])
    return None


_NOVA_BUILDING = {"BUILD", "REBUILD", "REBOOT", "HARD_REBOOT"}
"""Nova is building, rebuilding or rebooting the server: it is booting, not dead."""
_NOVA_GONE = {"DELETED", "SOFT_DELETED", "SHELVED_OFFLOADED"}


def _status(heat_status: str, server: dict[str, Any] | None) -> CloudStatus:
    nova = str((server or {}).get("status", "")).upper()
    if heat_status.endswith("_FAILED") or nova == "ERROR":
        return "FAILED"
    if heat_status.startswith("DELETE_") or server is None or nova in _NOVA_GONE:
        return "DELETED"
    if heat_status in ("INIT_COMPLETE", "CREATE_IN_PROGRESS") or nova in _NOVA_BUILDING:
        return "BUILD"
    return "ACTIVE"


def _unix_time(value: object) -> float:
    """Heat's `creation_time` / Keystone's `expires_at` (ISO 8601, UTC if no zone)."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise CloudError(f"not an ISO 8601 time: {str(value)[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
