"""`python -m infra render`: what a stack would deploy, without a cloud.

Runs the real `__main__.py` under Pulumi's mocks (`pulumi.runtime.set_mocks`, the
official way to run a program without an engine) with the stack config of
`Pulumi.<stack>.yaml` and placeholder cloud values, records every resource, and
writes:

- `heat-template.yaml`: the HOT the Heat stack gets;
- `member-template.yaml`: the members' template the provider sends with it (its `files`);
- `user-data.yaml`: an etcd member's cloud-config, as Heat receives it (tokens such
  as `@@CREDENTIAL_SECRET@@` are what Heat fills in at server creation);
- `agent-settings.json`: the member's agent settings file as its fetcher writes it at
  boot (the stack's settings document for members, the user-data's `cloud`), secret
  masked;
- `agent.pyz`: the agent bundle the Heat stack holds for the nodes to fetch at boot
  (checked against the sha256 the stack's settings document names);
- `resources.json`: type, name, parent and inputs of every resource, secrets masked,
  and the stack's outputs.

One run per process: Pulumi's runtime keeps global state, so tests call this module
in a subprocess per stack.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import runpy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.settings import PROJECT, PROJECT_DIR

MASK = "[secret]"
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"

# Placeholder cloud: documentation addresses (RFC 5737) and .invalid names (RFC 2606).
PLACEHOLDER_PROJECT_ID = "0123456789abcdef0123456789abcdef"
PLACEHOLDER_CATALOG = [
    {
        "id": "identity",
        "name": "keystone",
        "type": "identity",
        "endpoints": [
            {
                "id": "keystone-public",
                "interface": "public",
                "region": "RegionOne",
                "regionId": "RegionOne",
                "url": "https://keystone.cloud.invalid:5000",
            }
        ],
    },
    {
        "id": "orchestration",
        "name": "heat",
        "type": "orchestration",
        "endpoints": [
            {
                "id": "heat-public",
                "interface": "public",
                "region": "RegionOne",
                "regionId": "RegionOne",
                "url": f"https://heat.cloud.invalid:8004/v1/{PLACEHOLDER_PROJECT_ID}",
            }
        ],
    },
    {
        "id": "compute",
        "name": "nova",
        "type": "compute",
        "endpoints": [
            {
                "id": "nova-public",
                "interface": "public",
                "region": "RegionOne",
                "regionId": "RegionOne",
                "url": "https://nova.cloud.invalid:8774/v2.1",
            }
        ],
    },
    {
        "id": "object-store",
        "name": "swift",
        "type": "object-store",
        "endpoints": [
            {
                "id": "swift-public",
                "interface": "public",
                "region": "RegionOne",
                "regionId": "RegionOne",
                "url": f"https://swift.cloud.invalid:8080/v1/AUTH_{PLACEHOLDER_PROJECT_ID}",
            }
        ],
    },
]
PLACEHOLDER_ROLES = [{"roleId": "r-member", "roleName": "member"}]
PLACEHOLDER_VCPUS = 2
MEMBER_NET = "10.42.0"
PEM_KEY = ("-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----")
PEM_CERT = ("-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----")


def find_stack_file(stack: str, project_dir: Path = PROJECT_DIR) -> Path:
    for candidate in (
        project_dir / f"Pulumi.{stack}.yaml",
        project_dir / "tests" / "stacks" / f"Pulumi.{stack}.yaml",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no Pulumi.{stack}.yaml in {project_dir} or tests/stacks")


def stack_config(path: Path) -> dict[str, str]:
    """The stack file's config as Pulumi hands it to a program: every value a string."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: dict[str, str] = {}
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | dict):
            out[key] = json.dumps(value)
        else:
            out[key] = str(value)
    return out


def _unwrap(value: Any) -> tuple[Any, bool]:
    """A deserialized property without Pulumi's secret wrappers, and whether it held one."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE:
            inner, _ = _unwrap(value.get("value"))
            return inner, True
        found = False
        out = {}
        for key, item in value.items():
            out[key], secret = _unwrap(item)
            found = found or secret
        return out, found
    if isinstance(value, list):
        items = [_unwrap(item) for item in value]
        return [item for item, _ in items], any(secret for _, secret in items)
    return value, False


def secret_forms(secret: str) -> list[str]:
    """A secret value and the encodings the program passes it on in (base64 for Heat)."""
    return [secret, base64.b64encode(secret.encode("utf-8")).decode("ascii")]


def _masked(value: Any, secrets: list[str]) -> Any:
    """`value` with every leaf that holds a secret (or its base64) replaced by MASK."""
    if isinstance(value, dict):
        return {key: _masked(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, secrets) for item in value]
    if isinstance(value, str) and any(
        form in value for secret in secrets for form in secret_forms(secret)
    ):
        return MASK
    return value


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]
    secret_inputs: list[str]
    outputs: dict[str, Any]
    id: str


@dataclass
class ProgramRun:
    stack: str
    resources: list[Recorded] = field(default_factory=list)
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    exports: dict[str, Any] = field(default_factory=dict)
    secret_exports: set[str] = field(default_factory=set)
    fabricated_secrets: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_]


def _fake_heat_outputs(inputs: Mapping[str, Any], stack_id: str) -> list[dict[str, str]]:
    template = yaml.safe_load(inputs["templateOpts"]["Bin"])
    props = template["resources"]["etcd_group"]["properties"]
    proxies = template["resources"].get("proxy_group", {}).get("properties", {}).get("count", 0)
    values: dict[str, Any] = {
        "stack_id": stack_id,
        "scale_up_url": (
            f"https://heat.cloud.invalid:8004/v1/{PLACEHOLDER_PROJECT_ID}/stacks/"
            f"{inputs.get('name')}/{stack_id}/resources/scale_up/signal"
        ),
        "scale_down_url": (
            f"https://heat.cloud.invalid:8004/v1/{PLACEHOLDER_PROJECT_ID}/stacks/"
            f"{inputs.get('name')}/{stack_id}/resources/scale_down/signal"
        ),
        "member_addresses": {
            f"member-{i}": f"{MEMBER_NET}.{11 + i}" for i in range(props["min_size"])
        },
        "current_size": props["min_size"],
        "proxy_addresses": [f"{MEMBER_NET}.{101 + i}" for i in range(proxies)],
    }
    return [
        {
            "outputKey": key,
            "outputValue": value if isinstance(value, str) else json.dumps(value),
        }
        for key, value in values.items()
        if key in template["outputs"]
    ]


def run_program(stack: str, project_dir: Path = PROJECT_DIR) -> ProgramRun:
    """Run `__main__.py` of `project_dir` for `stack` under mocks; once per process."""
    import pulumi
    from pulumi.runtime import config as runtime_config
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    run = ProgramRun(stack)
    counter = {"n": 0}

    def fabricate(prefix: str) -> str:
        counter["n"] += 1
        return f"{prefix}-{counter['n']:04d}"

    class RecordingMocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
            plain, _ = _unwrap(args.inputs)
            secret_inputs = sorted(k for k, v in args.inputs.items() if _unwrap(v)[1])
            resource_id = f"{args.name}-id"
            outputs: dict[str, Any] = dict(plain)
            if args.typ == "openstack:identity/applicationCredential:ApplicationCredential":
                secret = fabricate("mock-appcred-secret")
                run.fabricated_secrets.append(secret)
                outputs["secret"] = secret
            elif args.typ == "random:index/randomUuid:RandomUuid":
                key = fabricate("00000000-0000-4000-8000-00000000")
                run.fabricated_secrets.append(key)
                outputs["result"] = key
            elif args.typ == "tls:index/privateKey:PrivateKey":
                pem = (
                    f"-----BEGIN PRIVATE KEY-----\n{fabricate('mock')}\n-----END PRIVATE KEY-----\n"
                )
                run.fabricated_secrets.append(pem)
                outputs["privateKeyPem"] = pem
            elif args.typ == "tls:index/selfSignedCert:SelfSignedCert":
                outputs["certPem"] = (
                    "-----BEGIN CERTIFICATE-----\nmock\n-----END CERTIFICATE-----\n"
                )
            elif args.typ == "openstack:networking/port:Port":
                outputs["allFixedIps"] = [f"{MEMBER_NET}.5"]
            elif args.typ == "openstack:networking/floatingIp:FloatingIp":
                outputs["address"] = "203.0.113.10"
            elif args.typ == "openstack:orchestration/stackV1:StackV1":
                resource_id = "11111111-2222-4333-8444-555555555555"
                # the provider names this property "StackOutputs" (pulumi.getter of stack_outputs)
                outputs["StackOutputs"] = _fake_heat_outputs(plain, resource_id)
            elif args.typ == "openstack:networking/secGroup:SecGroup":
                outputs.setdefault("name", args.name)
            run.resources.append(
                Recorded(
                    type=args.typ,
                    name=args.name,
                    inputs=plain,
                    secret_inputs=secret_inputs,
                    outputs=outputs,
                    id=resource_id,
                )
            )
            return resource_id, outputs

        def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
            run.invokes.append((args.token, dict(args.args)))
            if args.token == "openstack:identity/getAuthScope:getAuthScope":
                return {
                    "id": "scope",
                    "name": args.args.get("name", "scope"),
                    "projectId": PLACEHOLDER_PROJECT_ID,
                    "roles": PLACEHOLDER_ROLES,
                    "serviceCatalogs": PLACEHOLDER_CATALOG,
                }
            if args.token == "openstack:compute/getFlavor:getFlavor":
                return {
                    "id": f"flavor-{args.args.get('name')}",
                    "name": args.args.get("name"),
                    "vcpus": PLACEHOLDER_VCPUS,
                    "ram": 4096,
                    "disk": 20,
                }
            if args.token == "openstack:networking/getNetwork:getNetwork":
                return {"id": f"net-{args.args.get('name')}", "name": args.args.get("name")}
            if args.token == "openstack:networking/getSecGroup:getSecGroup":
                return {"id": f"sg-{args.args.get('name')}", "name": args.args.get("name")}
            return {}

    config = stack_config(find_stack_file(stack, project_dir))
    project_file = yaml.safe_load((project_dir / "Pulumi.yaml").read_text(encoding="utf-8"))
    project = project_file.get("name", PROJECT)
    pulumi.runtime.set_mocks(RecordingMocks(), project=project, stack=stack, preview=False)
    runtime_config.set_all_config(config)

    exported: dict[str, Any] = {}
    real_export = pulumi.export

    def recording_export(name: str, value: Any) -> None:
        exported[name] = value
        real_export(name, value)

    async def resolve_exports() -> None:
        for name, value in exported.items():
            output = pulumi.Output.from_input(value)
            run.exports[name] = await output.future()
            if await output.is_secret():
                run.secret_exports.add(name)

    def program() -> Any:
        pulumi.export = recording_export
        try:
            runpy.run_path(str(project_dir / "__main__.py"), run_name="__main__")
        finally:
            pulumi.export = real_export
        return resolve_exports()

    _sync_await(run_pulumi_func(program))
    return run


def _secret_free(text: str, run: ProgramRun) -> str:
    for secret in run.fabricated_secrets:
        if any(form in text for form in secret_forms(secret)):
            raise AssertionError(f"a secret value leaked into the rendered output: {secret[:12]}…")
    return text


def settings_of(template: Mapping[str, Any]) -> dict[str, Any]:
    """The settings document a cluster template holds (`agent_settings`' metadata)."""
    from infra.heat import SETTINGS

    return dict(template["resources"][SETTINGS]["metadata"])


def bundle_of(template: Mapping[str, Any], sha256: str | None = None) -> bytes:
    """The agent bundle in a cluster template's metadata, if it is the one its settings
    document (or `sha256`) names."""
    from infra.heat import AGENT_BUNDLE

    sha256 = sha256 or settings_of(template)["bundle_sha256"]
    metadata = template["resources"][AGENT_BUNDLE]["metadata"]
    data = gzip.decompress(base64.b64decode(metadata["content"], validate=True))
    if not hashlib.sha256(data).hexdigest() == metadata["sha256"] == sha256:
        raise AssertionError(f"the template's agent bundle is not the one ({sha256}) nodes fetch")
    return data


def write_render(run: ProgramRun, out: Path) -> dict[str, Path]:
    """Write the six files of `python -m infra render`; returns their paths."""
    from agent.settings import AgentSettings
    from infra.heat import GROUP
    from infra.userdata import AGENT_CONFIG

    out.mkdir(parents=True, exist_ok=True)
    (stack,) = run.of_type("openstack:orchestration/stackV1:StackV1")
    template_text = stack.inputs["templateOpts"]["Bin"]
    template = yaml.safe_load(template_text)
    member = template["resources"][GROUP]["properties"]["resource"]
    user_data = member["properties"]["user_data"]["str_replace"]["template"]
    node_files = yaml.safe_load(user_data)["write_files"]
    (agent_file,) = [f for f in node_files if f["path"] == AGENT_CONFIG]
    # what the fetcher writes at boot: the document's member settings, the file's cloud
    cloud = json.loads(agent_file["content"])["cloud"]
    member_settings = settings_of(template)["roles"]["member"]
    agent_doc = AgentSettings.model_validate({**member_settings, "cloud": cloud}).to_json()
    resources = {
        "stack": run.stack,
        "resources": [
            {
                "type": r.type,
                "name": r.name,
                "id": r.id,
                "inputs": _masked(r.inputs, run.fabricated_secrets),
                "secret_inputs": r.secret_inputs,
            }
            for r in run.resources
        ],
        "outputs": {
            name: (MASK if name in run.secret_exports else value)
            for name, value in sorted(run.exports.items())
        },
    }
    # the member template the provider sends beside it (infra.heat.MemberStack)
    member_url = str(member["type"])
    files = {
        "heat-template.yaml": template_text,
        "member-template.yaml": Path(member_url.removeprefix("file://")).read_text("utf-8"),
        "user-data.yaml": user_data,
        "agent-settings.json": agent_doc,
        "resources.json": json.dumps(resources, indent=2, sort_keys=True) + "\n",
    }
    paths = {}
    for name, text in files.items():
        path = out / name
        path.write_text(_secret_free(text, run), encoding="utf-8")
        paths[name] = path
    paths["agent.pyz"] = out / "agent.pyz"
    paths["agent.pyz"].write_bytes(bundle_of(template))
    return paths
