#!/usr/bin/env python3
"""Fetch the agents' settings and bundle from this node's Heat stack and install them;
standard library only.

cloud-init runs it once, at first boot, before it starts the agent:

    fetch-agent.py --config /etc/autoscale-etcd/agent.json \
        --settings-resource agent_settings --resource agent_bundle \
        --out /var/lib/autoscale-etcd/agent.pyz

1. Keystone v3 "Authenticating with an application credential" (`POST /v3/auth/tokens`)
   with the `cloud` part of the agent settings file (auth_url, the credential, region,
   interface, verify_tls); the token is the `X-Subject-Token` header and Heat is the
   catalog's `orchestration` endpoint at that interface and region.
   https://docs.openstack.org/api-ref/identity/v3/#authenticating-with-an-application-credential
2. Heat "Show resource metadata": `GET {heat}/stacks/{name}/{id}/resources/{resource}/metadata`
   of the settings resource answers the settings document `{"sha256", "bundle_sha256",
   "roles": {role: settings}}` (infra/heat.py, SettingsDocument); its sha256 must be that
   of its canonical JSON without it (agent/settings.py, document_sha256), and it must
   hold the settings of the node's role (the settings file's `role`).
3. The same call on the bundle resource answers `{"metadata": {"sha256", "size",
   "encoding": "gzip+base64", "content"}}` (infra/heat.py, AgentBundle); the decoded
   bundle's sha256 must be the document's `bundle_sha256`: a node never runs another
   bundle. Nothing is written otherwise.
   https://docs.openstack.org/api-ref/orchestration/v1/
4. The bundle is written next to its target and renamed over it (mode 0755), so it
   replaces any older copy (an image's) and is never seen half-written; then the
   settings file is replaced the same way (mode 0600) by the document's settings for the
   role with the file's own `cloud`.

With `--ready FILE` (members; FILE holds the stack's agents_ready wait-condition handle,
`{"url", "token"}`: its `endpoint` and stack-user `token` attributes) the fetch also
reports to that wait condition, so `pulumi up` sees a node that cannot work:

5. once installed, while the wait condition has not ended (INIT_COMPLETE or
   CREATE_IN_PROGRESS: a node made later reports nothing), the calls the agent makes
   beyond this one are tried: Nova "Show server
   details" of a server id that exists nowhere (`GET {nova}/servers/<nil uuid>`: 404 when
   the credential's access rules let the call through, keystonemiddleware's 401 when not),
   then the handle's signal with the credential's own token
   (`POST {heat}/stacks/{name}/{id}/resources/{handle}/signal`, body `{"status":
   "SUCCESS", "reason", "data", "id"}`), the call the agent makes to scaling policies;
6. when Keystone or a service refuses the credential (HTTP 401 or 403) three times in a
   row, or step 5 is refused, the handle is signalled FAILURE once with the stack user's
   token (a token that may signal this handle only), the reason naming the refused call:
   the wait condition fails and the stack with it. Other failures are retried as before:
   a slow or broken cloud is not the credential's fault.

Any failure (network, HTTP status, a bundle that is not the named one) is retried with
exponential backoff until `--deadline` seconds have passed. Redirects are not followed
(the token goes nowhere else). The credential secret and the token never reach the output.
Exit status: 0 installed, 1 gave up, 2 bad arguments or settings file.

It cannot import the agent (it is what fetches it); agent/cloud_openstack.py makes the
same Keystone call with its own client (agent/httpclient.py).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gzip
import hashlib
import json
import os
import random
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

MAX_DELAY = 60.0


NIL_SERVER = "00000000-0000-0000-0000-000000000000"
REFUSALS_BEFORE_FAILURE = 3


class Failure(Exception):
    """One attempt failed; worth another. `status`: the HTTP status, if there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def refused(self) -> bool:
        """Keystone or a service refused the credential (or the token it gave)."""
        return self.status in (401, 403)


class BadSettings(Exception):
    """The settings file or the arguments are wrong; no retry helps."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def log(message: str) -> None:
    print(f"fetch-agent: {message}", file=sys.stderr, flush=True)


def read_cloud(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            whole = json.load(handle)
        cloud = whole["cloud"]
        role = whole.get("role", "member")
        wanted = ("auth_url", "application_credential_id", "application_credential_secret")
        missing = [key for key in (*wanted, "stack_id") if not cloud.get(key)]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BadSettings(f"{path}: no usable cloud settings ({type(error).__name__})") from None
    if cloud.get("kind", "openstack") != "openstack" or missing:
        raise BadSettings(f"{path}: not OpenStack settings, or missing {', '.join(missing)}")
    if "/" not in cloud["stack_id"].strip("/"):
        raise BadSettings(f"{path}: stack_id must be 'name/id', got {cloud['stack_id']!r}")
    if role not in ("member", "proxy"):
        raise BadSettings(f"{path}: role must be member or proxy, got {role!r}")
    return {**cloud, "_role": role}


class Client:
    def __init__(self, cloud: dict[str, Any], timeout: float) -> None:
        self.cloud = cloud
        self.timeout = timeout
        self.secrets = [cloud["application_credential_secret"]]
        self.services: tuple[str, ...] = ("orchestration",)
        self.session: tuple[str, dict[str, str]] | None = None
        context = ssl.create_default_context(cafile=cloud.get("cacert") or None)
        if cloud.get("verify_tls") is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.opener = urllib.request.build_opener(
            _NoRedirect, urllib.request.HTTPSHandler(context=context)
        )

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def call(
        self, what: str, url: str, body: Any = None, token: str | None = None
    ) -> tuple[Any, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["X-Auth-Token"] = token
        request = urllib.request.Request(url, data=data, headers=headers)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
                return response.headers, json.loads(raw) if raw.strip() else None
        except urllib.error.HTTPError as error:
            try:
                excerpt = " ".join(error.read(300).decode("utf-8", "replace").split())
            except OSError:
                excerpt = ""
            message = self.scrub(f"{what}: HTTP {error.code} {excerpt}".rstrip())
            raise Failure(message, error.code) from None
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise Failure(self.scrub(f"{what}: {type(error).__name__}: {reason}")) from None

    def authenticate(self) -> tuple[str, str]:
        """A token and Heat's endpoint (Keystone v3, application credential); the token
        and the endpoints of `services` are kept in `session` for the calls after."""
        self.session = self.authenticate_for(*self.services)
        token, endpoints = self.session
        return token, endpoints["orchestration"]

    def authenticate_for(self, *services: str) -> tuple[str, dict[str, str]]:
        """A token and the catalog's endpoints of `services` at this interface and region."""
        base = self.cloud["auth_url"].rstrip("/")
        url = (base if base.endswith("/v3") else base + "/v3") + "/auth/tokens"
        credential = {
            "id": self.cloud["application_credential_id"],
            "secret": self.cloud["application_credential_secret"],
        }
        body = {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": credential,
                }
            }
        }
        headers, answer = self.call("keystone POST /v3/auth/tokens", url, body=body)
        token = headers.get("X-Subject-Token")
        catalog = (answer.get("token") or {}).get("catalog") if isinstance(answer, dict) else None
        if not token or not isinstance(catalog, list):
            raise Failure("keystone POST /v3/auth/tokens: no X-Subject-Token or no catalog")
        self.secrets.append(token)
        want = (self.cloud.get("interface", "public"), self.cloud.get("region", "RegionOne"))
        found: dict[str, str] = {}
        for service in catalog:
            if not isinstance(service, dict) or service.get("type") not in services:
                continue
            for endpoint in service.get("endpoints") or []:
                if not isinstance(endpoint, dict):
                    continue
                region = endpoint.get("region_id") or endpoint.get("region")
                if (endpoint.get("interface"), region) == want and endpoint.get("url"):
                    found[service["type"]] = endpoint["url"].rstrip("/")
        for kind in services:
            if kind not in found:
                raise Failure(f"keystone catalog: no {kind} endpoint for {want[0]} in {want[1]}")
        return token, found

    def metadata(self, resource: str) -> dict[str, Any]:
        """Heat "Show resource metadata" of `resource` in this node's stack."""
        if self.session is None:
            self.authenticate()
        assert self.session is not None
        token, heat = self.session[0], self.session[1]["orchestration"]
        name, stack_id = self.cloud["stack_id"].strip("/").split("/", 1)
        path = "/".join(quote(part, safe="") for part in (name, stack_id, "resources", resource))
        what = f"heat show resource metadata ({resource})"
        _, answer = self.call(what, f"{heat}/stacks/{path}/metadata", token=token)
        metadata = answer.get("metadata") if isinstance(answer, dict) else None
        if not isinstance(metadata, dict):
            raise Failure(f"{what}: no metadata object in the answer")
        return metadata


class Ready:
    """The stack's agents_ready wait condition, as this node reports to it."""

    def __init__(self, path: str, client: Client) -> None:
        self.client = client
        self.failed = False
        try:
            with open(path, encoding="utf-8") as handle:
                ready = json.load(handle)
            self.url, self.token = str(ready["url"]), str(ready["token"])
            self.condition = str(ready["condition"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            message = f"{path}: no wait-condition handle ({type(error).__name__})"
            raise BadSettings(message) from None
        client.secrets.append(self.token)
        client.services = ("orchestration", "compute")
        marker = "/resources/"
        if marker not in self.url or not self.url.endswith("/signal"):
            raise BadSettings(f"{path}: {self.url!r} is not a resource's signal URL")
        self.handle = self.url[self.url.rindex(marker) + len(marker) : -len("/signal")]
        self.id = socket.gethostname() or "node"

    def body(self, status: str, reason: str) -> dict[str, Any]:
        return {"status": status, "reason": reason[:400], "data": None, "id": self.id}

    def check_and_succeed(self) -> bool:
        """Step 5: while the wait condition has not ended (a node made later adds nothing
        to its handle's metadata), the agent's other calls, then SUCCESS with the
        credential's own token. True if signalled."""
        if self.client.session is None:
            self.client.authenticate()
        assert self.client.session is not None
        token, endpoints = self.client.session
        name, stack_id = self.client.cloud["stack_id"].strip("/").split("/", 1)

        def resource(name_of: str) -> str:
            parts = (name, stack_id, "resources", name_of)
            return f"{endpoints['orchestration']}/stacks/" + "/".join(
                quote(part, safe="") for part in parts
            )

        _, shown = self.client.call(
            f"heat show resource ({self.condition})", resource(self.condition), token=token
        )
        shown = shown.get("resource") if isinstance(shown, dict) else None
        status = shown.get("resource_status", "") if isinstance(shown, dict) else ""
        # INIT_COMPLETE: the group is still being made and the condition not yet waiting;
        # the handle keeps the signal for it
        if status not in ("INIT_COMPLETE", "CREATE_IN_PROGRESS"):
            log(f"the stack's {self.condition} is {status}: nothing to report")
            return False
        try:
            self.client.call(
                "nova GET /servers/<nil uuid>",
                f"{endpoints['compute']}/servers/{NIL_SERVER}",
                token=token,
            )
        except Failure as error:
            if error.status != 404:
                raise
        reason = f"{self.id}: the agent is installed; Keystone, Heat and Nova take its credential"
        self.client.call(
            f"heat POST signal ({self.handle})",
            resource(self.handle) + "/signal",
            body=self.body("SUCCESS", reason),
            token=token,
        )
        return True

    def fail(self, why: str) -> None:
        """Step 6: FAILURE, once, with the stack user's token."""
        if self.failed:
            return
        reason = f"{self.id}: the agents' credential is refused: {why}"
        try:
            self.client.call(
                "heat POST wait-condition signal",
                self.url,
                body=self.body("FAILURE", reason),
                token=self.token,
            )
        except Failure as error:
            log(f"could not report to the stack's wait condition: {error}")
            return
        self.failed = True
        log(f"reported to the stack: {reason}")


def document_sha256(document: dict[str, Any]) -> str:
    """agent/settings.py's document_sha256, which this script cannot import."""
    body = {k: v for k, v in document.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def role_settings(document: dict[str, Any], role: str) -> tuple[str, dict[str, Any]]:
    """(the bundle's sha256, the role's settings) of a whole, untouched document."""
    sha = document.get("sha256")
    if not isinstance(sha, str) or document_sha256(document) != sha:
        raise Failure("the stack's settings document does not match its sha256")
    bundle = document.get("bundle_sha256")
    settings = (document.get("roles") or {}).get(role)
    if not isinstance(bundle, str) or not isinstance(settings, dict):
        raise Failure(f"the stack's settings document has no bundle or no {role} settings")
    return bundle, settings


def write_settings(path: str, settings: dict[str, Any], cloud: dict[str, Any]) -> None:
    """The node's settings file: the document's settings with this file's `cloud`."""
    whole = {**settings, "cloud": {k: v for k, v in cloud.items() if not k.startswith("_")}}
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".agent-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(whole, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def unpack(metadata: dict[str, Any], sha256: str) -> bytes:
    """The bundle's bytes, only if their sha256 is `sha256`."""
    if metadata.get("encoding") != "gzip+base64" or not isinstance(metadata.get("content"), str):
        raise Failure("the stack's bundle is not gzip+base64 content")
    try:
        data = gzip.decompress(base64.b64decode(metadata["content"], validate=True))
    except (binascii.Error, OSError, EOFError) as error:
        raise Failure(f"the stack's bundle does not decode: {error}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise Failure(
            f"the stack's bundle has sha256 {actual}, its settings document names {sha256}:"
            " not installed"
        )
    return data


def install(data: bytes, out: str) -> None:
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".agent-", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o755)
        os.replace(temporary, out)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetch-agent.py")
    parser.add_argument("--config", required=True, help="the agent settings file (JSON)")
    parser.add_argument(
        "--settings-resource", default="agent_settings", help="the Heat resource of the settings"
    )
    parser.add_argument("--out", required=True, help="where the bundle goes")
    parser.add_argument("--resource", default="agent_bundle", help="the Heat resource")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds of retries")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--first-delay", type=float, default=2.0, help="first backoff, seconds")
    parser.add_argument("--ready", help="the stack's wait-condition handle (JSON: url, token)")
    args = parser.parse_args(argv)
    try:
        client = Client(read_cloud(args.config), args.timeout)
    except BadSettings as error:
        log(str(error))
        return 2
    ready = None
    try:
        ready = Ready(args.ready, client) if args.ready else None
    except BadSettings as error:  # the agent is still fetched: reporting is not worth a node
        log(f"{error}; nothing will be reported to the stack")
    deadline = time.monotonic() + args.deadline
    delay = args.first_delay
    attempt = 0
    refusals = 0
    installed = False
    while True:
        attempt += 1
        try:
            if not installed:
                document = client.metadata(args.settings_resource)
                bundle, settings = role_settings(document, client.cloud["_role"])
                data = unpack(client.metadata(args.resource), bundle)
                install(data, args.out)
                write_settings(args.config, settings, client.cloud)
                installed = True
                log(
                    f"installed {args.out}: {len(data)} bytes, sha256 {bundle}; settings"
                    f" {document['sha256'][:12]} in {args.config}"
                )
            if ready is None or ready.failed:
                return 0
            try:
                if ready.check_and_succeed():
                    log(f"reported to the stack: {ready.handle} SUCCESS")
            except Failure as error:
                if not error.refused:
                    raise
                ready.fail(str(error))
            return 0
        except Failure as error:
            client.session = None
            refusals = refusals + 1 if error.refused else 0
            if ready is not None and refusals >= REFUSALS_BEFORE_FAILURE:
                ready.fail(f"{error} ({refusals} times in a row)")
            left = deadline - time.monotonic()
            if left <= 0:
                log(f"attempt {attempt}: {error}; giving up after {args.deadline:g} s")
                return 0 if installed else 1
            wait = min(delay * random.uniform(0.5, 1.0), left)
            log(f"attempt {attempt}: {error}; again in {wait:.1f} s")
            time.sleep(wait)
            delay = min(delay * 2, MAX_DELAY)


if __name__ == "__main__":
    sys.exit(main())
