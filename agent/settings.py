"""The one document every node reads: `AgentSettings`, written as JSON by the infra.

The agent never sees Pulumi or the stack file. `infra.settings.agent_settings()` is
the only function that builds this document; the lab calls the same function.
Nothing here imports from `infra` or Pulumi.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    field_serializer,
    model_validator,
)

from agent.files import atomic_write

Comparator = Literal["<", ">", "==", "<=", ">="]
Scheme = Literal["http", "https"]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]

NETDATA_NAME_PATTERN = r"^NETDATA_[A-Z0-9_]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsFiles(_Strict):
    """Where the node keeps its CA and its own certificate (issued at boot for its IP)."""

    ca_file: str
    cert_file: str
    key_file: str


class EtcdSettings(_Strict):
    client_port: Port = 12379
    peer_port: Port = 12380
    client_scheme: Scheme = "http"
    peer_scheme: Scheme = "http"
    data_dir: str = "/var/lib/etcd-autoscale"
    binary: str = "etcd"
    cluster_token: str = "autoscale-etcd"
    tls: TlsFiles | None = None
    service: Literal["systemd", "subprocess"] = "systemd"
    """How the agent runs etcd: the node's systemd unit, or a child process (tests, lab)."""
    heartbeat_ms: Annotated[int, Field(ge=10)] = 100
    election_ms: Annotated[int, Field(ge=50)] = 1000
    quota_backend_bytes: Annotated[int, Field(ge=0)] = 2 * 2**30
    defrag_free_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    """A member's backend is defragmented once this share of its file is free pages (what
    compaction left behind: etcd's dbSize against dbSizeInUse)..."""
    defrag_min_bytes: Annotated[int, Field(ge=0)] = 64 * 2**20
    """...and the file is at least this large (a small file's free pages cost nothing)."""

    @model_validator(mode="after")
    def _check(self) -> EtcdSettings:
        if self.client_port == self.peer_port:
            raise ValueError(
                f"client_port and peer_port are both {self.client_port}; they must differ"
            )
        if "https" in (self.client_scheme, self.peer_scheme) and self.tls is None:
            raise ValueError("https needs tls files (ca_file, cert_file, key_file)")
        return self


class MetricSettings(_Strict):
    """The scale-down metric: netdata's allmetrics name, compared as a number."""

    name: Annotated[str, Field(pattern=NETDATA_NAME_PATTERN)] = "NETDATA_SYSTEM_CPU_IDLE"
    threshold: float = 90.0
    comparator: Comparator = ">"
    window: Annotated[int, Field(ge=0)] = 60
    netdata_url: str = "http://127.0.0.1:19999"
    timeout: PositiveSeconds = 5.0
    scope: Literal["cluster", "node"] = "cluster"
    """cluster: the members' published readings decide, by their mean (the horizontal
    autoscaler's rule: the average against a target); node: this node's own reading."""


class ScalingSettings(_Strict):
    capacity: Annotated[int, Field(ge=1)] = 3
    min_cluster: Annotated[int, Field(ge=1)] = 3
    max_cluster: Annotated[int, Field(ge=1)] = 5
    scaledownperiod: PositiveSeconds = 200
    lockattemptperiod: PositiveSeconds = 10
    scaleupcooldown: PositiveSeconds = 240
    retries: Annotated[int, Field(ge=1)] = 10
    failtolerance: Annotated[int, Field(ge=5)] = 20
    dead_member_periods: Annotated[int, Field(ge=1)] = 6
    join_timeout: PositiveSeconds = 900
    """Seconds a group server may take from its creation to being a member (a boot with
    installs, the join): after it, a server that is not a member is replaced, and an entry
    that never started is no longer waited for."""

    @model_validator(mode="after")
    def _check(self) -> ScalingSettings:
        if not self.min_cluster <= self.capacity <= self.max_cluster:
            raise ValueError(
                f"need min_cluster ({self.min_cluster}) <= capacity ({self.capacity})"
                f" <= max_cluster ({self.max_cluster})"
            )
        if self.scaledownperiod < self.lockattemptperiod:
            raise ValueError("scaledownperiod must be >= lockattemptperiod")
        return self


class HookSettings(_Strict):
    """Paths on the node of the user's scripts (installed there by cloud-init)."""

    configscript: str | None = None
    cleanupscript: str | None = None
    proxyconfig: str | None = None
    """Run once on a proxy node when its gRPC proxy first serves (role `proxy`)."""
    timeout: PositiveSeconds = 600


class BackupSettings(_Strict):
    """Snapshots of etcd to Swift (agent/backup.py). The stack keys `backups`,
    `backup_period`, `backup_keep`; the container is the one the program creates."""

    kind: Literal["none", "swift"] = "none"
    period: PositiveSeconds = 1800
    """Seconds between snapshots: the most a lost cluster loses (its RPO)."""
    keep: Annotated[int, Field(ge=1)] = 48
    """The newest `keep` snapshots stay in the container; older ones are deleted once a new
    one is uploaded and verified (48: a day at the default period)."""
    container: str = ""
    segment_bytes: Annotated[int, Field(ge=2**20, le=5 * 2**30)] = 2**30
    """A larger snapshot goes as a static large object of segments of this size."""
    timeout: PositiveSeconds = 900
    """Seconds a snapshot and its upload may take in all (the `backup` lock's lease)."""
    recovery: Literal["manual", "auto"] = "manual"
    """A group whose whole cluster is gone (agent/disaster.py): `manual` logs the one command
    that restores the newest snapshot; `auto` restores it once the cloud confirms every
    server of the snapshot's cluster gone and every server of the group says it holds no
    member data."""

    @model_validator(mode="after")
    def _check(self) -> BackupSettings:
        if self.kind == "swift" and not self.container:
            raise ValueError("backups 'swift' needs a container name")
        return self


class OpenStackCloud(_Strict):
    """Where the agent finds its own server and the Heat group it belongs to.

    Authentication is a Keystone v3 application credential made by the program
    for the agents alone; no user password reaches a node.
    """

    kind: Literal["openstack"] = "openstack"
    auth_url: str
    region: str = "RegionOne"
    interface: Literal["public", "internal", "admin"] = "public"
    application_credential_id: str
    application_credential_secret: SecretStr
    stack_id: str
    """Heat stack (name/id) that owns the autoscaling group."""
    group_resource: str = "etcd_group"
    scale_down_policy: str = "scale_down"
    scale_up_policy: str = "scale_up"
    """Signalled through Heat's API unless `scale_up_url` (a webhook) is set."""
    scale_up_url: str | None = None
    settings_resource: str = "agent_settings"
    """The stack's resource whose metadata holds the settings the agents follow."""
    bundle_resource: str = "agent_bundle"
    """The stack's resource whose metadata holds the agent bundle those settings name."""
    metadata_url: str = "http://169.254.169.254"
    instance_data: str = "/run/cloud-init/instance-data.json"
    """cloud-init's instance data, read when the metadata service does not answer (clouds
    with a config drive only): the server's uuid and name, and its EC2 local-ipv4."""
    verify_tls: bool = True
    cacert: str | None = None
    """A PEM file of the CA that signs the cloud's API certificates (a private CA), as in
    clouds.yaml; None: the system's trust store."""

    @field_serializer("application_credential_secret")
    def _reveal_on_request(self, value: SecretStr, info: SerializationInfo) -> str:
        context = info.context or {}
        if context.get("reveal_secrets"):
            return value.get_secret_value()
        return str(value)


CloudSettings = OpenStackCloud
"""The one cloud the agent knows: OpenStack (the lab's cloud speaks its APIs too)."""


class AgentSettings(_Strict):
    """Everything one node's agent needs, and nothing it doesn't."""

    schema_version: Literal[1] = 1
    cluster_name: str
    role: Literal["member", "proxy"] = "member"
    etcd: EtcdSettings = EtcdSettings()
    metric: MetricSettings = MetricSettings()
    scaling: ScalingSettings = ScalingSettings()
    hooks: HookSettings = HookSettings()
    backup: BackupSettings = BackupSettings()
    cloud: CloudSettings
    state_dir: str = "/var/lib/autoscale-etcd"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def to_json(self, *, reveal_secrets: bool = False) -> str:
        """The file's text; secrets are masked unless `reveal_secrets` (the node file)."""
        data = self.model_dump(mode="json", context={"reveal_secrets": reveal_secrets})
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AgentSettings:
        return cls.model_validate_json(text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AgentSettings:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the node file (mode 0600: it holds the cloud credential), whole or not at
        all: a running agent rewrites it when the stack's settings change."""
        atomic_write(path, self.to_json(reveal_secrets=True), mode=0o600, durable=True)

    def with_changes(self, **changes: Any) -> AgentSettings:
        """A copy with some top-level parts replaced, validated again."""
        data = self.model_dump(context={"reveal_secrets": True})
        data.update(changes)
        return AgentSettings.model_validate(data)


# --- the stack's settings document: what a running agent may take from it -----------------

NODE_LOCAL = frozenset(
    {
        "cloud",
        "state_dir",
        "etcd.data_dir",
        "etcd.binary",
        "etcd.service",
        "etcd.tls",
        "metric.netdata_url",
        "hooks.configscript",
        "hooks.cleanupscript",
        "hooks.proxyconfig",
    }
)
"""Where this node keeps things (its files, its credential): never taken from the stack's
document. A hook's presence comes with its file, in the user-data: a new server's."""

FIXED = frozenset(
    {
        "schema_version",
        "cluster_name",
        "role",
        "etcd.client_port",
        "etcd.peer_port",
        "etcd.client_scheme",
        "etcd.peer_scheme",
        "etcd.cluster_token",
    }
)
"""What a running cluster cannot change: every member's URLs, certificates and cluster
name are made of these. A change is refused (the agent keeps its value and says so)."""

AT_ETCD_START = frozenset({"etcd.heartbeat_ms", "etcd.election_ms", "etcd.quota_backend_bytes"})
"""etcd reads these when it starts: kept in the node's file, in force at etcd's next start
(a reboot, a new server)."""

ChangeKind = Literal["live", "at etcd start", "refused", "node-local"]


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in NODE_LOCAL:
            out |= _flat(value, f"{path}.")
        else:
            out[path] = value
    return out


def change_kind(path: str) -> ChangeKind:
    if path in NODE_LOCAL or path.startswith("cloud."):
        return "node-local"
    if path in FIXED:
        return "refused"
    if path in AT_ETCD_START:
        return "at etcd start"
    return "live"


def settings_changes(
    old: dict[str, Any], new: dict[str, Any]
) -> list[tuple[str, Any, Any, ChangeKind]]:
    """(dotted key, old value, new value, what a running agent does with it) for every
    key whose value differs between two settings documents (JSON dicts), sorted."""
    before, after = _flat(old), _flat(new)
    return [
        (key, before.get(key), after.get(key), change_kind(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def document_sha256(document: dict[str, Any]) -> str:
    """The sha256 a settings document names itself by: of its canonical JSON without it."""
    body = {k: v for k, v in document.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def adopt(current: AgentSettings, document: dict[str, Any]) -> tuple[AgentSettings, list[str]]:
    """`current` with what the stack's document (one role's settings, no `cloud`) changes
    that a running agent may take: live keys and those etcd reads at its next start; node
    paths and the fixed keys stay. Returns the new settings and one note per change."""
    mine = current.model_dump(mode="json", context={"reveal_secrets": True})
    merged = current.model_dump(mode="json", context={"reveal_secrets": True})
    present = _flat(document)
    notes: list[str] = []
    for key, old, new, kind in settings_changes(
        {k: v for k, v in mine.items() if k != "cloud"}, document
    ):
        if kind == "node-local":
            continue
        if kind == "refused":
            notes.append(f"{key} {old!r} -> {new!r} refused: a running cluster cannot change it")
            continue
        target = merged
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        if new is None and key not in present:
            continue  # a key the document does not have (an older program): keep ours
        target[leaf] = new
        when = "at etcd's next start" if kind == "at etcd start" else "now"
        notes.append(f"{key} {old!r} -> {new!r} ({when})")
    return AgentSettings.model_validate(merged), notes
