"""The node images: Packer templates that Packer accepts, shellcheck-clean provisioning
scripts, and scripts that are idempotent on Ubuntu (apt) and Rocky/Alma 9 (dnf).

The scripts run unprivileged into a fake root (AUTOSCALE_ROOT=tmp_path/...) with a
PATH that holds only stubs (package managers, curl, wget, systemctl, useradd, chown,
python's venv) that record their calls, plus a few harmless host tools: nothing can
reach the network or change this machine, and a command the scripts call without a
stub is "not found", so the run fails.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.settings import EtcdSettings
from infra.settings import PROJECT_DIR, StackSettings
from tests.tools import need

PACKER_DIR = PROJECT_DIR / "packer"
SCRIPTS_DIR = PACKER_DIR / "scripts"
TEMPLATE = PACKER_DIR / "node-image.pkr.hcl"
SOURCES = ("openstack.ubuntu", "openstack.rocky")
"""The build's sources, one a distribution family: `packer build -only=<source>`."""
SCRIPTS = sorted(p for p in SCRIPTS_DIR.glob("*.sh") if p.name != "lib.sh")
UNITS_DIR = PROJECT_DIR / "infra" / "units"
SUMS_FILE = PACKER_DIR / "files" / "etcd-sha256sums.txt"
DEFAULT_ETCD = StackSettings.model_fields["etcd_version"].default
RELEASES = "https://github.com/etcd-io/etcd/releases/download"


def _tool(name: str) -> str:
    """A host tool the test needs; in CI its absence is a broken set-up, not a skip."""
    return need(name)


def _pyproject_pins(path: Path = PROJECT_DIR / "pyproject.toml") -> list[str]:
    with path.open("rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def _build_order(template: Path) -> list[str]:
    """The provisioning scripts in the order the template runs them."""
    return re.findall(
        r'"sh \$\{local\.upload_dir\}/scripts/([a-z0-9-]+\.sh)"', template.read_text()
    )


# --- packer validate ---------------------------------------------------------------


def _packer_env(home: Path, **extra: str) -> dict[str, str]:
    """No OS_* from the caller, no checkpoint call home (Packer's update check)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    env.update(CHECKPOINT_DISABLE="1", PACKER_CONFIG_DIR=str(home), TMPDIR=str(home))
    env.update(extra)
    return env


def packer_validate(
    template: Path, home: Path, *args: str, syntax_only: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    command = [_tool("packer"), "validate"]
    if syntax_only:
        command.append("-syntax-only")
    command += [*args, str(template)]
    return subprocess.run(
        command,
        env=_packer_env(home, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_one_template_builds_an_ubuntu_and_a_rhel_family_image():
    assert sorted(PACKER_DIR.glob("*.pkr.hcl")) == [TEMPLATE]
    names = re.findall(
        r'source "source\.openstack\.node" \{\s*name\s*=\s*"([a-z]+)"', TEMPLATE.read_text()
    )
    assert [f"openstack.{name}" for name in names] == list(SOURCES)


def test_packer_accepts_the_template_syntax(tmp_path):
    result = packer_validate(TEMPLATE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda text: text.rstrip().removesuffix("}"), id="unclosed-build-block"),
        pytest.param(lambda text: text.replace("variable ", "variable = ", 1), id="bad-block"),
    ],
)
def test_a_syntax_error_is_caught_by_the_same_check(damage, tmp_path):
    broken = tmp_path / TEMPLATE.name
    broken.write_text(damage(TEMPLATE.read_text()))
    result = packer_validate(broken, tmp_path)
    assert result.returncode != 0
    assert "Error" in result.stdout + result.stderr


class _FakeKeystone(http.server.BaseHTTPRequestHandler):
    """Just enough Keystone v3 for the openstack builder's Prepare: one token, a catalog.

    Keystone API: POST /v3/auth/tokens answers 201 with X-Subject-Token and the token
    body (https://docs.openstack.org/api-ref/identity/v3/#password-authentication-with-scoped-authorization).
    """

    requests: list[dict[str, object]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append({"path": self.path, "body": json.loads(body)})  # type: ignore[attr-defined]
        host, port = self.server.server_address[:2]
        base = f"http://{host}:{port}"
        catalog = [
            {
                "type": kind,
                "name": kind,
                "id": kind,
                "endpoints": [
                    {
                        "interface": "public",
                        "region": "RegionOne",
                        "region_id": "RegionOne",
                        "url": f"{base}/{kind}",
                        "id": f"{kind}-public",
                    }
                ],
            }
            for kind in ("identity", "compute", "image", "network", "volumev3")
        ]
        domain = {"id": "default", "name": "Default"}
        token = {
            "token": {
                "methods": ["password"],
                "expires_at": "2099-01-01T00:00:00.000000Z",
                "issued_at": "2020-01-01T00:00:00.000000Z",
                "user": {"id": "u1", "name": "builder", "domain": domain},
                "project": {"id": "p1", "name": "images", "domain": domain},
                "catalog": catalog,
            }
        }
        data = json.dumps(token).encode()
        self.send_response(201)
        self.send_header("X-Subject-Token", "fake-token")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def keystone() -> Iterator[http.server.HTTPServer]:
    for _ in range(20):
        host = f"127.0.0.{random.randint(2, 250)}"
        try:
            server = http.server.HTTPServer((host, 0), _FakeKeystone)
            break
        except OSError:
            continue
    else:
        pytest.fail("no free 127.0.0.x address for the fake Keystone")
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _openrc(server: http.server.HTTPServer) -> dict[str, str]:
    host, port = server.server_address[:2]
    return {
        "OS_AUTH_URL": f"http://{host}:{port}/v3",
        "OS_USERNAME": "builder",
        "OS_PASSWORD": "not-a-secret",
        "OS_PROJECT_NAME": "images",
        "OS_USER_DOMAIN_NAME": "Default",
        "OS_PROJECT_DOMAIN_NAME": "Default",
    }


@pytest.mark.parametrize("source", SOURCES)
def test_full_validate_knows_every_argument_and_takes_openrc_credentials(
    source, tmp_path, keystone
):
    """Without -syntax-only the openstack builder checks each argument and logs in: once,
    for the one source -only names (Packer 1.6 accepts an -only that matches nothing)."""
    result = packer_validate(
        TEMPLATE,
        tmp_path,
        f"-only={source}",
        "-var=source_image=Ubuntu 24.04",
        "-var=flavor=m1.small",
        '-var=networks=["11111111-2222-3333-4444-555555555555"]',
        syntax_only=False,
        **_openrc(keystone),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    logins = keystone.requests  # type: ignore[attr-defined]
    assert len(logins) == 1 and logins[0]["path"] == "/v3/auth/tokens"
    user = logins[0]["body"]["auth"]["identity"]["password"]["user"]  # type: ignore[index]
    assert user["name"] == "builder"


def test_full_validate_without_only_checks_both_sources(tmp_path, keystone):
    result = packer_validate(
        TEMPLATE,
        tmp_path,
        "-var=source_image=x",
        "-var=flavor=m1.small",
        syntax_only=False,
        **_openrc(keystone),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(keystone.requests) == len(SOURCES)  # type: ignore[attr-defined]


def test_full_validate_takes_a_clouds_yaml_entry(tmp_path, keystone):
    host, port = keystone.server_address[:2]
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  images:\n    auth:\n"
        f"      auth_url: http://{host}:{port}/v3\n"
        "      username: from-clouds-yaml\n      password: not-a-secret\n"
        "      project_name: images\n      user_domain_name: Default\n"
        "      project_domain_name: Default\n"
    )
    result = packer_validate(
        TEMPLATE,
        tmp_path,
        "-only=openstack.rocky",
        "-var=source_image=Rocky-9",
        "-var=flavor=m1.small",
        syntax_only=False,
        OS_CLOUD="images",
        OS_CLIENT_CONFIG_FILE=str(clouds),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    user = keystone.requests[0]["body"]["auth"]["identity"]["password"]["user"]  # type: ignore[attr-defined]
    assert user["name"] == "from-clouds-yaml"


def test_full_validate_refuses_an_unknown_argument_and_a_missing_variable(tmp_path, keystone):
    template = tmp_path / TEMPLATE.name
    text = TEMPLATE.read_text()
    template.write_text(
        text.replace("  flavor              =", "  flavour = var.flavor\n  flavor =", 1)
    )
    result = packer_validate(
        template,
        tmp_path,
        "-var=source_image=x",
        "-var=flavor=m1.small",
        syntax_only=False,
        **_openrc(keystone),
    )
    assert result.returncode != 0
    assert '"flavour" is not expected' in result.stdout + result.stderr

    missing = packer_validate(
        TEMPLATE,
        tmp_path,
        "-var=source_image=x",
        syntax_only=False,
        **_openrc(keystone),
    )
    assert missing.returncode != 0
    assert "flavor" in missing.stdout + missing.stderr


# --- what the templates say --------------------------------------------------------


def test_template_runs_every_script_and_uploads_pins_and_units():
    text = TEMPLATE.read_text()
    order = _build_order(TEMPLATE)
    assert sorted(order) == sorted(script.name for script in SCRIPTS)
    assert order[-2:] == ["write-image-release.sh", "finish-image.sh"]
    assert '"${path.root}/../pyproject.toml"' in text
    assert '"${path.root}/../infra/units/"' in text
    assert '"${path.root}/scripts/"' in text


def test_template_defaults_follow_the_stack_defaults_and_hold_no_credentials():
    text = TEMPLATE.read_text()
    etcd_default = re.search(r'variable "etcd_version" \{[^}]*default\s*=\s*"([^"]+)"', text)
    assert etcd_default and etcd_default.group(1) == DEFAULT_ETCD
    assert (
        re.search(r"ETCD_VERSION:-([0-9.]+)", (SCRIPTS_DIR / "install-etcd.sh").read_text())[1]
        == DEFAULT_ETCD
    )
    assert "required_plugins" not in text  # Packer 1.6 does not know the block
    settings = "\n".join(line for line in text.lower().splitlines() if not line.startswith("#"))
    for secret in ("password", "os_", "application_credential", "token", "secret"):
        assert secret not in settings


def test_checksum_list_covers_the_default_version_on_both_architectures():
    lines = [
        line.split()
        for line in SUMS_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for digest, name in lines:
        assert re.fullmatch(r"[0-9a-f]{64}", digest), name
        assert re.fullmatch(r"etcd-v3\.5\.\d+-linux-(amd64|arm64|ppc64le)\.tar\.gz", name)
    names = [name for _, name in lines]
    assert len(names) == len(set(names))
    for arch in ("amd64", "arm64"):
        assert f"etcd-v{DEFAULT_ETCD}-linux-{arch}.tar.gz" in names


# --- shellcheck --------------------------------------------------------------------


def test_scripts_are_shellcheck_clean():
    shellcheck = _tool("shellcheck")
    scripts = sorted(SCRIPTS_DIR.glob("*.sh"))
    result = subprocess.run(
        [shellcheck, "--external-sources", f"--source-path={SCRIPTS_DIR}", *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for script in SCRIPTS:
        head = script.read_text().splitlines()[:40]
        assert head[0] == "#!/bin/sh"
        assert "set -eu" in head


def test_shellcheck_catches_a_broken_script(tmp_path):
    shellcheck = _tool("shellcheck")
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/bin/sh\nset -eu\nfor f in $(ls *.txt); do rm $f; done\n")
    result = subprocess.run([shellcheck, str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode != 0


# --- the scripts in a fake root ----------------------------------------------------

STUB_HEADER = '#!/bin/sh\nprintf "%s\\n" "${0##*/} $*" >>"$STUB_LOG"\n'
# What an installed package brings: its name in the package list and, when nothing
# by that name is on PATH yet, a command of that name (openssl, netdata...).
PROVIDE = """
provide() {
    echo "$1" >>"$STUB_STATE/packages"
    bin=$(dirname "$0")
    [ -e "$bin/$1" ] && return 0
    printf '#!/bin/sh\\nexit 0\\n' >"$bin/$1"
    chmod +x "$bin/$1"
}
"""

STUBS: dict[str, str] = {
    "apt-get": PROVIDE
    + """
command=""
while [ $# -gt 0 ]; do
    case $1 in
        -o) shift ;;
        -*) ;;
        *) if [ -z "$command" ]; then command=$1
           elif [ "$command" = install ]; then provide "$1"; fi ;;
    esac
    shift
done
exit 0
""",
    "dnf": PROVIDE
    + """
case $1 in
    install)
        shift
        for arg in "$@"; do
            case $arg in -*) ;; *) provide "$arg" ;; esac
        done ;;
esac
exit 0
""",
    "dpkg-query": """
name=$(eval "echo \\${$#}")
grep -qx "$name" "$STUB_STATE/packages" 2>/dev/null || exit 1
case "$*" in
    *Status*) printf 'install ok installed' ;;
    *Version*) printf '1.43.2-1stub' ;;
esac
""",
    "rpm": """
name=$(eval "echo \\${$#}")
if ! grep -qx "$name" "$STUB_STATE/packages" 2>/dev/null; then
    echo "package $name is not installed"
    exit 1
fi
case "$*" in *--qf*) printf '1.47.0-1stub.el9' ;; *) echo "$name-stub" ;; esac
""",
    "curl": """
out=""; url=""
while [ $# -gt 0 ]; do
    case $1 in -o) out=$2; shift ;; -*) ;; *) url=$1 ;; esac
    shift
done
[ -f "$STUB_DOWNLOADS/${url##*/}" ] || { echo "curl: (22) 404 $url" >&2; exit 22; }
cp "$STUB_DOWNLOADS/${url##*/}" "$out"
""",
    "wget": """
out=""; url=""
while [ $# -gt 0 ]; do
    case $1 in -O) out=$2; shift ;; -*) ;; *) url=$1 ;; esac
    shift
done
[ -f "$STUB_DOWNLOADS/${url##*/}" ] || exit 8
cp "$STUB_DOWNLOADS/${url##*/}" "$out"
""",
    "sha256sum": 'exec "$STUB_REAL/sha256sum" "$@"\n',
    "systemctl": """
for arg in "$@"; do
    case $arg in --root=* | --quiet | -q) ;; *) set -- "$@" "$arg" ;; esac
    shift
done
case $1 in
    is-enabled) grep -qx "$2" "$STUB_STATE/enabled" 2>/dev/null ;;
    enable) echo "$2" >>"$STUB_STATE/enabled" ;;
    daemon-reload) ;;
    *) echo "systemctl stub: $1 not expected" >&2; exit 1 ;;
esac
""",
    "useradd": """
root=""; name=""
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=$2; shift ;;
        --home-dir | --shell) shift ;;
        -*) ;;
        *) name=$1 ;;
    esac
    shift
done
echo "$name:x:999:999::/var/lib/etcd-autoscale:/usr/sbin/nologin" >>"$root/etc/passwd"
""",
    "chown": "exit 0\n",
    "uname": """
[ "$1" = -m ] && { echo "${STUB_MACHINE:-x86_64}"; exit 0; }
exec "$STUB_REAL/uname" "$@"
""",
    # The interpreter: real Python for everything but `-m venv`, which makes a fake
    # venv whose pip records what it would install.
    "python3": """
if [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin"
    printf '#!/bin/sh\\nexec "%s" "$@"\\n' "$STUB_PYTHON" >"$3/bin/python3"
    cp "$3/bin/python3" "$3/bin/python"
    cat >"$3/bin/pip" <<'EOF'
#!/bin/sh
printf "%s\\n" "pip $*" >>"$STUB_LOG"
venv=$(dirname "$(dirname "$0")")
case $1 in
    install) while [ $# -gt 0 ]; do [ "$1" = -r ] && cp "$2" "$venv/installed.txt"; shift; done ;;
    freeze) cat "$venv/installed.txt" ;;
esac
EOF
    chmod +x "$3/bin/python3" "$3/bin/python" "$3/bin/pip"
    exit 0
fi
exec "$STUB_PYTHON" "$@"
""",
}
STUBS["python3.11"] = STUBS["python3"]

# Host tools that change nothing outside the paths they are given.
SAFE_TOOLS = (
    "awk cat chmod cmp cp dirname grep gzip mkdir mktemp mv rm sed sort stat tar tr ls"
).split()

OS_RELEASE = {
    "ubuntu": 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n',
    "rocky": 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n',
    "almalinux": 'NAME="AlmaLinux"\nID="almalinux"\nID_LIKE="rhel centos fedora"\n'
    'VERSION_ID="9.4"\n',
}
# Ubuntu's /bin/sh is dash, EL9's is bash: run the scripts the way each one would.
SHELLS = {"ubuntu": "/bin/sh", "rocky": "bash", "almalinux": "bash"}

INSTALL_CALLS = re.compile(
    r"^(apt-get .*\b(update|install)\b|dnf install|curl|wget|useradd|chown|pip install"
    r"|python3(\.11)? -m venv|systemctl .*\benable\b|systemctl .*daemon-reload)"
)


def fake_etcd_tarball(downloads: Path, version: str, arch: str = "amd64") -> str:
    """A release-shaped tarball whose `etcd --version` answers like the real one."""
    name = f"etcd-v{version}-linux-{arch}"
    staging = downloads / "staging" / name
    staging.mkdir(parents=True, exist_ok=True)
    for tool in ("etcd", "etcdctl", "etcdutl"):
        path = staging / tool
        path.write_text(
            f'#!/bin/sh\n[ "$1" = --version ] && printf "{tool} Version: {version}\\n'
            'Git SHA: fake\\nGo Version: go1.22\\n"\nexit 0\n'
        )
        path.chmod(0o755)
    tarball = downloads / f"{name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(staging, arcname=name)
    return hashlib.sha256(tarball.read_bytes()).hexdigest()


@dataclass
class FakeNode:
    """A node's file tree under `root` and the recorded calls of the stubs."""

    base: Path
    distro: str
    root: Path = field(init=False)
    source: Path = field(init=False)
    state: Path = field(init=False)
    downloads: Path = field(init=False)
    log: Path = field(init=False)
    bin: Path = field(init=False)
    sums: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.source = self.base / "upload"
        self.state = self.base / "state"
        self.downloads = self.base / "downloads"
        self.log = self.state / "calls.log"
        self.bin = self.base / "bin"
        for directory in (self.root / "etc", self.source, self.state, self.downloads, self.bin):
            directory.mkdir(parents=True)
        (self.base / "tmp").mkdir()
        (self.root / "etc" / "os-release").write_text(OS_RELEASE[self.distro])
        (self.root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (self.root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        self.log.touch()
        real = self.base / "real"
        real.mkdir()
        for tool in SAFE_TOOLS:
            host = shutil.which(tool)
            assert host, f"host tool {tool} missing"
            (self.bin / tool).symlink_to(host)
        for tool in ("sha256sum", "uname"):
            (real / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
        for name, body in STUBS.items():
            stub = self.bin / name
            stub.write_text(STUB_HEADER + body.lstrip("\n"))
            stub.chmod(0o755)
        # What the template uploads to /tmp/autoscale-etcd.
        shutil.copy(PROJECT_DIR / "pyproject.toml", self.source / "pyproject.toml")
        shutil.copytree(UNITS_DIR, self.source / "units")
        self.add_release(DEFAULT_ETCD)

    def add_release(self, version: str) -> None:
        self.sums[version] = fake_etcd_tarball(self.downloads, version)
        (self.source / "etcd-sha256sums.txt").write_text(
            "".join(f"{digest}  etcd-v{v}-linux-amd64.tar.gz\n" for v, digest in self.sums.items())
        )

    def run(
        self, script: str, check: bool = True, **env: str
    ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        """Run one provisioning script; returns the result and the calls it made."""
        before = len(self.log.read_text().splitlines())
        environment = {
            "PATH": str(self.bin),
            "HOME": str(self.base),
            "TMPDIR": str(self.base / "tmp"),
            "LC_ALL": "C",
            "AUTOSCALE_ROOT": str(self.root),
            "AUTOSCALE_SOURCE": str(self.source),
            "STUB_LOG": str(self.log),
            "STUB_STATE": str(self.state),
            "STUB_DOWNLOADS": str(self.downloads),
            "STUB_REAL": str(self.base / "real"),
            "STUB_PYTHON": sys.executable,
            "IMAGE_NAME": "autoscale-etcd-test-image",
            "IMAGE_BUILT_AT": "20260101-0000",
            **env,
        }
        shell = shutil.which(SHELLS[self.distro]) or SHELLS[self.distro]
        result = subprocess.run(
            [shell, str(SCRIPTS_DIR / script)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{script}: {result.stderr}"
        calls = self.log.read_text().splitlines()[before:]
        return result, calls

    def snapshot(self) -> dict[str, tuple[str, ...]]:
        """Every path under the root (and the stubs' state) with type, mode and content."""
        seen: dict[str, tuple[str, ...]] = {}
        for base in (self.root, self.state):
            for path in sorted(base.rglob("*")):
                if path == self.log:
                    continue
                info = path.lstat()
                key = str(path.relative_to(self.base))
                if stat.S_ISLNK(info.st_mode):
                    seen[key] = ("link", os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    seen[key] = ("dir", oct(info.st_mode & 0o7777))
                else:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    seen[key] = ("file", oct(info.st_mode & 0o7777), digest)
        return seen

    def packages(self) -> list[str]:
        """Installed package names, in the order they were installed."""
        path = self.state / "packages"
        return path.read_text().split() if path.exists() else []


@pytest.fixture(params=["ubuntu", "rocky"])
def node(request, tmp_path) -> FakeNode:
    if not UNITS_DIR.is_dir() or not list(UNITS_DIR.glob("*.service")):
        pytest.fail("infra/units/*.service missing: the template uploads that directory")
    return FakeNode(tmp_path, request.param)


def test_every_script_twice_second_run_installs_nothing_and_changes_nothing(node):
    order = _build_order(TEMPLATE)
    for script in order:
        before = node.snapshot()
        _, first_calls = node.run(script)
        after_first = node.snapshot()
        did = [call for call in first_calls if INSTALL_CALLS.match(call)]
        assert did or after_first != before, f"{script} did nothing on its first run"
        _, second_calls = node.run(script)
        assert node.snapshot() == after_first, f"{script} changed the tree on its second run"
        again = [call for call in second_calls if INSTALL_CALLS.match(call)]
        assert again == [], f"{script} installed again on its second run: {again}"


def _run_all(node: FakeNode, **env: str) -> list[str]:
    calls: list[str] = []
    for script in _build_order(TEMPLATE):
        calls += node.run(script, **env)[1]
    return calls


def test_end_state_of_an_image(node):
    calls = _run_all(node)
    root = node.root
    # etcd: the pinned release, from etcd's release URL, verified, with its user and dir.
    url = f"{RELEASES}/v{DEFAULT_ETCD}/etcd-v{DEFAULT_ETCD}-linux-amd64.tar.gz"
    downloads = [c for c in calls if c.startswith(("curl", "wget"))]
    assert len(downloads) == 1 and downloads[0].endswith(f" {url}")
    assert any(c.startswith("sha256sum -c") for c in calls)
    for tool in ("etcd", "etcdctl", "etcdutl"):
        assert (root / "usr/local/bin" / tool).stat().st_mode & 0o777 == 0o755
    assert "etcd:" in (root / "etc/passwd").read_text()
    assert (root / "var/lib/etcd-autoscale").is_dir()
    assert (root / "var/lib/etcd-autoscale").stat().st_mode & 0o777 == 0o700
    assert EtcdSettings().data_dir == "/var/lib/etcd-autoscale"
    # netdata from the distribution, enabled; EPEL first on EL9.
    packages = node.packages()
    assert "netdata" in packages
    if node.distro == "rocky":
        assert packages.index("epel-release") < packages.index("netdata")
        assert "python3.11" in packages
        assert not any(c.startswith(("apt-get", "dpkg-query")) for c in calls)
    else:
        assert "python3-venv" in packages
        assert not any(c.startswith(("dnf", "rpm")) for c in calls)
    assert "netdata.service" in (node.state / "enabled").read_text().split()
    # The venv: exactly pyproject's pins, nothing retyped.
    venv = root / "opt/autoscale-etcd/venv"
    assert (venv / "bin/python3").exists()  # what autoscale-agent.service runs
    pins = _pyproject_pins()
    assert (root / "opt/autoscale-etcd/requirements.txt").read_text().split() == pins
    assert (venv / "installed.txt").read_text().split() == pins
    # The units, as infra/units/ has them; none enabled (cloud-init starts them).
    for unit in UNITS_DIR.iterdir():
        assert (root / "etc/systemd/system" / unit.name).read_bytes() == unit.read_bytes()
    assert not set((node.state / "enabled").read_text().split()) & {
        u.name for u in UNITS_DIR.iterdir()
    }
    # What the units run and run as is in the image.
    for unit in UNITS_DIR.glob("*.service"):
        text = unit.read_text()
        for binary in re.findall(r"^ExecStart=(/(?:usr/local|opt)/\S+)", text, re.M):
            assert os.access(root / binary.lstrip("/"), os.X_OK), f"{unit.name}: {binary}"
        for user in re.findall(r"^User=(\S+)", text, re.M):
            assert f"\n{user}:" in "\n" + (root / "etc/passwd").read_text(), unit.name
    assert {"openssl", "ca-certificates"} <= set(packages)
    # The image forgets its build VM's identity.
    assert (root / "etc/machine-id").read_text() == ""


def test_image_release_marker_is_shell_readable_and_says_what_is_installed(node):
    _run_all(node)
    marker = node.root / "etc/autoscale-etcd/image-release"
    script = '. "$1"; printf \'%s|%s|%s|%s|%s|%s\' "$ETCD_VERSION" "$AGENT_REQUIREMENTS" '
    script += '"$NETDATA_VERSION" "$UNITS" "$OS_ID" "$AGENT_VENV"'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(marker)], capture_output=True, text=True, check=True
    ).stdout.split("|")
    etcd, requirements, netdata, units, os_id, venv = out
    assert etcd == DEFAULT_ETCD
    assert requirements.split() == _pyproject_pins()
    assert netdata == {"ubuntu": "1.43.2-1stub", "rocky": "1.47.0-1stub.el9"}[node.distro]
    assert sorted(units.split()) == sorted(u.name for u in UNITS_DIR.iterdir())
    assert os_id == node.distro
    assert venv == "/opt/autoscale-etcd/venv"


def test_a_tarball_with_the_wrong_checksum_is_refused(node):
    wrong = "0" * 64
    result, calls = node.run("install-etcd.sh", check=False, ETCD_SHA256=wrong)
    assert result.returncode != 0
    assert "sha256 mismatch" in result.stderr
    assert any(c.startswith("curl") for c in calls)
    assert not (node.root / "usr/local/bin/etcd").exists()


def test_a_version_without_a_listed_checksum_is_refused_before_any_download(node):
    result, calls = node.run("install-etcd.sh", check=False, ETCD_VERSION="3.5.99")
    assert result.returncode != 0
    assert "no sha256 for etcd-v3.5.99-linux-amd64.tar.gz" in result.stderr
    assert not any(c.startswith(("curl", "wget")) for c in calls)


def test_not_a_3_5_release_is_refused(node):
    result, _ = node.run("install-etcd.sh", check=False, ETCD_VERSION="3.6.0")
    assert result.returncode != 0
    assert "3.5.x release expected" in result.stderr


def test_arm64_takes_the_arm64_tarball(node):
    digest = fake_etcd_tarball(node.downloads, DEFAULT_ETCD, arch="arm64")
    _, calls = node.run("install-etcd.sh", STUB_MACHINE="aarch64", ETCD_SHA256=digest)
    assert any(c.endswith(f"etcd-v{DEFAULT_ETCD}-linux-arm64.tar.gz") for c in calls)


def test_a_new_etcd_version_or_new_pins_are_installed_on_a_rerun(node):
    _run_all(node)
    node.add_release("3.5.18")
    _, calls = node.run("install-etcd.sh", ETCD_VERSION="3.5.18")
    assert any(c.startswith("curl") and "v3.5.18" in c for c in calls)
    version = subprocess.run(
        [str(node.root / "usr/local/bin/etcd"), "--version"], capture_output=True, text=True
    ).stdout
    assert "etcd Version: 3.5.18" in version

    pyproject = node.source / "pyproject.toml"
    pyproject.write_text(re.sub(r'"pydantic==[^"]+"', '"pydantic==2.0.0"', pyproject.read_text()))
    _, calls = node.run("install-agent-venv.sh")
    assert any(c.startswith("pip install") for c in calls)
    installed = (node.root / "opt/autoscale-etcd/venv/installed.txt").read_text().split()
    assert "pydantic==2.0.0" in installed


def test_an_unpinned_dependency_is_refused(node):
    pyproject = node.source / "pyproject.toml"
    text = pyproject.read_text()
    pin = re.search(r'"(pydantic==[^"]+)"', text)
    assert pin, "pyproject.toml pins pydantic"
    pyproject.write_text(text.replace(pin.group(1), "pydantic>=2"))
    result, calls = node.run("install-agent-venv.sh", check=False)
    assert result.returncode != 0
    assert "must pin every package" in result.stderr
    assert not (node.root / "opt/autoscale-etcd/venv").exists()
    assert not any(c.startswith("pip") for c in calls)


def test_alma_is_handled_like_rocky(tmp_path):
    node = FakeNode(tmp_path, "almalinux")
    _, calls = node.run("install-netdata.sh")
    assert [c for c in calls if c.startswith("dnf install")] == [
        "dnf install -y -q epel-release",
        "dnf install -y -q netdata",
    ]


def test_an_unknown_distribution_is_refused(tmp_path):
    node = FakeNode(tmp_path, "ubuntu")
    (node.root / "etc/os-release").write_text("ID=gentoo\n")
    result, calls = node.run("install-netdata.sh", check=False)
    assert result.returncode != 0
    assert "unsupported distribution" in result.stderr
    assert calls == []
