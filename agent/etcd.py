"""etcd v3 access for the agent, over etcd's HTTP gateway (JSON).

The gateway's JSON (https://etcd.io/docs/v3.5/dev-guide/api_grpc_gateway/): keys and
values are base64, 64-bit integers are strings, and fields holding their default value
(false, 0, "", []) are left out of answers. Every call is a POST to `<endpoint>/v3/<rpc>`
(rpc.proto: services KV, Lease, Cluster, Maintenance). No etcd client library: the ones on
PyPI either need gRPC or (etcd3gw) pull in futurist and eventlet, ~30 MiB of the agent's
resident memory for a session and a URL join.

Rules this module keeps (see DESIGN.md, "etcd facts"):
- `members()` does a linearizable read first and asks the member list from the same
  endpoint: etcd 3.4 answers the member list from the member's local view, so a member
  cut off from the quorum would otherwise answer a stale list.
- Locks are a transaction (create_revision == 0, put with a lease), never `/v3/lock`;
  the key's create revision is the fencing token.
- A removal is never sent to the member being removed.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from agent.httpclient import Http, HttpError, Response
from agent.settings import TlsFiles
from agent.snapshot import LockInfo, Member, PeerReading

log = logging.getLogger(__name__)

T = TypeVar("T")

GRPC_UNAVAILABLE = 14
GRPC_RESOURCE_EXHAUSTED = 8
"""etcd's answer to a put or a lease grant while its NOSPACE alarm is raised ("etcdserver:
mvcc: database space exceeded"; HTTP 429 through the gateway)."""


class EtcdError(RuntimeError):
    """An etcd call failed: no endpoint answered, or etcd answered with an error."""

    def __init__(
        self,
        call: str,
        endpoint: str,
        detail: str,
        *,
        status: int | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(f"etcd {call} at {endpoint}: {detail}")
        self.call = call
        self.endpoint = endpoint
        self.detail = detail
        self.status = status
        """HTTP status of etcd's answer; None when no answer came."""
        self.code = code
        """gRPC status code etcd gave (14 = unavailable); None when no answer came."""

    @property
    def unavailable(self) -> bool:
        """etcd answered but could not serve now (no leader, leader changed, a timeout
        inside etcd): another endpoint, or the same one a moment later, may."""
        return self.code == GRPC_UNAVAILABLE or (self.status or 0) >= 500

    @property
    def no_space(self) -> bool:
        """etcd refused a write because its backend reached the quota (the NOSPACE alarm):
        reads, deletes and maintenance still work; agent/upkeep.py clears it."""
        return self.code == GRPC_RESOURCE_EXHAUSTED or "space exceeded" in self.detail


class LearnerNotReady(EtcdError):
    """A learner cannot be promoted yet: it has not caught up with the leader. Retry."""


class UnhealthyCluster(EtcdError):
    """etcd refused a membership change to protect quorum (strict reconfig check):
    a member is down, or connected for less than 5 s. Retry later, or remove the dead one."""


class MemberNotFound(EtcdError):
    """No member with that id (already removed?)."""


class PeerUrlExists(EtcdError):
    """A member with that peer URL is already listed (an old entry of this node?)."""


class _NoAnswer(Exception):
    """Transport failure talking to one endpoint (try another)."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8")


def _prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (etcd's prefix rule)."""
    raw = bytearray(prefix.encode("utf-8"))
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return base64.b64encode(bytes(raw)).decode("ascii")
        raw.pop()
    return base64.b64encode(b"\0").decode("ascii")


def normalize_url(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{parts.port}"


def member_from_json(data: Mapping[str, Any]) -> Member:
    return Member(
        id=int(data["ID"]),
        name=data.get("name", ""),
        peer_urls=tuple(data.get("peerURLs", ())),
        client_urls=tuple(data.get("clientURLs", ())),
        is_learner=bool(data.get("isLearner", False)),
    )


class EtcdClient:
    """One etcd cluster, reached through any of its client endpoints (failover in order,
    starting with the last endpoint that answered)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 2.0,
        tls: TlsFiles | None = None,
        prefix: str = "/autoscale-etcd/default",
    ) -> None:
        self.timeout = timeout
        self.tls = tls
        self.prefix = prefix.rstrip("/")
        self._lock = threading.Lock()
        self._http = Http(verify=tls.ca_file, cert=(tls.cert_file, tls.key_file)) if tls else Http()
        self.endpoints: list[str] = []
        self._preferred = 0
        self.set_endpoints(endpoints)

    # -- plumbing ------------------------------------------------------------------------
    def set_endpoints(self, urls: Sequence[str]) -> None:
        cleaned = [url.rstrip("/") for url in urls if url]
        if not cleaned:
            raise ValueError("EtcdClient needs at least one endpoint URL")
        with self._lock:
            self.endpoints = list(dict.fromkeys(cleaned))
            self._preferred = 0

    def _post_to(
        self,
        endpoint: str,
        path: str,
        body: Mapping[str, Any],
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """POST to one endpoint. Raises _NoAnswer on a transport failure, EtcdError (or a
        subtype) when etcd answers with an error."""
        try:
            answer = self._http.post(
                f"{endpoint}/v3/{path}", json=body, timeout=timeout or self.timeout
            )
        except HttpError as error:
            raise _NoAnswer(str(error)) from error
        if answer.status_code == 200:
            try:
                return answer.json()
            except ValueError as error:
                raise EtcdError(path, endpoint, f"not JSON: {answer.text[:200]!r}") from error
        raise _error_from_answer(path, endpoint, answer)

    def _order(self, exclude: Callable[[str], bool] | None = None) -> list[str]:
        with self._lock:
            endpoints = list(self.endpoints)
            start = self._preferred % len(endpoints)
        ordered = endpoints[start:] + endpoints[:start]
        return [e for e in ordered if not (exclude and exclude(e))]

    def _prefer(self, endpoint: str) -> None:
        with self._lock:
            if endpoint in self.endpoints:
                self._preferred = self.endpoints.index(endpoint)

    def _on_any(
        self,
        call: str,
        action: Callable[[str], T],
        *,
        endpoints: Sequence[str] | None = None,
    ) -> T:
        """Run `action(endpoint)` on the first endpoint that answers. Fails over on
        transport errors and on etcd's "unavailable" answers (no leader, timeouts), not
        on other etcd errors."""
        candidates = list(endpoints) if endpoints is not None else self._order()
        failures: list[str] = []
        last_error: EtcdError | None = None
        for endpoint in candidates:
            try:
                result = action(endpoint)
            except _NoAnswer as error:
                failures.append(f"{endpoint}: {error}")
                continue
            except (UnhealthyCluster, LearnerNotReady, MemberNotFound, PeerUrlExists):
                raise
            except EtcdError as error:
                if error.unavailable:
                    failures.append(f"{endpoint}: {error.detail}")
                    last_error = error
                    continue
                raise
            self._prefer(endpoint)
            return result
        where = ",".join(candidates) or "(no endpoint)"
        detail = "; ".join(failures) or "no endpoint to try"
        raise EtcdError(
            call,
            where,
            f"no endpoint answered: {detail}",
            status=last_error.status if last_error else None,
            code=last_error.code if last_error else None,
        )

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._on_any(path, lambda endpoint: self._post_to(endpoint, path, body))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cluster -------------------------------------------------------------------------
    def _quorum_read(self, endpoint: str) -> dict[str, Any]:
        """A linearizable (non-serializable) read: answered only by a member connected to
        a leader with quorum."""
        return self._post_to(
            endpoint,
            "kv/range",
            {"key": _b64(self.prefix + "/quorum-check"), "count_only": True},
        )

    def _members_on(self, endpoint: str) -> tuple[list[Member], int | None]:
        self._quorum_read(endpoint)
        listed = self._post_to(endpoint, "cluster/member/list", {})
        status = self._post_to(endpoint, "maintenance/status", {})
        leader = int(status.get("leader", 0)) or None
        members = [member_from_json(m) for m in listed.get("members", [])]
        return members, leader

    def members(self, *, check_health: bool = True) -> list[Member]:
        """Every member (unstarted ones too), with leader/learner flags and, if asked, health.

        Healthy means: the member's own client URL answered GET /health with
        {"health": "true"} within the timeout (checked concurrently)."""
        members, leader = self._on_any("member list", self._members_on)
        members = [replace(m, healthy=None, is_leader=m.id == leader) for m in members]
        if not check_health:
            return members
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(members)))) as pool:
            health = list(pool.map(self.member_healthy, members))
        return [replace(m, healthy=ok) for m, ok in zip(members, health, strict=True)]

    def member_healthy(self, member: Member) -> bool:
        """GET <client URL>/health answers {"health": "true"} in time (etcd's health
        endpoint: a leader is known and a quorum read goes through)."""
        if not member.client_urls:
            return False
        return self.url_healthy(member.client_urls[0])

    def url_healthy(self, client_url: str) -> bool:
        """etcd's /health; when that says false (503) because of NOSPACE alone, whether a
        linearizable read on the member goes through all the same: NOSPACE is every
        member's at once, a member under it has a leader and serves reads, and it is not
        a dead one (agent/upkeep.py clears it). Any other reason (no leader, a timeout
        inside etcd, a CORRUPT alarm) stays unhealthy. `/health?exclude=NOSPACE` would say
        it in one call, but etcd 3.5.1 still answers false once more than one member raised
        the alarm, as they do."""
        url = client_url.rstrip("/")
        try:
            answer = self._http.get(url + "/health", timeout=self.timeout)
            if answer.status_code == 200 and answer.json().get("health") == "true":
                return True
        except (HttpError, ValueError, AttributeError):
            return False
        if answer.status_code != 503:
            return False
        try:
            raised = {alarm for _, alarm in self.alarms(url)}
            if raised != {"NOSPACE"}:
                return False
            self._quorum_read(url)
        except (_NoAnswer, EtcdError):
            return False
        return True

    def versions(self, client_url: str) -> tuple[str, str] | None:
        """etcd's `GET /version` of one member: (its server version, the cluster version
        it reports); None when it does not answer."""
        try:
            answer = self._http.get(client_url.rstrip("/") + "/version", timeout=self.timeout)
            body = answer.json() if answer.status_code == 200 else None
        except (HttpError, ValueError):
            return None
        if not isinstance(body, dict):
            return None
        return str(body.get("etcdserver")), str(body.get("etcdcluster"))

    def status(self, endpoint: str | None = None) -> dict[str, Any]:
        """POST /v3/maintenance/status (of one endpoint, or the first that answers)."""
        if endpoint is not None:
            return self._on_any(
                "status", lambda e: self._post_to(e, "maintenance/status", {}), endpoints=[endpoint]
            )
        return self._post("maintenance/status", {})

    def alarms(self, endpoint: str | None = None) -> list[tuple[int, str]]:
        """The cluster's raised alarms: (member id, "NOSPACE" or "CORRUPT"), as one
        endpoint or the first that answers lists them."""
        body = {"action": "GET"}
        answer = (
            self._post("maintenance/alarm", body)
            if endpoint is None
            else self._post_to(endpoint, "maintenance/alarm", body)
        )
        return [
            (int(a.get("memberID", 0)), str(a.get("alarm", "NONE")))
            for a in answer.get("alarms", [])
        ]

    def disarm(self, member_id: int, alarm: str) -> None:
        """Deactivate one alarm (etcd matches the member id and the alarm exactly)."""
        self._post(
            "maintenance/alarm",
            {"action": "DEACTIVATE", "memberID": str(member_id), "alarm": alarm},
        )

    def disarm_all(self, alarm: str, rounds: int = 3) -> int:
        """Deactivate every `alarm` listed, listing again until none is (each member raises
        its own NOSPACE; one may land after the list). Returns how many were disarmed."""
        count = 0
        for _ in range(rounds):
            raised = [(m, a) for m, a in self.alarms() if a == alarm]
            if not raised:
                break
            for member_id, name in raised:
                self.disarm(member_id, name)
                count += 1
        return count

    def compact(self, revision: int) -> bool:
        """Compact the key space's history up to `revision`, physically (etcd answers once
        the backend dropped it). False when that revision was compacted already."""
        try:
            self._post("kv/compaction", {"revision": str(revision), "physical": True})
        except EtcdError as error:
            if "has been compacted" in error.detail:
                return False
            raise
        return True

    def defragment(self, client_url: str, timeout: float) -> None:
        """Defragment one member's backend (etcd does it on the member asked only; that
        member serves nothing until it is done, hence its own timeout)."""
        url = client_url.rstrip("/")
        self._on_any(
            "defragment",
            lambda e: self._post_to(e, "maintenance/defragment", {}, timeout=timeout),
            endpoints=[url],
        )

    def snapshot(self, client_url: str, out: BinaryIO, timeout: float) -> int:
        """Maintenance "Snapshot" from one member into `out`: the gateway streams one JSON
        object a line, each a base64 `blob`; etcd (3.4 and 3.5) ends the stream with the
        sha256 of what it sent before (kept in the file: `etcdutl snapshot restore` checks it).
        Returns the bytes written. `timeout`: for each read, not the whole stream."""
        url = f"{client_url.rstrip('/')}/v3/maintenance/snapshot"
        written = 0
        try:
            with self._http.stream("POST", url, json={}, timeout=timeout) as answer:
                if answer.status != 200:
                    body = answer.read()
                    raise EtcdError(
                        "maintenance/snapshot", client_url, f"HTTP {answer.status}: {body[:200]!r}"
                    )
                for line in answer:
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise EtcdError(
                            "maintenance/snapshot", client_url, str(message["error"])[:300]
                        )
                    blob = base64.b64decode(message.get("result", {}).get("blob", ""))
                    out.write(blob)
                    written += len(blob)
        except HttpError as error:
            raise EtcdError("maintenance/snapshot", client_url, str(error)) from error
        except ValueError as error:
            raise EtcdError("maintenance/snapshot", client_url, f"not JSON: {error}") from error
        return written

    def leader_id(self) -> int | None:
        return int(self.status().get("leader", 0)) or None

    def move_leader(self, leader_url: str, target_id: int) -> None:
        """Maintenance "MoveLeader": the leader (it must be asked itself) hands leadership
        to `target_id`, a started voter; etcd answers once the transfer took or failed."""
        self._on_any(
            "move leader",
            lambda e: self._post_to(
                e, "maintenance/transfer-leadership", {"targetID": str(target_id)}
            ),
            endpoints=[leader_url.rstrip("/")],
        )

    def cluster_id(self) -> str:
        """The cluster id as etcd logs it (hex)."""
        header = self.status().get("header", {})
        return format(int(header.get("cluster_id", 0)), "x")

    def add_member(self, peer_urls: Sequence[str], *, learner: bool) -> tuple[Member, list[Member]]:
        """`member add`: the new member (unstarted) and the member list after the add.
        Raises UnhealthyCluster while etcd refuses (a dead member listed, or a member
        connected for less than 5 s), PeerUrlExists when the URL is already listed."""
        body: dict[str, Any] = {"peerURLs": list(peer_urls)}
        if learner:
            body["isLearner"] = True
        tried: list[str] = []

        def add(endpoint: str) -> dict[str, Any]:
            tried.append(endpoint)
            try:
                return self._post_to(endpoint, "cluster/member/add", body)
            except PeerUrlExists:
                if len(tried) == 1:
                    raise
                # an earlier attempt may have been applied before its answer was lost
                found = self._find_by_peer_urls(endpoint, peer_urls)
                if found is None:
                    raise
                return found

        answer = self._on_any("member add", add)
        member = member_from_json(answer["member"])
        return member, [member_from_json(m) for m in answer.get("members", [])]

    def _find_by_peer_urls(self, endpoint: str, peer_urls: Sequence[str]) -> dict[str, Any] | None:
        listed = self._post_to(endpoint, "cluster/member/list", {}).get("members", [])
        wanted = {normalize_url(u) for u in peer_urls}
        for m in listed:
            if {normalize_url(u) for u in m.get("peerURLs", [])} == wanted:
                return {"member": m, "members": listed}
        return None

    def promote_member(self, member_id: int) -> None:
        """Make a learner a voter. Raises LearnerNotReady until it has caught up."""
        self._post("cluster/member/promote", {"ID": str(member_id)})

    def remove_member(self, member_id: int) -> None:
        """Remove a member, sending the request to another member, never to the one being
        removed (a member that removes itself may stop before it answers)."""
        listed = self._on_any(
            "member list", lambda e: self._post_to(e, "cluster/member/list", {})
        ).get("members", [])
        target = next((m for m in listed if int(m["ID"]) == member_id), None)
        if target is None:
            raise MemberNotFound(
                "member remove", ",".join(self.endpoints), f"no member {member_id:x}"
            )
        theirs = {normalize_url(u) for u in target.get("clientURLs", [])}
        candidates = self._order(exclude=lambda e: normalize_url(e) in theirs)
        # endpoints we were not given, but other members listed: still not the target
        for m in listed:
            if int(m["ID"]) != member_id and not m.get("isLearner"):
                for url in m.get("clientURLs", []):
                    if url.rstrip("/") not in candidates and normalize_url(url) not in theirs:
                        candidates.append(url.rstrip("/"))
        attempts: list[str] = []

        def remove(endpoint: str) -> None:
            attempts.append(endpoint)
            try:
                self._post_to(endpoint, "cluster/member/remove", {"ID": str(member_id)})
            except MemberNotFound:
                if len(attempts) == 1:
                    raise
                # an earlier attempt was applied but its answer lost: it is gone, as asked

        self._on_any("member remove", remove, endpoints=candidates)
        log.info("removed etcd member %x (%s)", member_id, target.get("name", ""))

    # -- keys ----------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        kvs = self._post("kv/range", {"key": _b64(key)}).get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        answer = self._post("kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return {_unb64(kv["key"]): _unb64(kv.get("value", "")) for kv in answer.get("kvs", [])}

    def put(self, key: str, value: str, lease: int | None = None) -> int:
        """Put a key; the store's revision after the put."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self._post("kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> None:
        self._post("kv/deleterange", {"key": _b64(key)})

    def grant_lease(self, ttl: float) -> int:
        """A new lease of `ttl` seconds (etcd counts whole seconds: rounded up)."""
        answer = self._post("lease/grant", {"TTL": str(max(1, math.ceil(ttl)))})
        if answer.get("error"):
            raise EtcdError("lease/grant", ",".join(self.endpoints), answer["error"])
        return int(answer["ID"])

    def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease (its keys are deleted); an expired lease is fine."""
        try:
            self._post("lease/revoke", {"ID": str(lease_id)})
        except EtcdError as error:
            if "lease not found" not in error.detail:
                raise

    def leases_under(self, prefix: str) -> list[int]:
        """The leases the keys under `prefix` are attached to."""
        answer = self._post(
            "kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix), "keys_only": True}
        )
        return sorted({int(kv["lease"]) for kv in answer.get("kvs", []) if int(kv.get("lease", 0))})

    def txn(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._post("kv/txn", body)

    def key(self, name: str) -> str:
        """`name` under this cluster's prefix (every key the agents keep is one)."""
        return f"{self.prefix}/{name}"

    # -- locks ---------------------------------------------------------------------------
    def lock_key(self, name: str) -> str:
        return self.key(f"locks/{name}")

    def acquire_lock(self, name: str, holder: str, ttl: float) -> LockInfo | None:
        """Take lock `name` for `ttl` seconds if nobody holds it; None if held.

        One transaction: if the key does not exist (create_revision == 0), put `holder`
        on it with a fresh lease. The key's create revision is the fencing token."""
        key = self.lock_key(name)
        lease_id = self.grant_lease(ttl)
        range_key = {"request_range": {"key": _b64(key)}}
        body = {
            "compare": [
                {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
            ],
            "success": [
                {"request_put": {"key": _b64(key), "value": _b64(holder), "lease": str(lease_id)}},
                range_key,
            ],
            "failure": [range_key],
        }
        try:
            answer = self.txn(body)
        except EtcdError:
            self._revoke_quietly(lease_id)
            raise
        kvs = _range_kvs(answer)
        ours = bool(kvs) and int(kvs[0].get("lease", 0)) == lease_id
        # `succeeded` is left out when false; a retried txn whose first try was applied
        # fails the compare but finds our own lease on the key: the lock is ours
        if answer.get("succeeded", False) or ours:
            if not kvs:
                raise EtcdError("lock", ",".join(self.endpoints), f"{key} vanished after put")
            return LockInfo(
                name=name,
                key=key,
                lease_id=lease_id,
                revision=int(kvs[0]["create_revision"]),
                holder=holder,
            )
        self._revoke_quietly(lease_id)
        return None

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self.revoke_lease(lease_id)
        except EtcdError as error:
            log.warning("could not revoke unused lease %x: %s", lease_id, error)

    def lock_holder(self, name: str) -> str | None:
        return self.get(self.lock_key(name))

    def release_lock(self, lock: LockInfo) -> None:
        self.revoke_lease(lock.lease_id)

    def lock_held(self, lock: LockInfo) -> bool:
        """The lock's key still exists with the create revision we got (not expired)."""
        kvs = self._post("kv/range", {"key": _b64(lock.key)}).get("kvs", [])
        return bool(kvs) and int(kvs[0].get("create_revision", 0)) == lock.revision

    # -- fenced removal ------------------------------------------------------------------
    def removal_key(self, member_id: int) -> str:
        return self.key(f"removals/{member_id:x}")

    @property
    def last_removal_key(self) -> str:
        return self.key("last-removal")

    def fenced_remove(self, lock: LockInfo, member_id: int, record: Mapping[str, Any]) -> bool:
        """Remove a member only while `lock` is still held.

        A transaction compares the lock key's create revision with the lock's (the key is
        gone once the lease expired, and has another create revision if someone else took
        the lock since); only if it holds does it record the removal (under
        `<prefix>/removals/<member hex>` and `<prefix>/last-removal`), and only then is the
        member removed. False: the fence failed, nothing was recorded or removed. If etcd
        then refuses the removal (e.g. "unhealthy cluster" in the 5 s after a member
        connected), the record is taken back and the error raised."""
        text = json.dumps(dict(record), sort_keys=True)
        body = {
            "compare": [
                {
                    "key": _b64(lock.key),
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": str(lock.revision),
                }
            ],
            "success": [
                {"request_put": {"key": _b64(self.removal_key(member_id)), "value": _b64(text)}},
                {"request_put": {"key": _b64(self.last_removal_key), "value": _b64(text)}},
            ],
            "failure": [],
        }
        if not self.txn(body).get("succeeded", False):
            log.warning("fenced removal of %x refused: lock %s no longer held", member_id, lock.key)
            return False
        try:
            self.remove_member(member_id)
        except EtcdError:
            self._take_back(member_id, text)
            raise
        return True

    def _take_back(self, member_id: int, text: str) -> None:
        """Delete the removal record of a removal etcd refused (if it is still ours)."""
        for key in (self.removal_key(member_id), self.last_removal_key):
            try:
                self.txn(
                    {
                        "compare": [
                            {
                                "key": _b64(key),
                                "target": "VALUE",
                                "result": "EQUAL",
                                "value": _b64(text),
                            }
                        ],
                        "success": [{"request_delete_range": {"key": _b64(key)}}],
                        "failure": [],
                    }
                )
            except EtcdError as error:
                log.warning("could not take back the removal record %s: %s", key, error)

    # -- the members' metric readings ----------------------------------------------------
    def reading_key(self, name: str) -> str:
        return self.key(f"metrics/{name}")

    def publish_reading(self, reading: PeerReading, ttl: float) -> None:
        """Put this node's reading under a fresh lease of `ttl` seconds: a node that stops
        publishing (dead, cut off) has no reading once the lease runs out."""
        lease = self.grant_lease(ttl)
        text = json.dumps({"value": reading.value, "time": reading.time}, sort_keys=True)
        self.put(self.reading_key(reading.name), text, lease=lease)

    def readings(self) -> dict[str, PeerReading]:
        """Every published reading, by node name."""
        prefix = self.key("metrics/")
        found: dict[str, PeerReading] = {}
        for key, text in self.get_prefix(prefix).items():
            try:
                data = json.loads(text)
                value, moment = float(data["value"]), float(data["time"])
            except (ValueError, KeyError, TypeError):
                continue
            if math.isfinite(value):
                name = key[len(prefix) :]
                found[name] = PeerReading(name, value, moment)
        return found

    def removal_records(self) -> list[dict[str, Any]]:
        """Every fenced removal's record (member name, reason, time, via), oldest first."""
        found = self.get_prefix(self.key("removals/"))
        records = []
        for text in found.values():
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return sorted(records, key=lambda r: float(r.get("time") or 0))

    def last_removal(self) -> dict[str, Any] | None:
        text = self.get(self.last_removal_key)
        return json.loads(text) if text else None


def _range_kvs(txn_answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    for response in txn_answer.get("responses", []):
        if "response_range" in response:
            return response["response_range"].get("kvs", [])
    return []


def _error_from_answer(path: str, endpoint: str, answer: Response) -> EtcdError:
    """etcd's gateway error body: {"error": ..., "message": ..., "code": <gRPC code>}."""
    try:
        data = answer.json()
        message = str(data.get("message") or data.get("error") or answer.text)
        code = data.get("code")
    except ValueError:
        message, code = answer.text.strip()[:300], None
    kind: type[EtcdError] = EtcdError
    lowered = message.lower()
    if "in sync with leader" in lowered or "learner member which is in sync" in lowered:
        kind = LearnerNotReady
    elif "unhealthy cluster" in lowered or "not enough started members" in lowered:
        kind = UnhealthyCluster
    elif "member not found" in lowered:
        kind = MemberNotFound
    elif "peer urls already exists" in lowered or "member id already exist" in lowered:
        # the second: the same peer URLs added again within one second (same derived id)
        kind = PeerUrlExists
    return kind(
        path,
        endpoint,
        f"{message} (HTTP {answer.status_code})",
        status=answer.status_code,
        code=int(code) if isinstance(code, int | str) and str(code).isdigit() else None,
    )
