"""cloud-init for every node role: one `#cloud-config` document each (member, proxy, metrics).

A member's user-data holds what stays for the server's life: its cloud identity and
credential (the `cloud` part of its agent settings file, mode 0600), the systemd units of
`infra/units/`, the
user's hooks, netdata streaming to the metrics server when there is one, and, on a
plain image, the installs a Packer image already has (`infra/node/install.sh`: netdata,
a pinned etcd release checked against the repository's sha256 list, the agent's
virtualenv with the pins of pyproject.toml's [project.dependencies]).

Neither the agent nor its settings are in the user-data: the Heat stack holds both
(`infra.heat.AgentBundle`, `infra.heat.SettingsDocument`, made by `settings_document`
here), and `infra/node/fetch-agent.py`, written here, fetches them at first boot with the
agent's application credential: the settings document, then the bundle it names by
sha256 (installed only if it is that one); it writes the node's settings file (the
document's part for the node's role, with the user-data's `cloud`), and only then is the
agent started. So a `pulumi up` that changes a setting or the agent leaves the user-data,
hence the servers, as they are; the agents take the new settings from the stack.

What only the cloud knows at deploy time is written here as a token, `@@NAME@@`, and
Heat's `str_replace` puts the value in when it creates a server: the application
credential's secret reaches Heat as a stack parameter and lands only in the agent
settings file on the node. `HEAT_VALUES` maps each token to its HOT value.

Nova refuses user-data above 65,535 bytes once base64-encoded; this project keeps
each document under `BUDGET` bytes (32 KiB) as rendered, whatever the agent's size.
Reference: https://cloudinit.readthedocs.io/en/latest/reference/modules.html
"""

from __future__ import annotations

import json
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml

from agent.settings import AgentSettings, OpenStackCloud, document_sha256
from infra import heat
from infra.bundle import Bundle, minified
from infra.settings import (
    NODE_HOOK_DIR,
    NODE_TLS_DIR,
    PROJECT_DIR,
    StackSettings,
    agent_settings,
    etcd_checksums,
    script_path,
)

BUDGET = 32 * 1024
NODE_DIR = "/opt/autoscale-etcd"
AGENT_PYZ = "/var/lib/autoscale-etcd/agent.pyz"
"""Where the agent bundle lives: in the agent unit's state directory, which it may write
(ProtectSystem=strict keeps /opt read-only), so that it can take a new bundle."""
FETCHER = f"{NODE_DIR}/fetch-agent.py"
ETCD_SUMS = f"{NODE_DIR}/etcd-sha256sums.txt"
VENV_PYTHON = f"{NODE_DIR}/venv/bin/python3"
AGENT_CONFIG = "/etc/autoscale-etcd/agent.json"
NETDATA_STREAM_STAGED = "/etc/autoscale-etcd/netdata-stream.conf"
UNIT_DIR = "/etc/systemd/system"
UNITS_DIR = Path(__file__).resolve().parent / "units"
NODE_SCRIPTS_DIR = Path(__file__).resolve().parent / "node"
ETCD_DATA_DIR = "/var/lib/etcd-autoscale"
NETDATA_PORT = 19999

ETCD_UNIT = "etcd-autoscale.service"
AGENT_UNIT = "autoscale-agent.service"
HOOK_UNIT = "autoscale-hook@.service"
PROXY_UNIT = "etcd-autoscale-proxy.service"
UNITS_BY_ROLE: Mapping[str, tuple[str, ...]] = {
    "member": (ETCD_UNIT, AGENT_UNIT, HOOK_UNIT),
    "proxy": (PROXY_UNIT, AGENT_UNIT, HOOK_UNIT),
}

Role = Literal["member", "proxy", "metrics"]


class Token:
    """Placeholders in the user-data text, replaced at server creation (Heat's str_replace)."""

    AUTH_URL = "@@AUTH_URL@@"
    REGION = "@@REGION@@"
    CREDENTIAL_ID = "@@CREDENTIAL_ID@@"
    CREDENTIAL_SECRET = "@@CREDENTIAL_SECRET@@"
    STACK = "@@STACK@@"
    METRICS_HOST = "@@METRICS_HOST@@"
    NETDATA_API_KEY = "@@NETDATA_API_KEY@@"
    TLS_CA_CERT = "@@TLS_CA_CERT_B64@@"
    TLS_CA_KEY = "@@TLS_CA_KEY_B64@@"
    READY_URL = "@@READY_URL@@"
    READY_TOKEN = "@@READY_TOKEN@@"


HEAT_VALUES: Mapping[str, heat.Hot] = {
    Token.AUTH_URL: heat.get_param(heat.P.AUTH_URL),
    Token.REGION: heat.get_param(heat.P.REGION),
    Token.CREDENTIAL_ID: heat.get_param(heat.P.CREDENTIAL_ID),
    Token.CREDENTIAL_SECRET: heat.get_param(heat.P.CREDENTIAL_SECRET),
    # "name/id": the agents address the stack the way Heat's API paths do
    Token.STACK: heat.STACK_NAME_AND_ID,
    Token.METRICS_HOST: heat.get_param(heat.P.METRICS_HOST),
    Token.NETDATA_API_KEY: heat.get_param(heat.P.NETDATA_API_KEY),
    Token.TLS_CA_CERT: heat.get_param(heat.P.TLS_CA_CERT),
    Token.TLS_CA_KEY: heat.get_param(heat.P.TLS_CA_KEY),
    Token.READY_URL: heat.get_attr(heat.READY_HANDLE, "endpoint"),
    Token.READY_TOKEN: heat.get_attr(heat.READY_HANDLE, "token"),
}


def agent_requirements(pyproject: Path = PROJECT_DIR / "pyproject.toml") -> list[str]:
    """The agent's pinned dependencies: pyproject.toml [project.dependencies], the one place."""
    document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return list(document["project"]["dependencies"])


CLOUD_CA = "/etc/autoscale-etcd/cloud-ca.pem"
"""Where a node keeps the stack's `cacert` (the CA of the cloud's API certificates)."""
READY_FILE = "/etc/autoscale-etcd/ready.json"
"""The stack's agents_ready wait-condition handle: its signal URL and token (0600)."""


def node_agent_settings(
    stack: StackSettings, *, cluster_name: str, role: Literal["member", "proxy"] = "member"
) -> AgentSettings:
    """The agent settings of a node, its cloud part made of tokens Heat replaces."""
    cloud = OpenStackCloud(
        auth_url=Token.AUTH_URL,
        region=Token.REGION,
        application_credential_id=Token.CREDENTIAL_ID,
        application_credential_secret=Token.CREDENTIAL_SECRET,
        stack_id=Token.STACK,
        group_resource=heat.GROUP,
        scale_down_policy=heat.SCALE_DOWN,
        cacert=CLOUD_CA if stack.cacert else None,
    )
    return agent_settings(stack, cluster_name=cluster_name, cloud=cloud, role=role)


def without_comments(text: str) -> str:
    """A unit or shell script as the node needs it: no comment or blank lines (the
    repository keeps them); a shebang stays."""
    lines = text.splitlines()
    kept = [
        line
        for index, line in enumerate(lines)
        if line.strip()
        and not (line.lstrip().startswith("#") and not (index == 0 and line.startswith("#!")))
    ]
    return "\n".join(kept) + "\n"


def _file(path: str, content: str, permissions: str = "0644") -> dict[str, Any]:
    return {"path": path, "permissions": permissions, "content": content}


def cloud_json(settings: AgentSettings) -> str:
    """The settings file as the user-data writes it: the node's `cloud` (tokens Heat
    replaces) and role; the fetcher adds the stack's settings for the role."""
    data = {
        "cloud": settings.cloud.model_dump(mode="json", context={"reveal_secrets": True}),
        "role": settings.role,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"


def role_settings(settings: AgentSettings) -> dict[str, Any]:
    """One role's part of the stack's settings document: the settings without `cloud`."""
    data = settings.model_dump(mode="json", context={"reveal_secrets": True})
    del data["cloud"]
    return data


def settings_document(stack: StackSettings, *, cluster_name: str, bundle: Bundle) -> dict:
    """The stack's settings document (`heat.SettingsDocument`): every node role's settings
    and the bundle they run, named by its own sha256 (agent.settings.document_sha256)."""
    roles = {"member": role_settings(node_agent_settings(stack, cluster_name=cluster_name))}
    if stack.proxies:
        proxy = node_agent_settings(stack, cluster_name=cluster_name, role="proxy")
        roles["proxy"] = role_settings(proxy)
    document: dict[str, Any] = {
        "bundle_sha256": bundle.sha256,
        "etcd_version": stack.etcd_version,
        "roles": roles,
    }
    document["sha256"] = document_sha256(document)
    return document


def fetch_command(*, ready: bool = False) -> list[str]:
    """The node's fetch of its settings and of the agent bundle they name
    (infra/node/fetch-agent.py); `ready`: it signals the stack's agents_ready wait
    condition (members)."""
    command = [
        VENV_PYTHON,
        FETCHER,
        "--config",
        AGENT_CONFIG,
        "--settings-resource",
        heat.SETTINGS,
        "--resource",
        heat.AGENT_BUNDLE,
        "--out",
        AGENT_PYZ,
    ]
    return [*command, "--ready", READY_FILE] if ready else command


def fetcher_source() -> str:
    """fetch-agent.py as the node gets it: docstrings and comments left out."""
    name = "fetch-agent.py"
    return minified((NODE_SCRIPTS_DIR / name).read_text(encoding="utf-8"), name)


def etcd_sums(version: str) -> str:
    """The lines of packer/files/etcd-sha256sums.txt for `version` (every architecture)."""
    lines = etcd_checksums().get(version)
    if not lines:
        raise ValueError(f"etcd {version} has no sha256 in the repository's list")
    return "\n".join(lines) + "\n"


def _unit_files(role: Literal["member", "proxy"]) -> list[dict[str, Any]]:
    return [
        _file(f"{UNIT_DIR}/{name}", without_comments((UNITS_DIR / name).read_text("utf-8")))
        for name in UNITS_BY_ROLE[role]
    ]


def _hook_files(stack: StackSettings, keys: tuple[str, ...], base_dir: Path) -> list[dict]:
    files = []
    for key in keys:
        path = script_path(stack, key, base_dir)
        if path is not None:
            text = path.read_text(encoding="utf-8")
            files.append(_file(f"{NODE_HOOK_DIR}/{key}", text, "0750"))
    return files


def netdata_child_stream() -> str:
    """netdata stream.conf of a node: send every metric to the parent on the metrics server."""
    return (
        "[stream]\n"
        "    enabled = yes\n"
        f"    destination = {Token.METRICS_HOST}:{NETDATA_PORT}\n"
        f"    api key = {Token.NETDATA_API_KEY}\n"
    )


def netdata_parent_stream() -> str:
    """netdata stream.conf of the parent: accept children that know this stack's API key."""
    return (
        f"[{Token.NETDATA_API_KEY}]\n"
        "    enabled = yes\n"
        "    allow from = *\n"
        "    default memory mode = dbengine\n"
        "    health enabled by default = auto\n"
    )


_INSTALL_STREAM_CONF = (
    "install",
    "-m",
    "0640",
    "-g",
    "netdata",
    NETDATA_STREAM_STAGED,
    "/etc/netdata/stream.conf",
)
"""Puts the staged stream.conf (a member's, a proxy's or the parent's) where netdata reads it."""


def _node_document(
    stack: StackSettings,
    *,
    cluster_name: str,
    role: Literal["member", "proxy"],
    base_dir: Path,
) -> dict[str, Any]:
    https = "https" in (stack.etcdclientscheme, stack.etcdpeerscheme)
    settings = node_agent_settings(stack, cluster_name=cluster_name, role=role)
    files: list[dict[str, Any]] = [
        _file(AGENT_CONFIG, cloud_json(settings), "0600"),
        _file(FETCHER, fetcher_source()),
        *_unit_files(role),
    ]
    hooks = ("configscript", "cleanupscript") if role == "member" else ("proxyconfig",)
    files += _hook_files(stack, hooks, base_dir)
    if role == "member":
        ready = json.dumps(
            {"url": Token.READY_URL, "token": Token.READY_TOKEN, "condition": heat.READY}
        )
        files.append(_file(READY_FILE, ready, "0600"))
    if stack.cacert:
        path = Path(stack.cacert)
        pem = (path if path.is_absolute() else base_dir / path).read_text(encoding="ascii")
        files.append(_file(CLOUD_CA, pem))  # a CA certificate: public
    runcmd: list[list[str]] = []
    if not stack.prebuilt_image:
        install = without_comments((NODE_SCRIPTS_DIR / "install.sh").read_text("utf-8"))
        files += [
            _file(f"{NODE_DIR}/install.sh", install, "0755"),
            _file(ETCD_SUMS, etcd_sums(stack.etcd_version)),
        ]
        runcmd.append(
            ["sh", f"{NODE_DIR}/install.sh", stack.etcd_version, ETCD_SUMS, *agent_requirements()]
        )
    else:
        # the image brings etcd (packer/): say so at boot when it is not the stack's
        # `etcd_version`; and a new etcd_version is a new member definition (a roll)
        runcmd.append(
            [
                "sh",
                "-c",
                'v=$(/usr/local/bin/etcd --version | sed -n "s/^etcd Version: *//p");'
                f' [ "$v" = "{stack.etcd_version}" ] || echo "autoscale-etcd: the image\'s'
                f" etcd is $v, the stack's etcd_version {stack.etcd_version}\" >&2",
            ]
        )
    runcmd.append(["install", "-d", "-o", "etcd", "-g", "etcd", "-m", "0700", ETCD_DATA_DIR])
    if https:
        issue = without_comments((NODE_SCRIPTS_DIR / "issue-cert.sh").read_text("utf-8"))
        files += [
            {
                "path": f"{NODE_TLS_DIR}/ca.crt",
                "permissions": "0644",
                "encoding": "b64",
                "content": Token.TLS_CA_CERT,
            },
            {
                "path": f"{NODE_TLS_DIR}/ca.key",
                "permissions": "0600",
                "encoding": "b64",
                "content": Token.TLS_CA_KEY,
            },
            _file(f"{NODE_DIR}/issue-cert.sh", issue, "0755"),
        ]
        runcmd.append(["sh", f"{NODE_DIR}/issue-cert.sh", NODE_TLS_DIR, role])
    if stack.metrics_server:
        files.append(_file(NETDATA_STREAM_STAGED, netdata_child_stream(), "0600"))
        runcmd += [
            list(_INSTALL_STREAM_CONF),
            ["systemctl", "restart", "netdata"],
        ]
    # The agent starts only once its settings and bundle are fetched and checked.
    fetch = fetch_command(ready=role == "member")
    fetch_then_start = f"{shlex.join(fetch)} && systemctl enable --now"
    runcmd += [["systemctl", "daemon-reload"], ["sh", "-c", f"{fetch_then_start} {AGENT_UNIT}"]]
    return {
        "users": [
            "default",
            {"name": "etcd", "system": True, "shell": "/usr/sbin/nologin", "lock_passwd": True},
        ],
        "write_files": files,
        "runcmd": runcmd,
    }


class _CloudConfigDumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    )


_CloudConfigDumper.add_representer(str, _str)


def render(document: Mapping[str, Any], comment: str) -> str:
    """A `#cloud-config` document's text."""
    body = yaml.dump(dict(document), Dumper=_CloudConfigDumper, sort_keys=False, width=1 << 20)
    return f"#cloud-config\n# {comment}\n{body}"


@dataclass(frozen=True)
class NodeUserData:
    """One role's cloud-config text, and what Heat substitutes into it."""

    role: Role
    text: str

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8"))

    def heat(self) -> heat.UserData:
        params = {token: value for token, value in HEAT_VALUES.items() if token in self.text}
        return heat.UserData(self.text, params)


_NODE_COMMENTS = {
    "member": "autoscale-etcd member of {cluster}",
    "proxy": "etcd gRPC proxy of {cluster}",
}


def node_user_data(
    role: Literal["member", "proxy"],
    stack: StackSettings,
    *,
    cluster_name: str,
    base_dir: Path = PROJECT_DIR,
) -> NodeUserData:
    """An etcd member's or gRPC proxy's cloud-config."""
    document = _node_document(stack, cluster_name=cluster_name, role=role, base_dir=base_dir)
    comment = _NODE_COMMENTS[role].format(cluster=cluster_name)
    return NodeUserData(role, render(document, comment))


member_user_data = partial(node_user_data, "member")
"""An etcd member's cloud-config: `node_user_data("member", ...)`."""
proxy_user_data = partial(node_user_data, "proxy")
"""An etcd gRPC proxy's cloud-config: `node_user_data("proxy", ...)`."""


def metrics_user_data(stack: StackSettings, *, cluster_name: str) -> NodeUserData:
    """The netdata parent. Its API key token is replaced by the program (a secret output)."""
    runcmd: list[list[str]] = []
    if not stack.prebuilt_image:
        runcmd.append(["sh", "-c", "command -v netdata || apt-get install -y netdata"])
    runcmd += [
        list(_INSTALL_STREAM_CONF),
        ["sh", "-c", "printf '[web]\\n    bind to = *\\n' > /etc/netdata/netdata.conf"],
        ["systemctl", "restart", "netdata"],
    ]
    document = {
        "write_files": [_file(NETDATA_STREAM_STAGED, netdata_parent_stream(), "0600")],
        "runcmd": runcmd,
    }
    return NodeUserData("metrics", render(document, f"netdata parent of {cluster_name}"))
