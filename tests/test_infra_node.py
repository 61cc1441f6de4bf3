"""What cloud-init runs on a node, run for real: the agent fetcher, a plain image's installs.

- `fetch-agent.py`, exactly as a member's user-data ships it, against the fake Keystone
  and Heat of tests/fake_openstack.py, with the node's own agent settings file (Heat's
  str_replace done with the fake's values): it authenticates with the application
  credential, reads the `agent_bundle` metadata the cluster template holds, installs
  the bundle only when it is the one the user-data names, retries failures, and never
  prints the secret or the token. Its Heat call is one the credential's access rules
  allow (keystonemiddleware's own matching). It reports to the stack's agents_ready wait
  condition (run with Heat's own signal checks by the fake): SUCCESS once the agent's
  calls are let through, FAILURE naming the refused call when the credential is not.
- `install.sh`, as the user-data ships it, in a fake root with recording stubs for the
  package managers, curl and the interpreters: EL9 gets python3.11, etcd is installed
  only when its sha256 is in the list the user-data carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from infra import heat
from infra.access_rules import access_rules
from infra.bundle import Bundle, agent_bundle
from infra.cluster import cluster_template
from infra.render import find_stack_file, stack_config
from infra.settings import PROJECT_DIR, parse_settings, strip_namespace
from infra.userdata import (
    AGENT_CONFIG,
    AGENT_PYZ,
    ETCD_SUMS,
    FETCHER,
    READY_FILE,
    VENV_PYTHON,
    Token,
    member_user_data,
)
from lab.cloud.keystone import AccessRule as KeystoneRule
from tests.fake_openstack import CREDENTIAL_ID, CREDENTIAL_SECRET, PROJECT, FakeOpenStack
from tests.tools import need

METADATA_PATH = "/resources/agent_bundle/metadata"
FETCHER_SOURCE = "infra/node/fetch-agent.py"
SIGNAL_PATH = f"/resources/{heat.READY_HANDLE}/signal"
SETTINGS_PATH = f"/resources/{heat.SETTINGS}/metadata"


def settings_of(stack: str):
    return parse_settings(strip_namespace(stack_config(find_stack_file(stack))))


@pytest.fixture
def fake() -> Iterator[FakeOpenStack]:
    server = FakeOpenStack()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Node:
    """A member's files and its fetch command, as cloud-init would run them, under tmp."""

    dir: Path
    argv: list[str]

    @property
    def pyz(self) -> Path:
        return self.dir / "agent.pyz"

    def fetch(self, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *extra], capture_output=True, text=True, timeout=timeout, check=False
        )


def heat_substituted(text: str, fake: FakeOpenStack) -> str:
    """The user-data as Heat hands it to Nova: every token replaced (here: the fake's)."""
    values = {
        Token.AUTH_URL: fake.url + "/identity/v3",
        Token.REGION: "RegionOne",
        Token.CREDENTIAL_ID: CREDENTIAL_ID,
        Token.CREDENTIAL_SECRET: CREDENTIAL_SECRET,
        Token.STACK: f"{fake.stack_name}/{fake.stack_id}",
        Token.READY_URL: fake.ready_url,
        Token.READY_TOKEN: fake.ready_token,
    }
    for token, value in values.items():
        text = text.replace(token, value)
    return text


@pytest.fixture
def node(fake, tmp_path) -> Node:
    """The dev stack's member: the stack holds this checkout's bundle, as Heat would."""
    s = settings_of("dev")
    template = cluster_template(s, "autoscale-etcd-dev").to_hot()
    fake.resource_metadata[heat.AGENT_BUNDLE] = template["resources"][heat.AGENT_BUNDLE]["metadata"]
    fake.resource_metadata[heat.SETTINGS] = template["resources"][heat.SETTINGS]["metadata"]
    document = yaml.safe_load(
        heat_substituted(member_user_data(s, cluster_name="autoscale-etcd-dev").text, fake)
    )
    files = {f["path"]: f["content"] for f in document["write_files"]}
    places = {
        VENV_PYTHON: sys.executable,
        FETCHER: str(tmp_path / "fetch-agent.py"),
        AGENT_CONFIG: str(tmp_path / "agent.json"),
        AGENT_PYZ: str(tmp_path / "agent.pyz"),
        READY_FILE: str(tmp_path / "ready.json"),
    }
    for path in (FETCHER, AGENT_CONFIG, READY_FILE):
        Path(places[path]).write_text(files[path])
    (last,) = [cmd for cmd in document["runcmd"] if cmd[:2] == ["sh", "-c"] and FETCHER in cmd[2]]
    fetch = shlex.split(last[2].split(" && ")[0])
    argv = [places.get(word, word) for word in fetch]
    assert set(places.values()) <= set(argv)
    return Node(tmp_path, [*argv, "--first-delay", "0.05"])


def test_fetches_the_settings_and_the_bundle_they_name_and_it_runs(fake, node):
    node.pyz.write_text("an older copy, e.g. an image's\n")
    result = node.fetch("--deadline", "10")
    assert result.returncode == 0, result.stderr
    assert node.pyz.read_bytes() == agent_bundle().zipapp
    assert stat.S_IMODE(node.pyz.stat().st_mode) == 0o755
    assert not [p for p in node.dir.iterdir() if p.name.startswith(".agent-")]
    # Keystone: the application credential of the settings file, nothing else
    (auth,) = fake.calls("POST", "/v3/auth/tokens")
    identity = auth.body["auth"]["identity"]
    assert identity["methods"] == ["application_credential"]
    assert identity["application_credential"] == {"id": CREDENTIAL_ID, "secret": CREDENTIAL_SECRET}
    # Heat: Show resource metadata of agent_settings, then of agent_bundle, in this
    # node's stack, with that token
    (settings,) = fake.calls("GET", SETTINGS_PATH)
    assert settings.headers["x-auth-token"] == fake.issued_tokens[0]
    (get,) = fake.calls("GET", METADATA_PATH)
    assert get.path.startswith("/heat-api/v1/")
    assert f"/stacks/{fake.stack_name}/{fake.stack_id}" in get.path
    assert get.headers["x-auth-token"] == fake.issued_tokens[0]
    # then the agent's other calls with the same token, and the stack told it works:
    # `pulumi up` waits for this (the agents_ready wait condition)
    assert len(fake.issued_tokens) == 1
    assert [r.method for r in fake.requests] == ["POST", "GET", "GET", "GET", "GET", "POST"]
    (signal,) = fake.calls("POST", SIGNAL_PATH)
    assert signal.headers["x-auth-token"] == fake.issued_tokens[0]
    assert signal.body["status"] == "SUCCESS"
    assert fake.ready() == ("CREATE_COMPLETE", "state changed")
    # never the secret or a token in what cloud-init logs
    for secret in (CREDENTIAL_SECRET, fake.issued_tokens[0], fake.ready_token):
        assert secret not in result.stdout + result.stderr
    assert agent_bundle().sha256 in result.stderr
    # the settings file: the stack's member settings with the user-data's cloud (0600)
    config = node.dir / "agent.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    written = json.loads(config.read_text())
    document = fake.cloud_metadata(heat.SETTINGS)
    assert {k: v for k, v in written.items() if k != "cloud"} == document["roles"]["member"]
    assert written["cloud"]["application_credential_secret"] == CREDENTIAL_SECRET
    # the file it installed is the agent, and it reads that settings file
    run = subprocess.run(
        [sys.executable, str(node.pyz), "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "bootstrap" in run.stdout
    status = subprocess.run(
        [sys.executable, str(node.pyz), "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "cannot read agent settings" not in status.stderr, status.stderr


def test_the_credential_s_access_rules_allow_the_fetch(fake, node):
    """keystonemiddleware's own matching of access rules, on the path the fetcher called:
    the rules made for the cloud's catalog (its Heat under /heat-api), enforced by it."""
    from keystonemiddleware.auth_token import _path_matches

    rules = access_rules(f"{fake.url}/heat-api/v1/{PROJECT}", f"{fake.url}/compute/v2.1")
    fake.keystone.credentials[CREDENTIAL_ID].access_rules = tuple(
        KeystoneRule(r.service, r.method, r.path) for r in rules
    )
    assert node.fetch("--deadline", "10").returncode == 0
    (get,) = fake.calls("GET", METADATA_PATH)
    path = get.path
    assert path.startswith("/heat-api/v1/")

    def allowed(method: str, request_path: str) -> bool:
        return any(
            rule.service == "orchestration"
            and rule.method == method
            and _path_matches(request_path, rule.path)
            for rule in rules
        )

    assert allowed("GET", path)
    # the ready report's calls went through the same rules
    assert fake.ready() == ("CREATE_COMPLETE", "state changed")
    # the rules are not "anything": no writes to the metadata, no stack deletion
    assert not allowed("PUT", path) and not allowed("POST", path)
    assert not allowed("DELETE", path.split("/resources/")[0])


def test_retries_a_503_from_heat_and_from_keystone(fake, node):
    fake.fail("GET", METADATA_PATH, 503, times=2)
    fake.fail("POST", "/v3/auth/tokens", 503, times=1)
    result = node.fetch("--deadline", "20")
    assert result.returncode == 0, result.stderr
    assert node.pyz.read_bytes() == agent_bundle().zipapp
    assert len(fake.calls("GET", METADATA_PATH)) == 3
    assert len(fake.calls("POST", "/v3/auth/tokens")) == 4
    assert result.stderr.count("HTTP 503") == 3
    assert "attempt 4" not in result.stderr and "installed" in result.stderr
    assert fake.ready()[0] == "CREATE_COMPLETE"  # a broken cloud is not a refused credential


def test_refuses_a_bundle_that_is_not_the_named_one(fake, node):
    other = Bundle(b"#!/usr/bin/env python3\nprint('not the agent the user-data names')\n")
    fake.resource_metadata[heat.AGENT_BUNDLE] = heat.AgentBundle(
        other.sha256, other.packed, len(other.zipapp)
    ).to_hot()["metadata"]
    node.pyz.write_text("an older copy\n")
    result = node.fetch("--deadline", "0.5")
    assert result.returncode == 1
    assert node.pyz.read_text() == "an older copy\n"  # nothing written
    assert f"has sha256 {other.sha256}" in result.stderr
    assert f"names {agent_bundle().sha256}" in result.stderr
    assert "giving up" in result.stderr
    assert len(fake.calls("GET", METADATA_PATH)) >= 2  # retried until the deadline


def test_a_bad_secret_is_refused_and_never_printed(fake, node):
    config = node.dir / "agent.json"
    wrong = "wr0ng-Secret-that-must-not-be-printed"
    config.write_text(config.read_text().replace(CREDENTIAL_SECRET, wrong))
    # an answer that echoes the secret must not make the fetcher print it either
    fake.fail("POST", "/v3/auth/tokens", 500, body=f"cannot check {wrong}", times=1)
    result = node.fetch("--deadline", "0.3")
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr and "HTTP 500" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert not fake.calls("GET", METADATA_PATH)
    assert not node.pyz.exists()


def test_a_credential_keystone_refuses_fails_the_stack_naming_why(fake, node):
    """A wrong secret: three refusals in a row and the wait condition is failed, once,
    with the stack user's token; Heat's reason names Keystone's answer. The fetcher
    keeps trying until its deadline (a fixed credential would still be fetched with)."""
    config = node.dir / "agent.json"
    config.write_text(config.read_text().replace(CREDENTIAL_SECRET, "not-the-secret"))
    result = node.fetch("--deadline", "1.5")
    assert result.returncode == 1 and not node.pyz.exists()
    assert len(fake.calls("POST", "/v3/auth/tokens")) >= 4
    (failure,) = fake.calls("POST", SIGNAL_PATH)
    assert failure.headers["x-auth-token"] == fake.ready_token
    status, reason = fake.ready()
    assert status == "CREATE_FAILED"
    assert reason.startswith(f"WaitConditionFailure: resources.{heat.READY}: ")
    assert "credential is refused" in reason and "keystone POST /v3/auth/tokens: HTTP 401" in reason
    assert "not-the-secret" not in result.stderr + reason


def test_access_rules_that_miss_the_compute_prefix_fail_the_stack(fake, node):
    """Rules made for Nova on :8774/v2.1 while the catalog serves it under /compute: the
    bundle comes (Heat's rule matches), Nova refuses the agent's call, and the stack fails
    naming it, where before `pulumi up` succeeded with agents that could do nothing."""
    wrong = access_rules(f"{fake.url}/heat-api/v1/{PROJECT}", "https://nova.example:8774/v2.1")
    fake.keystone.credentials[CREDENTIAL_ID].access_rules = tuple(
        KeystoneRule(r.service, r.method, r.path) for r in wrong
    )
    result = node.fetch("--deadline", "10")
    assert result.returncode == 0, result.stderr  # the agent is installed all the same
    status, reason = fake.ready()
    assert status == "CREATE_FAILED"
    assert "nova GET /servers/<nil uuid>: HTTP 401" in reason
    assert "no access rule allows GET /compute/v2.1/servers/" in reason
    # the rules made from the catalog let it through
    right = access_rules(f"{fake.url}/heat-api/v1/{PROJECT}", f"{fake.url}/compute/v2.1")
    assert any(r.service == "compute" and r.path.startswith("/compute/v2.1/") for r in right)


def test_a_node_made_after_the_wait_reports_nothing(fake, node):
    """The wait condition is done (the first nodes): a later node's fetch signals nothing,
    so the handle's metadata does not grow with every replacement over the years."""
    fake.cloud.wait_signal(heat.READY_HANDLE, {"status": "SUCCESS", "id": "first"})
    assert fake.ready()[0] == "CREATE_COMPLETE"
    result = node.fetch("--deadline", "10")
    assert result.returncode == 0, result.stderr
    assert not fake.calls("POST", SIGNAL_PATH)
    assert list(fake.ready_signals) == ["first"]
    assert "nothing to report" in result.stderr


def test_a_node_faster_than_its_group_reports_before_the_wait_begins(fake, node):
    """The condition waits only once the whole group is made (it depends on it); a node
    that fetched before sees it INIT_COMPLETE, signals all the same, and the handle keeps
    the signal for when the wait begins."""
    fake.cloud.wait_handles[heat.READY_HANDLE].started_at = None
    assert fake.ready()[0] == "INIT_COMPLETE"
    assert node.fetch("--deadline", "10").returncode == 0
    assert fake.ready()[0] == "INIT_COMPLETE" and len(fake.ready_signals) == 1
    fake.cloud.start_waits()
    assert fake.ready() == ("CREATE_COMPLETE", "state changed")


def test_a_broken_ready_file_does_not_keep_the_agent_from_its_node(fake, node):
    (node.dir / "ready.json").write_text("{")
    result = node.fetch("--deadline", "10")
    assert result.returncode == 0 and node.pyz.exists()
    assert "nothing will be reported" in result.stderr
    assert fake.ready()[0] == "CREATE_IN_PROGRESS"


def test_a_settings_document_that_is_not_whole_is_not_taken(fake, node):
    """A document whose sha256 is not its own (cut, or changed on its way) installs
    nothing and writes no settings; the fetch retries until its deadline."""
    document = dict(fake.cloud_metadata(heat.SETTINGS))
    document["roles"] = {**document["roles"], "member": {"cluster_name": "another"}}
    fake.resource_metadata[heat.SETTINGS] = document
    before = (node.dir / "agent.json").read_text()
    result = node.fetch("--deadline", "0.5")
    assert result.returncode == 1 and not node.pyz.exists()
    assert "does not match its sha256" in result.stderr
    assert (node.dir / "agent.json").read_text() == before
    assert not fake.calls("GET", METADATA_PATH)


def test_the_fetcher_s_document_sha256_is_the_agent_s():
    """The fetcher cannot import the agent: its copy of document_sha256 must agree."""
    import importlib.util

    from agent.settings import document_sha256

    spec = importlib.util.spec_from_file_location("fetcher", PROJECT_DIR / FETCHER_SOURCE)
    assert spec is not None and spec.loader is not None
    fetcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetcher)
    template = cluster_template(settings_of("metrics"), "c").to_hot()
    document = template["resources"][heat.SETTINGS]["metadata"]
    assert fetcher.document_sha256(document) == document_sha256(document) == document["sha256"]
    assert fetcher.document_sha256({**document, "roles": {}}) != document["sha256"]


def test_a_broken_settings_file_fails_at_once(fake, node):
    before = (node.dir / "agent.json").read_text()
    (node.dir / "agent.json").write_text('{"cloud": {"kind": "local", "url": "http://x"}}')
    result = node.fetch("--deadline", "30", timeout=10)
    assert result.returncode == 2 and "not OpenStack settings" in result.stderr
    assert not fake.requests
    (node.dir / "agent.json").write_text(
        json.dumps({"cloud": json.loads(before)["cloud"], "role": "leader"})
    )
    result = node.fetch("--deadline", "30", timeout=10)
    assert result.returncode == 2 and "role must be member or proxy" in result.stderr


# --- install.sh on a plain image -----------------------------------------------------

STUB = '#!/bin/sh\nprintf "%s\\n" "${0##*/} $*" >>"$STUB_LOG"\n'
PYTHON_STUB = """
if [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin"
    printf '#!/bin/sh\\nexec "%s" "$@"\\n' "$0" >"$3/bin/python3"
    printf '#!/bin/sh\\nprintf "%%s\\\\n" "pip $*" >>"$STUB_LOG"\\n' >"$3/bin/pip"
    chmod +x "$3/bin/python3" "$3/bin/pip"
    exit 0
fi
if [ "$1" = -c ]; then
    exec "$STUB_REAL_PYTHON" -c "import sys; sys.version_info = ($VERSION); exec(sys.argv[1])" "$2"
fi
exec "$STUB_REAL_PYTHON" "$@"
"""
STUBS = {
    "package-manager": "exit 0\n",
    "curl": """
out=""; url=""
while [ $# -gt 0 ]; do
    case $1 in -o) out=$2; shift ;; -*) ;; *) url=$1 ;; esac
    shift
done
cp "$STUB_DOWNLOADS/${url##*/}" "$out"
""",
    "uname": '[ "$1" = -m ] && echo "${STUB_MACHINE:-x86_64}"\n',
}
HOST_TOOLS = "awk cat chmod cp grep gzip install mkdir mktemp rm sha256sum tar".split()


def fake_etcd_tarball(downloads: Path, version: str, arch: str = "amd64") -> str:
    """A release-shaped tarball whose `etcd --version` answers like the real one."""
    name = f"etcd-v{version}-linux-{arch}"
    staging = downloads / "staging" / name
    staging.mkdir(parents=True)
    for tool in ("etcd", "etcdctl", "etcdutl"):
        (staging / tool).write_text(f'#!/bin/sh\necho "{tool} Version: {version}"\n')
        (staging / tool).chmod(0o755)
    tarball = downloads / f"{name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(staging, arcname=name)
    return hashlib.sha256(tarball.read_bytes()).hexdigest()


@dataclass
class Image:
    """A plain image in a fake root: which package manager and interpreters it has."""

    base: Path
    manager: str  # apt-get or dnf
    pythons: dict[str, str]  # command -> version tuple, e.g. {"python3": "3, 9, 18"}

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.bin = self.base / "bin"
        self.downloads = self.base / "downloads"
        self.log = self.base / "calls.log"
        self.own = self.base / "own-sums.txt"
        for directory in (self.root, self.bin, self.downloads, self.base / "tmp"):
            directory.mkdir(parents=True)
        self.log.touch()
        for tool in HOST_TOOLS:
            (self.bin / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
        stubs = {**STUBS, self.manager: STUBS["package-manager"]}
        del stubs["package-manager"]
        for command, version in self.pythons.items():
            stubs[command] = f"VERSION='{version}'\n" + PYTHON_STUB.lstrip("\n")
        for name, body in stubs.items():
            (self.bin / name).write_text(STUB + body.lstrip("\n"))
            (self.bin / name).chmod(0o755)
        document = yaml.safe_load(member_user_data(settings_of("dev"), cluster_name="c").text)
        files = {f["path"]: f["content"] for f in document["write_files"]}
        self.script = self.base / "install.sh"
        self.script.write_text(files["/opt/autoscale-etcd/install.sh"])
        self.sums = self.base / "etcd-sha256sums.txt"
        self.sums.write_text(files[ETCD_SUMS])  # the repository's lines for 3.5.17
        (install,) = [
            c for c in document["runcmd"] if c[:2] == ["sh", "/opt/autoscale-etcd/install.sh"]
        ]
        self.args = install[2:]

    def run(self, *, sums: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        args = [self.args[0], str(sums or self.sums), *self.args[2:]]
        return subprocess.run(
            ["/bin/sh", str(self.script), *args],
            env={
                "PATH": str(self.bin),
                "TMPDIR": str(self.base / "tmp"),
                "AUTOSCALE_ROOT": str(self.root),
                "STUB_LOG": str(self.log),
                "STUB_DOWNLOADS": str(self.downloads),
                "STUB_REAL_PYTHON": sys.executable,
                **env,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def own_sums(self, version: str = "3.5.17", arch: str = "amd64") -> Path:
        """Downloads the fake tarball; returns a list with its sha256 (the user-data's list
        holds the real tarball's)."""
        digest = fake_etcd_tarball(self.downloads, version, arch)
        self.own.write_text(f"{digest}  etcd-v{version}-linux-{arch}.tar.gz\n")
        return self.own


def test_el9_uses_python3_11_and_installs_etcd_whose_sha256_is_listed(tmp_path):
    image = Image(tmp_path, "dnf", {"python3": "3, 9, 18", "python3.11": "3, 11, 9"})
    result = image.run(sums=image.own_sums())
    assert result.returncode == 0, result.stderr
    calls = image.calls()
    assert "dnf install -y -q netdata python3.11 python3.11-pip openssl" in calls
    assert not any(c.startswith("dnf install -y -q curl") for c in calls)  # curl-minimal will do
    venv = image.root / "opt/autoscale-etcd/venv"
    assert f"python3.11 -m venv {venv}" in calls
    assert not any(c.startswith("python3 -m venv") for c in calls)
    assert any(c.startswith("pip install") and "pydantic==" in c for c in calls)
    etcd = image.root / "usr/local/bin/etcd"
    assert subprocess.run([etcd, "--version"], capture_output=True, text=True).stdout == (
        "etcd Version: 3.5.17\n"
    )
    assert (image.root / "usr/local/bin/etcdutl").exists()  # the agent's snapshots and restore
    # a second boot step finds etcd and the venv in place: no download, no new venv
    before = len(calls)
    assert image.run(sums=image.own).returncode == 0
    again = image.calls()[before:]
    assert not any(c.startswith(("curl", "python3.11 -m venv")) for c in again), again


def test_ubuntu_uses_python3_and_refuses_a_too_old_one(tmp_path):
    image = Image(tmp_path / "noble", "apt-get", {"python3": "3, 12, 3"})
    result = image.run(sums=image.own_sums())
    assert result.returncode == 0, result.stderr
    assert any(c.startswith("apt-get") and "python3-venv" in c for c in image.calls())
    assert f"python3 -m venv {image.root / 'opt/autoscale-etcd/venv'}" in image.calls()
    old = Image(tmp_path / "jammy", "apt-get", {"python3": "3, 10, 12"})
    result = old.run(sums=old.own_sums())
    assert result.returncode != 0
    assert "python3 is older than 3.11" in result.stderr
    assert not (old.root / "opt/autoscale-etcd/venv").exists()


def test_an_el9_venv_of_python_3_9_is_made_again_with_3_11(tmp_path):
    image = Image(tmp_path, "dnf", {"python3": "3, 9, 18", "python3.11": "3, 11, 9"})
    venv = image.root / "opt/autoscale-etcd/venv"
    assert subprocess.run([image.bin / "python3", "-m", "venv", venv]).returncode == 0
    assert image.run(sums=image.own_sums()).returncode == 0
    assert f"python3.11 -m venv {venv}" in image.calls()


def test_etcd_is_refused_unless_its_sha256_is_in_the_user_data_s_list(tmp_path):
    image = Image(tmp_path, "apt-get", {"python3": "3, 12, 3"})
    image.own_sums()  # the download is the fake tarball; the list is the real one
    result = image.run()
    assert result.returncode != 0
    assert "sha256 mismatch for etcd-v3.5.17-linux-amd64.tar.gz" in result.stderr
    assert not (image.root / "usr/local/bin/etcd").exists()
    # a machine whose architecture has no line: refused before any download
    before = len(image.calls())
    result = image.run(sums=image.own, STUB_MACHINE="aarch64")
    assert result.returncode != 0
    assert "no sha256 for etcd-v3.5.17-linux-arm64.tar.gz" in result.stderr
    assert not any(c.startswith("curl") for c in image.calls()[before:])
    assert not os.path.exists(image.root / "usr/local/bin/etcd")


def test_install_sh_is_shellcheck_clean(tmp_path):
    shellcheck = need("shellcheck")
    script = Path(__file__).resolve().parent.parent / "infra" / "node" / "install.sh"
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    broken = tmp_path / "install.sh"
    broken.write_text(script.read_text().replace('"${sums}"', "$sums_file", 1))
    assert subprocess.run([shellcheck, str(broken)], capture_output=True).returncode != 0


def test_the_fetcher_trusts_a_private_ca_through_the_settings_cacert(tmp_path):
    """A cloud whose Keystone and Heat a company CA certifies: with the stack's `cacert`
    (written to the node, named in its settings) the bundle comes; without, the fetcher
    refuses the certificate and names it."""
    import random

    from agent.tls import issue_node_cert, make_ca
    from tests.tools import need

    need("openssl")
    ca = make_ca(tmp_path / "company-ca", "company-ca")
    fake = FakeOpenStack()
    for _ in range(10):
        host = f"127.0.0.{random.randint(2, 250)}"
        server = issue_node_cert(ca, tmp_path / f"api-{host}", ip=host, name="cloud.example")
        try:
            fake.start(host=host, tls=(server.cert_file, server.key_file))
            break
        except OSError:
            continue
    try:
        bundle = agent_bundle()
        template = cluster_template(settings_of("dev"), "c").to_hot()
        for resource in (heat.AGENT_BUNDLE, heat.SETTINGS):
            fake.resource_metadata[resource] = template["resources"][resource]["metadata"]
        cloud = fake.settings(cacert=str(ca.cert_file)).model_dump(
            mode="json", context={"reveal_secrets": True}
        )
        runs = {}
        for name, settings in (("with", cloud), ("without", {**cloud, "cacert": None})):
            config = tmp_path / f"{name}.json"
            config.write_text(json.dumps({"cloud": settings}))
            runs[name] = subprocess.run(
                [
                    sys.executable,
                    str(PROJECT_DIR / "infra/node/fetch-agent.py"),
                    *("--config", str(config)),
                    *("--out", str(tmp_path / f"{name}.pyz"), "--deadline", "1"),
                    *("--first-delay", "0.05"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert runs["with"].returncode == 0, runs["with"].stderr
        assert (tmp_path / "with.pyz").read_bytes() == bundle.zipapp
        assert runs["without"].returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in runs["without"].stderr
        assert not (tmp_path / "without.pyz").exists()
    finally:
        fake.stop()
