"""What the program asks the cloud before it declares anything (read-only look-ups).

- the Keystone URL and region the agents authenticate at, and the Heat, Nova (and, with
  backups, Swift) endpoint URLs their access rules are made for (path prefix included),
  from the deploying
  token's service catalog (`openstack.identity.get_auth_scope`);
- the deploying user's roles, to give the agents' credential the least one;
- the members' flavor vCPUs, for the scale-up alarm's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_openstack as openstack

from infra.access_rules import AccessRule, access_rules
from infra.credentials import agent_roles
from infra.settings import StackSettings


def _get(item: Any, key: str) -> Any:
    """A field of a look-up result: typed results are objects, mocked ones plain dicts."""
    if isinstance(item, dict) and key in item:
        return item[key]
    return getattr(item, key)


def identity_url(catalog: Sequence[Any], region: str | None) -> str:
    """The public Keystone v3 URL of the catalog (in `region` when given)."""
    url = endpoint_url(catalog, "identity", region)
    return url if url.endswith("/v3") else f"{url}/v3"


def endpoint_url(catalog: Sequence[Any], service_type: str, region: str | None) -> str:
    """The public URL of `service_type` in the catalog (in `region` when given)."""
    for service in catalog:
        if _get(service, "type") != service_type:
            continue
        for endpoint in _get(service, "endpoints"):
            if _get(endpoint, "interface") == "public" and region in (
                None,
                _get(endpoint, "region"),
            ):
                return str(_get(endpoint, "url")).rstrip("/")
    raise ValueError(f"no public {service_type} endpoint in the service catalog (region {region})")


def catalog_region(catalog: Sequence[Any]) -> str:
    for service in catalog:
        if _get(service, "type") == "orchestration" and _get(service, "endpoints"):
            return str(_get(_get(service, "endpoints")[0], "region"))
    raise ValueError("no orchestration (Heat) endpoint in the service catalog")


@dataclass(frozen=True)
class CloudFacts:
    auth_url: pulumi.Output[str]
    region: pulumi.Output[str]
    agent_roles: pulumi.Output[list[str]]
    member_vcpus: pulumi.Output[int]
    access_rules: pulumi.Output[list[AccessRule]] | None
    """The agents' rules for this catalog's Heat and Nova paths; None: agent_access_rules off."""


def look_up(settings: StackSettings, backup_container: str | None = None) -> CloudFacts:
    """`backup_container`: with backups, the agents' rules also cover its Swift calls."""
    configured_region = pulumi.Config("openstack").get("region")
    scope = openstack.identity.get_auth_scope_output(name="autoscale-etcd")
    region = (
        pulumi.Output.from_input(configured_region)
        if configured_region
        else scope.service_catalogs.apply(catalog_region)
    )
    auth_url = pulumi.Output.all(scope.service_catalogs, region).apply(
        lambda args: identity_url(args[0], args[1])
    )
    roles = scope.roles.apply(
        lambda found: agent_roles([_get(role, "role_name") for role in found])
    )
    flavor = openstack.compute.get_flavor_output(name=settings.instance_type)
    rules = None
    if settings.agent_access_rules:
        rules = pulumi.Output.all(scope.service_catalogs, region).apply(
            lambda args: list(
                access_rules(
                    endpoint_url(args[0], "orchestration", args[1]),
                    endpoint_url(args[0], "compute", args[1]),
                    endpoint_url(args[0], "object-store", args[1]) if backup_container else None,
                    backup_container,
                )
            )
        )
    return CloudFacts(
        auth_url=auth_url,
        region=region,
        agent_roles=roles,
        member_vcpus=flavor.vcpus,
        access_rules=rules,
    )
