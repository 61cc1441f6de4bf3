"""`StackSettings`: the stack config, read and validated in one place.

Every parameter of the original template's table is a key here with the same
name and meaning. Bad input is reported before anything is created, all of it at
once, each problem naming the key, the value and what is allowed.

This module imports Pulumi only inside `from_pulumi_config()`, so the lab and
the tests can read a `Pulumi.<stack>.yaml` without a Pulumi engine.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from agent.settings import (
    NETDATA_NAME_PATTERN,
    AgentSettings,
    BackupSettings,
    CloudSettings,
    EtcdSettings,
    HookSettings,
    MetricSettings,
    ScalingSettings,
    TlsFiles,
)

PROJECT = "autoscale-etcd"


def backup_container(cluster_name: str) -> str:
    """The Swift container of a cluster's snapshots (the program creates it)."""
    return f"{cluster_name}-etcd-backups"


PROJECT_DIR = Path(__file__).resolve().parent.parent
ETCD_SHA256SUMS = PROJECT_DIR / "packer" / "files" / "etcd-sha256sums.txt"
"""The sha256 of every etcd release tarball the nodes and images accept (one list)."""
_ETCD_SUM_LINE = re.compile(
    r"^(?P<sha256>[0-9a-f]{64})  etcd-v(?P<version>\d+\.\d+\.\d+)-linux-[a-z0-9]+\.tar\.gz$"
)


@cache
def etcd_checksums(path: Path = ETCD_SHA256SUMS) -> dict[str, tuple[str, ...]]:
    """etcd version -> its `sha256sum -c` lines in `path` (one per architecture)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _ETCD_SUM_LINE.match(line.strip())
        if match:
            found.setdefault(match["version"], []).append(line.strip())
    return {version: tuple(lines) for version, lines in found.items()}


def _zero_one_bool(value: Any) -> Any:
    """metrics_server and friends: 0/1/true/false, as the original template took them."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise ValueError("allowed: 0, 1, true or false")


def _json_list(value: Any) -> Any:
    """Pulumi hands structured config to programs as JSON text."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list: {exc.msg}") from exc
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _cidr(value: Any) -> Any:
    try:
        return str(ip_network(str(value), strict=False))
    except ValueError as exc:
        raise ValueError(f"allowed: a CIDR such as 192.0.2.0/24 ({exc})") from exc


def _empty_is_none(value: Any) -> Any:
    """Pulumi config has no null: an empty string leaves an optional key unset."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


ZeroOneBool = Annotated[bool, BeforeValidator(_zero_one_bool)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Name = Annotated[str, Field(min_length=1)]
OptionalName = Annotated[str | None, BeforeValidator(_empty_is_none)]
Cidr = Annotated[str, BeforeValidator(_cidr)]


class StackSettings(BaseModel):
    """One tenant's stack, as written in `Pulumi.<stack>.yaml` under `autoscale-etcd:`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- the original template's table (same names, same meaning) -------------
    capacity: Annotated[int, Field(ge=1)] = 3
    scaledownperiod: Seconds = 200
    etcdclientport: Port = 12379
    etcdpeerport: Port = 12380
    retries: Annotated[int, Field(ge=1)] = 10
    lockattemptperiod: Seconds = 10
    min_cluster: Annotated[int, Field(ge=1)] = 3
    max_cluster: Annotated[int, Field(ge=1)] = 5
    scaleupcooldown: Seconds = 240
    etcdclientscheme: Literal["http", "https"] = "http"
    etcdpeerscheme: Literal["http", "https"] = "http"
    proxies: Annotated[int, Field(ge=0, le=16)] = 0
    downmetric: Annotated[str, Field(pattern=NETDATA_NAME_PATTERN)] = "NETDATA_SYSTEM_CPU_IDLE"
    # Corrected defaults: the original `NETDATA_SYSTEM_CPU_IDLE < 10` removed the
    # busiest nodes. A node leaves when it is idle above 90 %.
    threshold: float = 90.0
    comparator: Literal["<", ">", "==", "<=", ">="] = ">"
    # Corrected default: Ceilometer dropped `cpu_util` in Stein; the default
    # alarm reads Gnocchi's `cpu` (ns of CPU time) with rate:mean.
    upmetric: Name = "cpu"
    metrics_server: ZeroOneBool = False
    failtolerance: Annotated[int, Field(ge=5)] = 20
    net_name: OptionalName = None
    image: Name
    sec_grps: Annotated[list[Name], BeforeValidator(_json_list)] = []
    instance_type: Name
    key_name: OptionalName = None
    configscript: Name = "hooks/configscript.sh"

    # --- what the new design adds ------------------------------------------------
    downmetric_window: Annotated[int, Field(ge=0)] = 60
    """Seconds averaged through netdata's /api/v1/data; 0 = the instantaneous value."""
    downmetric_scope: Literal["cluster", "node"] = "cluster"
    """cluster: scale down when the mean of the members' readings crosses the threshold;
    node: when the oldest server's own reading does (the original's per-node rule)."""
    dead_member_periods: Annotated[int, Field(ge=1)] = 6
    """A member failing its health check this many lockattemptperiods is dead. 60 s at the
    default period: longer than a Neutron agent's restart (the network blips) and than a
    guest's boot after Nova says ACTIVE again (a reboot), so neither replaces a server."""
    cleanupscript: OptionalName = "hooks/cleanupscript.sh"
    proxyconfig: OptionalName = "hooks/proxyconfig.sh"
    upthreshold: Annotated[float, Field(gt=0, le=100)] = 80.0
    """Scale-up when the group's mean CPU use is above this percentage."""
    alarm: Literal["gnocchi", "prometheus", "cpu_util", "none"] = "gnocchi"
    alarmperiod: Seconds = 300
    """The alarm's granularity: it must equal a granularity of the metric's archive policy
    (Ceilometer's cpu: ceilometer-low-rate, 5-minute points), else it has no data."""
    ssh_cidrs: Annotated[list[Cidr], BeforeValidator(_json_list)] = []
    client_cidrs: Annotated[list[Cidr], BeforeValidator(_json_list)] = []
    """CIDRs allowed on etcd's client port (the proxies' with proxies, else the members');
    servers in the stack's `clients` security group are allowed anyway."""
    create_network: ZeroOneBool = False
    network_cidr: Cidr = "10.42.0.0/24"
    external_network: OptionalName = None
    dns_nameservers: Annotated[list[Name], BeforeValidator(_json_list)] = []
    anti_affinity: Literal["soft-anti-affinity", "anti-affinity", "none"] = "soft-anti-affinity"
    public_key: OptionalName = None
    """When set, the program creates the keypair `key_name` from this public key."""
    prebuilt_image: ZeroOneBool = False
    """True for a Packer image: boot skips installing etcd, netdata and the venv."""
    etcd_version: Annotated[str, Field(pattern=r"^3\.[45]\.\d+$")] = "3.5.17"
    """etcd 3.5.x, or 3.4.x on a `prebuilt_image` that has it (no 3.4 checksums are
    listed for a plain image): a 3.4 cluster moves to 3.5 by a `pulumi up` (infra.plan
    allows one minor version up at a time, etcd's rule)."""
    proxy_instance_type: OptionalName = None
    metrics_instance_type: OptionalName = None
    volume_size: Annotated[int, Field(ge=0)] = 0
    """GiB of boot volume per member; 0 boots from the image on the hypervisor."""
    cacert: OptionalName = None
    """A PEM file (like clouds.yaml's `cacert`) of the CA that signs the cloud's API
    certificates, when that is a private CA: carried to every node, where the bundle's
    fetcher and the agent trust it for Keystone, Heat and Nova."""
    agent_access_rules: ZeroOneBool = True
    """true: the agents' credential may make exactly their Heat and Nova calls (access
    rules made from the catalog's paths); false: for clouds whose services refuse
    access-rule tokens (no [keystone_authtoken] service_type), the credential may do
    whatever its role allows in the project."""
    etcd_heartbeat_ms: Annotated[int, Field(ge=10, le=10_000)] = 100
    """etcd's --heartbeat-interval: about the round trip between members (etcd's tuning
    guide); raise it with the election on slow or far networks."""
    etcd_election_ms: Annotated[int, Field(ge=50, le=50_000)] = 1000
    """etcd's --election-timeout: at least 10 x the heartbeat; a disk whose fsync stalls
    (Ceph-backed volumes under load) needs 2500-5000 to avoid spurious elections."""
    quota_backend_bytes: Annotated[int, Field(ge=0, le=8 * 2**30)] = 2 * 2**30
    """etcd's --quota-backend-bytes (2 GiB; 8 GiB is etcd's advised maximum). At the quota
    etcd raises NOSPACE and takes no writes until compacted and defragmented."""
    defrag_free_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    """The share of a member's db file that is free pages (left by compaction) at which its
    agent's upkeep defragments it, one member at a time, the leader after handing over."""
    defrag_min_bytes: Annotated[int, Field(ge=0, le=8 * 2**30)] = 64 * 2**20
    """No defragmentation of a db file smaller than this (64 MiB)."""
    backups: Literal["swift", "none"] = "none"
    """swift: snapshots of etcd to a Swift container the program creates
    (`<cluster>-etcd-backups`), by one agent at a time."""
    backup_period: Annotated[float, Field(ge=60, le=7 * 86400)] = 1800
    """Seconds between snapshots: the most a lost cluster loses (RPO)."""
    backup_keep: Annotated[int, Field(ge=1, le=10_000)] = 48
    """How many of the newest snapshots stay in the container (48: a day at 30 min)."""
    disaster_recovery: Literal["manual", "auto"] = "manual"
    """When every member of the cluster is gone for good (README, Backups and recovery):
    manual, the agents of the rebuilt group log the one command that restores the newest
    snapshot; auto, they restore it themselves once the cloud confirms the old servers gone
    and no server of the group holds member data. Needs backups: swift."""
    join_timeout: Annotated[PositiveInt | None, BeforeValidator(_empty_is_none)] = None
    """Seconds from a server's creation to its joining; unset: 900 (a plain image installs
    etcd, netdata and the agent's venv at boot), 300 with prebuilt_image."""

    @model_validator(mode="after")
    def _cross_checks(self) -> StackSettings:
        problems = cross_check(self.model_dump(), base_dir=None)
        if problems:
            raise ValueError("; ".join(problem.sentence() for problem in problems))
        return self

    # --- derived values --------------------------------------------------------
    def sizes_warnings(self) -> list[str]:
        return size_warnings(self.model_dump())


@dataclass(frozen=True)
class Problem:
    """One bad setting: which key, what value it had, what is allowed."""

    key: str
    value: Any
    allowed: str

    def sentence(self) -> str:
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{PROJECT}:{self.key} = {shown}: {self.allowed}"


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING = _Missing()


class SettingsError(ValueError):
    """All the problems of one stack config, raised before anything is created."""

    def __init__(self, problems: list[Problem], source: str = "stack config") -> None:
        self.problems = problems
        self.source = source
        lines = [f"{len(problems)} problem(s) in {source}:"]
        lines += [f"  - {problem.sentence()}" for problem in problems]
        super().__init__("\n".join(lines))

    @property
    def keys(self) -> list[str]:
        return [problem.key for problem in self.problems]


@cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    field = StackSettings.model_fields[name]
    if not field.metadata:
        return TypeAdapter(field.annotation)
    return TypeAdapter(Annotated[field.annotation, *field.metadata])  # type: ignore[name-defined]


def _allowed_from(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return message


def cross_check(values: Mapping[str, Any], base_dir: Path | None) -> list[Problem]:
    """Rules between keys. Checks only keys present in `values` (already valid alone)."""
    problems: list[Problem] = []

    def have(*keys: str) -> bool:
        return all(key in values for key in keys)

    if have("min_cluster", "capacity", "max_cluster"):
        low, want, high = values["min_cluster"], values["capacity"], values["max_cluster"]
        if not low <= high:
            problems.append(Problem("min_cluster", low, f"must be <= max_cluster ({high})"))
        elif not low <= want <= high:
            problems.append(
                Problem(
                    "capacity",
                    want,
                    f"allowed: min_cluster ({low}) <= capacity <= max_cluster ({high})",
                )
            )
    if (
        have("disaster_recovery", "backups")
        and values["disaster_recovery"] == "auto"
        and values["backups"] != "swift"
    ):
        problems.append(
            Problem(
                "disaster_recovery",
                "auto",
                f"needs backups: swift (backups is {values['backups']!r}): nothing to restore from",
            )
        )
    if (
        have("etcdclientport", "etcdpeerport")
        and values["etcdclientport"] == values["etcdpeerport"]
    ):
        problems.append(
            Problem(
                "etcdpeerport",
                values["etcdpeerport"],
                "must differ from etcdclientport (client and peer need their own ports)",
            )
        )
    if have("scaledownperiod", "lockattemptperiod") and (
        values["scaledownperiod"] < values["lockattemptperiod"]
    ):
        problems.append(
            Problem(
                "scaledownperiod",
                values["scaledownperiod"],
                f"must be >= lockattemptperiod ({values['lockattemptperiod']}):"
                " the kill lock's TTL spaces removals",
            )
        )
    if have("create_network") and not values["create_network"]:
        if have("net_name") and not values["net_name"]:
            problems.append(
                Problem(
                    "net_name",
                    values["net_name"],
                    "required: the name of an existing network (or set create_network: true)",
                )
            )
    if have("create_network", "external_network") and values["create_network"]:
        if not values["external_network"]:
            problems.append(
                Problem(
                    "external_network",
                    values["external_network"],
                    "required with create_network: true (the router's gateway network)",
                )
            )
    if have("etcd_heartbeat_ms", "etcd_election_ms") and (
        values["etcd_election_ms"] < 10 * values["etcd_heartbeat_ms"]
    ):
        problems.append(
            Problem(
                "etcd_election_ms",
                values["etcd_election_ms"],
                f"must be at least 10 x etcd_heartbeat_ms ({values['etcd_heartbeat_ms']}):"
                " etcd's tuning guide",
            )
        )
    if have("public_key", "key_name") and values["public_key"] and not values["key_name"]:
        problems.append(Problem("key_name", values["key_name"], "required when public_key is set"))
    if have("alarm", "upmetric") and values["alarm"] == "cpu_util":
        if values["upmetric"] != "cpu_util":
            problems.append(
                Problem(
                    "upmetric",
                    values["upmetric"],
                    "the cpu_util alarm (clouds before Stein) reads the meter cpu_util",
                )
            )
    if have("etcd_version", "prebuilt_image") and not values["prebuilt_image"]:
        # A plain image downloads etcd at boot and installs it only if its sha256 is listed.
        listed = sorted(etcd_checksums(), key=lambda v: tuple(int(p) for p in v.split(".")))
        if values["etcd_version"] not in listed:
            problems.append(
                Problem(
                    "etcd_version",
                    values["etcd_version"],
                    f"allowed: {', '.join(listed)} (the versions with a sha256 in"
                    " packer/files/etcd-sha256sums.txt; add a release's lines from its"
                    " SHA256SUMS to allow it)",
                )
            )
    if base_dir is not None and values.get("cacert"):
        path = Path(values["cacert"])
        path = path if path.is_absolute() else base_dir / path
        try:
            pem = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as error:
            problems.append(
                Problem("cacert", values["cacert"], f"must be a readable PEM file ({error})")
            )
        else:
            if "-----BEGIN CERTIFICATE-----" not in pem:
                problems.append(
                    Problem("cacert", values["cacert"], f"{path} holds no PEM certificate")
                )
    if base_dir is not None:
        for key in ("configscript", "cleanupscript", "proxyconfig"):
            if values.get(key):
                path = Path(values[key])
                path = path if path.is_absolute() else base_dir / path
                if not (path.is_file() and os.access(path, os.R_OK)):
                    problems.append(
                        Problem(key, values[key], f"must be a readable file (looked at {path})")
                    )
    return problems


CEILOMETER_GRANULARITY = 300
"""s: the granularity of Ceilometer's archive policies (ceilometer-low, ceilometer-low-rate:
5 minutes, 30 days) and its default polling interval (polling.yaml)."""


NEUTRON_AGENT_RESTART = 60
"""s: about how long a Neutron L2 agent's restart (flows re-programmed) or a guest's reboot
cuts a server off; a shorter dead-member window removes healthy members for it."""


def size_warnings(values: Mapping[str, Any]) -> list[str]:
    """etcd's advice: odd member counts, at most 7 members; an alarm period Gnocchi has no
    points for; a dead-member window shorter than a network blip."""
    warnings: list[str] = []
    if (
        values.get("alarm") in ("gnocchi", "cpu_util")
        and values.get("alarmperiod", CEILOMETER_GRANULARITY) != CEILOMETER_GRANULARITY
    ):
        warnings.append(
            f"alarmperiod = {values['alarmperiod']}: Ceilometer stores cpu in the"
            " ceilometer-low-rate archive policy (300 s points); an alarm asking another"
            " granularity stays 'insufficient data' unless you gave the metric a policy with"
            " that granularity"
        )
    window = values.get("dead_member_periods", 6) * values.get("lockattemptperiod", 10)
    if window < NEUTRON_AGENT_RESTART:
        warnings.append(
            f"dead_member_periods = {values.get('dead_member_periods')} x lockattemptperiod ="
            f" {window} s: a member unreachable that long is removed; a Neutron agent restart"
            f" or a guest reboot takes about {NEUTRON_AGENT_RESTART} s, and a member removed"
            " for it must rejoin from nothing"
        )
    if values.get("max_cluster", 0) > 7:
        warnings.append(
            f"max_cluster = {values['max_cluster']}: etcd advises at most 7 members;"
            " more slow every write down without adding fault tolerance worth it"
        )
    for key in ("min_cluster", "capacity", "max_cluster"):
        size = values.get(key)
        if isinstance(size, int) and size > 1 and size % 2 == 0:
            warnings.append(
                f"{key} = {size} is even: it tolerates no more failures than {size - 1}"
                " members and adds a vote to every write"
            )
    return warnings


def parse_settings(
    raw: Mapping[str, Any],
    *,
    base_dir: Path = PROJECT_DIR,
    source: str = "stack config",
) -> StackSettings:
    """Validate a mapping of key -> value (namespace already stripped); all errors at once."""
    problems: list[Problem] = []
    known = StackSettings.model_fields
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                Problem(key, raw[key], f"unknown key{hint} (allowed keys are listed in README.md)")
            )
    values: dict[str, Any] = {}
    for name, field in known.items():
        if name not in raw:
            if field.is_required():
                problems.append(Problem(name, _MISSING, "required: this key must be set"))
            else:
                values[name] = field.get_default(call_default_factory=True)
            continue
        try:
            values[name] = _field_adapter(name).validate_python(raw[name])
        except ValidationError as exc:
            for error in exc.errors():
                problems.append(Problem(name, raw[name], _allowed_from(error)))
    problems += cross_check(values, base_dir)
    if problems:
        raise SettingsError(problems, source)
    return StackSettings.model_validate(values)


def strip_namespace(config: Mapping[str, Any], project: str = PROJECT) -> dict[str, Any]:
    """Keep this project's keys (`autoscale-etcd:capacity` -> `capacity`); drop others."""
    prefix = f"{project}:"
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith(prefix):
            out[key[len(prefix) :]] = value
        elif ":" not in key:
            out[key] = value
    return out


def load_stack_file(path: str | os.PathLike[str]) -> StackSettings:
    """Read `Pulumi.<stack>.yaml` the way `pulumi up` would see it (plain values only)."""
    import yaml

    file = Path(path)
    document = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    config = strip_namespace(document.get("config") or {})
    secured = [
        key for key, value in config.items() if isinstance(value, dict) and "secure" in value
    ]
    if secured:
        raise SettingsError(
            [Problem(k, "(secure)", "secrets are not program settings here") for k in secured],
            str(file),
        )
    return parse_settings(config, base_dir=file.parent, source=str(file))


def stack_file(stack: str, project_dir: Path = PROJECT_DIR) -> Path:
    return project_dir / f"Pulumi.{stack}.yaml"


def from_pulumi_config() -> StackSettings:
    """Inside a Pulumi program: every `autoscale-etcd:*` key of the running stack."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    merged: dict[str, Any] = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    settings = parse_settings(
        strip_namespace(merged, pulumi.get_project()),
        source=f"stack {pulumi.get_stack()}",
    )
    for warning in settings.sizes_warnings():
        pulumi.log.warn(warning)
    return settings


def script_path(settings: StackSettings, key: str, base_dir: Path = PROJECT_DIR) -> Path | None:
    value = getattr(settings, key)
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


JOIN_TIMEOUT_PLAIN = 900
JOIN_TIMEOUT_PREBUILT = 300


def join_timeout(stack: StackSettings) -> int:
    """The stack's join_timeout, or its default for the kind of image."""
    if stack.join_timeout is not None:
        return stack.join_timeout
    return JOIN_TIMEOUT_PREBUILT if stack.prebuilt_image else JOIN_TIMEOUT_PLAIN


NODE_HOOK_DIR = "/etc/autoscale-etcd/hooks"
NODE_TLS_DIR = "/etc/autoscale-etcd/pki"


def agent_settings(
    stack: StackSettings,
    *,
    cluster_name: str,
    cloud: CloudSettings,
    role: Literal["member", "proxy"] = "member",
    hook_dir: str = NODE_HOOK_DIR,
    tls_dir: str = NODE_TLS_DIR,
    adjust: Callable[[dict[str, Any]], None] | None = None,
) -> AgentSettings:
    """The only way an `AgentSettings` is made from a stack; the infra and the lab call it.

    `adjust` lets the lab move paths and ports for its 127.0.0.x nodes; it gets
    the plain document and the result is validated again.
    """
    tls = None
    if "https" in (stack.etcdclientscheme, stack.etcdpeerscheme):
        tls = TlsFiles(
            ca_file=f"{tls_dir}/ca.crt",
            cert_file=f"{tls_dir}/node.crt",
            key_file=f"{tls_dir}/node.key",
        )
    document = AgentSettings(
        cluster_name=cluster_name,
        role=role,
        etcd=EtcdSettings(
            client_port=stack.etcdclientport,
            peer_port=stack.etcdpeerport,
            client_scheme=stack.etcdclientscheme,
            peer_scheme=stack.etcdpeerscheme,
            cluster_token=re.sub(r"[^A-Za-z0-9_.-]", "-", cluster_name),
            tls=tls,
            heartbeat_ms=stack.etcd_heartbeat_ms,
            election_ms=stack.etcd_election_ms,
            quota_backend_bytes=stack.quota_backend_bytes,
            defrag_free_share=stack.defrag_free_share,
            defrag_min_bytes=stack.defrag_min_bytes,
        ),
        metric=MetricSettings(
            name=stack.downmetric,
            threshold=stack.threshold,
            comparator=stack.comparator,
            window=stack.downmetric_window,
            scope=stack.downmetric_scope,
        ),
        scaling=ScalingSettings(
            capacity=stack.capacity,
            min_cluster=stack.min_cluster,
            max_cluster=stack.max_cluster,
            scaledownperiod=stack.scaledownperiod,
            lockattemptperiod=stack.lockattemptperiod,
            scaleupcooldown=stack.scaleupcooldown,
            retries=stack.retries,
            failtolerance=stack.failtolerance,
            dead_member_periods=stack.dead_member_periods,
            join_timeout=join_timeout(stack),
        ),
        backup=BackupSettings(
            kind=stack.backups,
            period=stack.backup_period,
            keep=stack.backup_keep,
            container=backup_container(cluster_name) if stack.backups == "swift" else "",
            recovery=stack.disaster_recovery,
        ),
        hooks=HookSettings(
            configscript=f"{hook_dir}/configscript" if stack.configscript else None,
            cleanupscript=f"{hook_dir}/cleanupscript" if stack.cleanupscript else None,
            proxyconfig=(
                f"{hook_dir}/proxyconfig" if role == "proxy" and stack.proxyconfig else None
            ),
        ),
        cloud=cloud,
    )
    if adjust is None:
        return document
    data = document.model_dump(context={"reveal_secrets": True})
    adjust(data)
    return AgentSettings.model_validate(data)
