"""The lab's real Swift (lab/swift.py: Debian's Swift 2.30) with the lab's Keystone auth
(lab/swift_middleware/lab_authtoken.py), over real HTTP with tokens from the lab's Keystone.

The behaviours relied on, from the object-store API reference
(https://docs.openstack.org/api-ref/object-store/) and Swift's docs:

- create container (PUT: 201, 202 if it exists), create object (PUT with `ETag`: the MD5
  of the body; another one: 422 Unprocessable Entity), show object (GET), list a
  container (`?format=json`: name, bytes, hash per object), delete object (204);
- static large objects (https://docs.openstack.org/swift/latest/overview_large_objects.html,
  https://docs.openstack.org/swift/latest/middleware.html#module-swift.common.middleware.slo):
  the manifest (`?multipart-manifest=put`) is a JSON list of `path` (/container/object),
  `etag` and `size_bytes` per segment, each checked against the segment (a mismatch: 400);
  a GET of the manifest's object answers the segments' concatenation;
  `?multipart-manifest=get` the manifest itself, `?multipart-manifest=delete` deletes it
  and its segments;
- auth (https://docs.openstack.org/swift/latest/overview_auth.html#keystone-auth): no
  token or a token Keystone refuses, 401; a valid token on another project's account, 403;
  keystonemiddleware's access rules (lab/cloud/keystone.py), 401.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from lab.cloud.keystone import AccessRule, AppCredential, Endpoint
from lab.swift import SERVERS, SwiftServer
from lab.swift_middleware.lab_authtoken import path_matches, refusal
from tests.fake_openstack import PROJECT, FakeOpenStack
from tests.tools import need

BACKUPS = "etcd-backups-x"
"""The container the restricted credential's rules allow."""


@dataclass
class LabSwift:
    fake: FakeOpenStack
    swift: SwiftServer
    http: requests.Session

    def token(self, credential: AppCredential) -> str:
        """A token of `credential` from the lab's Keystone, over HTTP."""
        auth = {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": credential.id, "secret": credential.secret},
                }
            }
        }
        answer = self.http.post(f"{self.fake.url}/identity/v3/auth/tokens", json=auth, timeout=10)
        assert answer.status_code == 201, answer.text
        return answer.headers["X-Subject-Token"]

    def owner(self) -> dict[str, str]:
        """Headers with a token of an unrestricted credential of the account's project."""
        credential = self.fake.keystone.add_credential(f"owner-{uuid.uuid4().hex[:6]}")
        return {"X-Auth-Token": self.token(credential)}


@pytest.fixture(scope="module")
def lab_swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSwift]:
    """One Swift for the module (it takes seconds to start), against the lab's Keystone;
    at the end stopped, and its processes checked gone by their pids."""
    for name in SERVERS:
        need(f"swift-{name}-server")
    fake = FakeOpenStack()
    fake.start()
    workdir = tmp_path_factory.mktemp("swift")
    swift = SwiftServer(workdir, "127.0.0.1", f"{fake.url}/identity", PROJECT)
    http = requests.Session()
    http.trust_env = False  # never a proxy of the environment: everything is on loopback
    try:
        swift.start()
        # as a cloud's catalog has it: keystonemiddleware refuses a token with access rules
        # whose catalog lacks the proxy's service type
        fake.keystone.endpoints.append(
            Endpoint("object-store", "swift", "public", "RegionOne", swift.url)
        )
        yield LabSwift(fake, swift, http)
        pids = swift.pids
        assert sorted(pids) == sorted(SERVERS)
    finally:
        swift.stop()
        fake.stop()
        http.close()
    swift.stop()  # again: nothing left to do
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped by stop(): no such process, not even a zombie
        assert not (workdir / "run" / f"{name}.pid").exists()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.mark.swift
def test_objects_go_in_and_come_back_byte_for_byte(lab_swift: LabSwift):
    http, url, auth = lab_swift.http, lab_swift.swift.url, lab_swift.owner()
    container = f"c-{uuid.uuid4().hex[:8]}"
    assert http.put(f"{url}/{container}", headers=auth).status_code == 201
    assert http.put(f"{url}/{container}", headers=auth).status_code == 202  # it exists

    data = os.urandom(300_000)
    put = http.put(f"{url}/{container}/2026/x.db", data=data, headers={**auth, "ETag": md5(data)})
    assert put.status_code == 201, put.text
    assert put.headers["Etag"] == md5(data)
    got = http.get(f"{url}/{container}/2026/x.db", headers=auth)
    assert got.status_code == 200 and got.content == data
    assert got.headers["Etag"] == md5(data)

    # a body whose MD5 is not the ETag sent: Swift stores nothing
    wrong = http.put(
        f"{url}/{container}/broken.db", data=data[:1000], headers={**auth, "ETag": md5(b"other")}
    )
    assert wrong.status_code == 422
    assert http.head(f"{url}/{container}/broken.db", headers=auth).status_code == 404

    listing = http.get(f"{url}/{container}", params={"format": "json"}, headers=auth)
    assert listing.status_code == 200
    assert [(o["name"], o["bytes"], o["hash"]) for o in listing.json()] == [
        ("2026/x.db", len(data), md5(data))
    ]

    assert http.delete(f"{url}/{container}/2026/x.db", headers=auth).status_code == 204
    assert http.get(f"{url}/{container}/2026/x.db", headers=auth).status_code == 404
    assert http.get(f"{url}/{container}", params={"format": "json"}, headers=auth).json() == []


@pytest.mark.swift
def test_a_static_large_object_is_its_segments_concatenated(lab_swift: LabSwift):
    http, url, auth = lab_swift.http, lab_swift.swift.url, lab_swift.owner()
    container = f"slo-{uuid.uuid4().hex[:8]}"
    assert http.put(f"{url}/{container}", headers=auth).status_code == 201
    segments = [os.urandom(70_000), os.urandom(12_345)]
    manifest = []
    for n, segment in enumerate(segments):
        path = f"/{container}/snap.db/segments/{n:06d}"
        put = http.put(f"{url}{path}", data=segment, headers={**auth, "ETag": md5(segment)})
        assert put.status_code == 201, put.text
        manifest.append({"path": path, "etag": md5(segment), "size_bytes": len(segment)})

    put = http.put(
        f"{url}/{container}/snap.db",
        params={"multipart-manifest": "put"},
        data=json.dumps(manifest),
        headers=auth,
    )
    assert put.status_code == 201, put.text
    # Swift 2.30's SLO ETag (on the manifest's PUT, GET, HEAD): the MD5 of the segments'
    # ETags concatenated (as hex text), in double quotes, not the MD5 of the whole body;
    # X-Manifest-Etag is the MD5 of the manifest Swift stores (the listing's `hash`).
    slo_etag = '"' + md5("".join(s["etag"] for s in manifest).encode()) + '"'
    assert put.headers["Etag"] == slo_etag

    got = http.get(f"{url}/{container}/snap.db", headers=auth)
    assert got.status_code == 200, got.text
    assert got.content == b"".join(segments)
    assert got.headers["X-Static-Large-Object"] == "True"
    assert got.headers["Etag"] == slo_etag
    assert int(got.headers["Content-Length"]) == sum(map(len, segments))

    stored = http.get(
        f"{url}/{container}/snap.db", params={"multipart-manifest": "get"}, headers=auth
    ).json()
    assert [(s["name"], s["bytes"], s["hash"]) for s in stored] == [
        (s["path"], s["size_bytes"], s["etag"]) for s in manifest
    ]
    listed = http.get(f"{url}/{container}", params={"format": "json"}, headers=auth).json()
    (entry,) = [o for o in listed if o["name"] == "snap.db"]
    assert entry["hash"] == got.headers["X-Manifest-Etag"]
    assert entry["slo_etag"] == slo_etag

    # a manifest naming a segment by a wrong ETag is refused
    wrong = [dict(manifest[0], etag=md5(b"not it"))]
    bad = http.put(
        f"{url}/{container}/bad.db",
        params={"multipart-manifest": "put"},
        data=json.dumps(wrong),
        headers=auth,
    )
    assert bad.status_code == 400 and "Etag Mismatch" in bad.text

    gone = http.delete(
        f"{url}/{container}/snap.db", params={"multipart-manifest": "delete"}, headers=auth
    )
    assert gone.status_code == 200 and "Number Deleted: 3" in gone.text
    assert http.get(f"{url}/{container}", params={"format": "json"}, headers=auth).json() == []


@pytest.mark.swift
def test_the_auth_filter_refuses_what_keystone_and_the_rules_do_not_allow(lab_swift: LabSwift):
    http, url, owner = lab_swift.http, lab_swift.swift.url, lab_swift.owner()
    keystone = lab_swift.fake.keystone
    for container in (BACKUPS, "elsewhere"):
        assert http.put(f"{url}/{container}", headers=owner).status_code in (201, 202)

    # no token, a token Keystone does not know, an expired one: 401
    no_token = http.get(f"{url}/{BACKUPS}")
    assert no_token.status_code == 401
    assert no_token.headers["WWW-Authenticate"].startswith("Keystone uri=")
    expiring = keystone.issue(keystone.add_credential("expiring"))
    expiring.expires_at = time.time() - 1
    for token in ("gAAAAAnot-one", expiring.id):
        assert http.get(f"{url}/{BACKUPS}", headers={"X-Auth-Token": token}).status_code == 401

    # a valid token on another project's account: 403
    other = f"{url.rsplit('/', 1)[0]}/AUTH_{uuid.uuid4().hex}"
    assert http.put(f"{other}/{BACKUPS}", headers=owner).status_code == 403
    assert http.get(f"{other}/{BACKUPS}/x.db", headers=owner).status_code == 403
    # ... also when a middleware asks for it (a copy's source: Swift's `swift.authorize`)
    copy = {**owner, "X-Copy-From": f"/{BACKUPS}/x.db", "X-Copy-From-Account": other.split("/")[-1]}
    assert http.put(f"{url}/{BACKUPS}/copied.db", headers=copy).status_code == 403

    # a credential restricted to objects under one container
    rules = [
        AccessRule("object-store", method, f"/v1/AUTH_*/{BACKUPS}/**")
        for method in ("PUT", "GET", "HEAD", "DELETE")
    ] + [AccessRule("object-store", "GET", f"/v1/AUTH_*/{BACKUPS}")]
    restricted = {"X-Auth-Token": lab_swift.token(keystone.add_credential("backups", rules))}
    data = os.urandom(5000)
    name = f"{BACKUPS}/2026/11/30 snap.db"  # a space: the rules match the quoted path
    put = http.put(f"{url}/{name}", data=data, headers={**restricted, "ETag": md5(data)})
    assert put.status_code == 201, put.text
    assert http.get(f"{url}/{name}", headers=restricted).content == data
    assert http.head(f"{url}/{name}", headers=restricted).status_code == 200
    listing = http.get(f"{url}/{BACKUPS}", params={"format": "json"}, headers=restricted)
    assert "2026/11/30 snap.db" in [o["name"] for o in listing.json()]

    for method, path in (
        ("PUT", f"{url}/elsewhere/x.db"),  # another container
        ("GET", f"{url}/elsewhere"),
        ("POST", f"{url}/{name}"),  # a method no rule has
        ("PUT", f"{url}/{BACKUPS}"),  # the container itself: no rule for its PUT
        ("GET", url),  # the account
    ):
        refused = http.request(method, path, data=b"x", headers=restricted)
        assert refused.status_code == 401, (method, path, refused.text)
        assert "no access rule allows" in refused.json()["error"]["message"]
    assert http.delete(f"{url}/{name}", headers=restricted).status_code == 204


def test_rule_tokens_need_the_service_type_and_its_catalog_entry():
    """keystonemiddleware refuses a token with access rules when the service has no
    service_type, or the token's catalog lacks it; a token without rules passes."""
    rules = [{"service": "object-store", "method": "GET", "path": "/v1/**"}]
    token = {
        "application_credential": {"id": "c", "access_rules": rules},
        "catalog": [{"type": "object-store", "endpoints": []}],
    }
    assert refusal(token, "object-store", "GET", "/v1/AUTH_a/c") is None
    assert refusal(token, "object-store", "PUT", "/v1/AUTH_a/c") is not None
    assert "service_type" in str(refusal(token, None, "GET", "/v1/AUTH_a/c"))
    assert "catalog" in str(refusal({**token, "catalog": []}, "object-store", "GET", "/v1/a"))
    assert refusal({"application_credential": {"id": "c"}}, None, "POST", "/v1/a") is None
    nothing = {**token, "application_credential": {"id": "c", "access_rules": []}}
    assert refusal(nothing, "object-store", "GET", "/v1/AUTH_a/c") is not None


RULE_PATHS = [
    "/v1/AUTH_*/etcd-backups/**",
    "/v1/AUTH_*/etcd-backups",
    "/v1/AUTH_*/etcd-backups/*",
    "/v1/AUTH_*/etcd-backups/*/*.db",
    "/v1/{account}/etcd-backups/{object}",
    "/v1/**",
    "/v1/AUTH_abc/etcd-backups/**/x.db",
    "**",
    "*",
    "/v1/*",
    "/v1/***",
    "/v1/AUTH_{id}/{container}",
    "/v1/AUTH_{/etcd-backups",
    "/v1/AUTH_}*/etcd-backups",
    "/v1/AUTH_{}/etcd-backups",
    "/heat-api/v1/*/stacks/*/*/resources/*/signal",
    "",
]
REQUEST_PATHS = [
    "/v1/AUTH_abc/etcd-backups/2026/x.db",
    "/v1/AUTH_abc/etcd-backups/x.db",
    "/v1/AUTH_abc/etcd-backups",
    "/v1/AUTH_abc/etcd-backups/",
    "/v1/AUTH_abc/etcd-backups-2/x.db",
    "/v1/AUTH_/etcd-backups/x.db",
    "/v1/AUTH_abc/etcd-backups/2026/11/x.db",
    "/v1/AUTH_abc",
    "/v1/AUTH_abc/",
    "/v1/",
    "/v1",
    "/v2/AUTH_abc/etcd-backups/x.db",
    "/v1/AUTH_abc/etcd-backups/a%20b/x.db",
    "/heat-api/v1/p/stacks/s/id/resources/r/signal",
    "",
]


def keystonemiddleware_matches(request_path: str, rule_path: str) -> bool:
    from keystonemiddleware.auth_token import _path_matches

    return bool(_path_matches(request_path, rule_path))


@pytest.mark.parametrize("rule_path", RULE_PATHS)
def test_the_rule_path_matcher_agrees_with_keystonemiddleware(rule_path):
    for request_path in REQUEST_PATHS:
        expected = keystonemiddleware_matches(request_path, rule_path)
        assert path_matches(request_path, rule_path) == expected, (request_path, rule_path)


def test_the_matcher_has_the_documented_meanings():
    assert path_matches("/v1/AUTH_abc/etcd-backups/2026/x.db", "/v1/AUTH_*/etcd-backups/**")
    assert path_matches("/v1/AUTH_abc/etcd-backups/", "/v1/AUTH_*/etcd-backups/**")
    assert not path_matches("/v1/AUTH_abc/etcd-backups", "/v1/AUTH_*/etcd-backups/**")
    assert path_matches("/v1/AUTH_abc/etcd-backups", "/v1/AUTH_*/etcd-backups")
    assert not path_matches("/v1/AUTH_abc/etcd-backups/x", "/v1/AUTH_*/etcd-backups")
    assert path_matches("/v1/AUTH_abc/etcd-backups/x.db", "/v1/AUTH_*/etcd-backups/*")
    assert not path_matches("/v1/AUTH_abc/etcd-backups/2026/x.db", "/v1/AUTH_*/etcd-backups/*")
    assert not path_matches("/v1/AUTH_/etcd-backups/x.db", "/v1/AUTH_*/etcd-backups/*")


@pytest.mark.parametrize(
    ("request_path", "rule_path", "theirs"),
    [
        # keystonemiddleware pastes a rule's characters into a regex unescaped: `.` is any
        # character there (more allowed), `+` a repetition (less); here each is itself
        ("/v1/AUTH_a/etcd-backups/x_db", "/v1/AUTH_*/etcd-backups/x.db", True),
        ("/v1/AUTH_a/etcd-backups/a+b", "/v1/AUTH_*/etcd-backups/a+b", False),
    ],
)
def test_where_the_matcher_differs_from_keystonemiddleware(request_path, rule_path, theirs):
    assert keystonemiddleware_matches(request_path, rule_path) is theirs
    assert path_matches(request_path, rule_path) is not theirs


def test_the_filter_module_imports_with_the_standard_library_only():
    """The proxy runs it on Debian's python3, which has no venv: it must need nothing else."""
    import ast

    source = Path(__file__).parent.parent / "lab" / "swift_middleware" / "lab_authtoken.py"
    tree = ast.parse(source.read_text())
    imported = set()
    for node in tree.body:  # top-level imports only: Swift's are inside functions
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    import sys

    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


@pytest.mark.swift
def test_a_large_upload_past_its_deadline_stops_and_leaves_no_segment(lab_swift, tmp_path):
    """The snapshot upload's deadline (agent/backup.py: the `backup` lock's lease): checked
    before each segment and the manifest; past it, SwiftError and the segments already up
    are deleted. The control, with time left, stores the object."""
    import time
    from types import SimpleNamespace

    from agent.swift import SwiftError, SwiftStore
    from tests.tools import TokenAccess

    http, url, auth = lab_swift.http, lab_swift.swift.url, lab_swift.owner()
    container = f"deadline-{uuid.uuid4().hex[:8]}"
    assert http.put(f"{url}/{container}", headers=auth).status_code == 201
    store = SwiftStore(TokenAccess(url, auth["X-Auth-Token"]), container)
    path = tmp_path / "snap.db"
    path.write_bytes(os.urandom(3 * 2**20 + 10))
    ticks = iter([0.0, 0.0, 100.0])  # in time for two segments, then past it

    with pytest.MonkeyPatch.context() as patch:  # the agent's clock only, not urllib3's
        patch.setattr("agent.swift.time", SimpleNamespace(monotonic=lambda: next(ticks, 100.0)))
        with pytest.raises(SwiftError, match="past its deadline"):
            store.upload("snapshots/late.db", path, segment_bytes=2**20, deadline=50.0)
    assert store.list("") == []  # the two segments up were deleted
    store.upload("snapshots/ok.db", path, segment_bytes=2**20, deadline=time.monotonic() + 60)
    assert [o.name for o in store.list("snapshots/")] == ["snapshots/ok.db"]


@pytest.mark.swift
def test_a_claim_is_made_once_and_roll_calls_carry_swifts_time(lab_swift):
    """agent/disaster.py's claim (`If-None-Match: *`: the first PUT makes it, the second is
    refused with 412 and changes nothing) and roll calls read back with their X-Timestamp
    (Swift's clock), later for a later write."""
    from agent.swift import SwiftStore
    from tests.tools import TokenAccess

    http, url, auth = lab_swift.http, lab_swift.swift.url, lab_swift.owner()
    container = f"claim-{uuid.uuid4().hex[:8]}"
    assert http.put(f"{url}/{container}", headers=auth).status_code == 201
    store = SwiftStore(TokenAccess(url, auth["X-Auth-Token"]), container)
    assert store.put_small("recovery-claim", b'{"server": "a"}', only_new=True) is True
    assert store.put_small("recovery-claim", b'{"server": "b"}', only_new=True) is False
    assert store.get_small("recovery-claim")[0] == b'{"server": "a"}'
    store.put_small("recovery/a", b"{}")
    first = store.get_small("recovery/a")[1]
    store.put_small("recovery/a", b"{}")
    assert store.get_small("recovery/a")[1] > first > 0
    assert store.get_small("recovery/none") is None
