"""The access rules of the agents' application credential: exactly the calls they make.

keystonemiddleware checks a rule's path against the request's whole path, which keeps
the prefix a cloud serves an API under (`https://cloud/heat-api/v1/<project>/...` behind
one proxy, `https://cloud:8004/v1/<project>/...` on its own port), so the rules are made
from the catalog's endpoint URLs (lab.cloud.keystone checks them the same way). No Pulumi
here: the lab builds its credential's rules with the same function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class AccessRule:
    service: str
    method: str
    path: str
    why: str


def _api_root(url: str, version: str) -> str:
    """The path of a catalog endpoint up to its API version segment, prefix included:
    keystonemiddleware matches access rules against the whole request path, which keeps
    the prefix a cloud serves the API under (`https://cloud/heat-api/v1/<project>` ->
    `/heat-api/v1`; `https://cloud:8004/v1/<project>` -> `/v1`)."""
    path = urlsplit(url).path.rstrip("/")
    match = re.search(rf"^(.*?/{re.escape(version)})(/|$)", path)
    if match is None:
        raise ValueError(f"the endpoint {url} has no /{version} in its path")
    return match.group(1)


def access_rules(
    orchestration: str,
    compute: str,
    object_store: str | None = None,
    container: str | None = None,
) -> tuple[AccessRule, ...]:
    """The agents' access rules for the catalog's Heat and Nova endpoint URLs, and, with
    backups, Swift's calls on the backup container (agent/swift.py): upload (objects,
    segments, the manifest), HEAD to verify, list, download to restore, delete the old.
    The container itself is the program's: the agents may not create or delete it."""
    heat = _api_root(orchestration, "v1")
    nova = _api_root(compute, "v2.1")
    swift: tuple[AccessRule, ...] = ()
    if object_store is not None and container:
        root = f"{_api_root(object_store, 'v1')}/*/{container}"
        swift = (
            AccessRule("object-store", "PUT", f"{root}/**", "upload a snapshot"),
            AccessRule("object-store", "HEAD", f"{root}/**", "verify a snapshot"),
            AccessRule("object-store", "GET", root, "list the snapshots"),
            AccessRule("object-store", "GET", f"{root}/**", "download a snapshot"),
            AccessRule("object-store", "DELETE", f"{root}/**", "delete an old snapshot"),
        )
    return (
        *swift,
        AccessRule("orchestration", "GET", f"{heat}/*/stacks/**", "stack, resource show"),
        AccessRule("orchestration", "PATCH", f"{heat}/*/stacks/*/*/resources/*", "mark unhealthy"),
        AccessRule(
            "orchestration", "POST", f"{heat}/*/stacks/*/*/resources/*/signal", "signal a policy"
        ),
        AccessRule("compute", "GET", f"{nova}/servers/*", "show a server"),
        AccessRule("compute", "GET", f"{nova}/*/servers/*", "show a server (project in path)"),
    )


ACCESS_RULES: tuple[AccessRule, ...] = access_rules(
    "https://cloud.example:8004/v1/project", "https://cloud.example:8774/v2.1"
)
"""The rules for endpoints with no path prefix (Heat on :8004/v1, Nova on :8774/v2.1)."""
