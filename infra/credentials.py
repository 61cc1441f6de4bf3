"""The agents' own credential: a Keystone application credential, restricted to their calls.

No user password reaches a node. The credential carries one project role (`member`,
what Heat's and Nova's default policies ask for these calls) and access rules that
allow exactly the API calls the agent makes, nothing else:

- Heat: show/list the stack and the group's nested stack and resources (find this
  node's member), mark a member unhealthy (PATCH a resource), signal a scaling policy.
- Nova: show a server (this node's own, and a group member's status).

Its secret is a Pulumi secret output; it reaches Heat as a stack parameter.
References: https://docs.openstack.org/api-ref/identity/v3/#application-credentials
https://docs.openstack.org/api-ref/orchestration/v1/ (resources: show, list, mark unhealthy,
send a signal), https://docs.openstack.org/api-ref/compute/#show-server-details
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from infra.access_rules import AccessRule

# The least role that Heat's and Nova's default policies accept for these calls; the
# names differ between older and newer clouds.
ROLE_PREFERENCE = ("member", "_member_", "heat_stack_owner")


def agent_roles(user_roles: Sequence[str]) -> list[str]:
    """The one role the agents' credential carries, chosen among the deploying user's roles."""
    for role in ROLE_PREFERENCE:
        if role in user_roles:
            return [role]
    raise ValueError(
        f"the deploying user has none of the roles {', '.join(ROLE_PREFERENCE)} in this"
        f" project (has: {', '.join(user_roles) or 'none'}); the agents need one of them"
    )


@dataclass(frozen=True)
class AgentCredentialArgs:
    cluster_name: str
    roles: pulumi.Input[Sequence[str]]
    access_rules: pulumi.Input[Sequence[AccessRule]] | None = None
    """None: no rules (agent_access_rules: false)."""


def credential_name(
    cluster_name: str, roles: Sequence[str], rules: Sequence[AccessRule] | None
) -> str:
    """A name that changes with what the credential may do. Keystone keeps one credential
    name per user and every field of a credential is immutable, so a change of roles or
    rules is a new credential made before the old is deleted: under a new name."""
    import hashlib
    import json

    content = json.dumps(
        {
            "roles": sorted(roles),
            "rules": None if rules is None else [[r.service, r.method, r.path] for r in rules],
        },
        sort_keys=True,
    )
    return f"{cluster_name}-agents-{hashlib.sha256(content.encode()).hexdigest()[:8]}"


class AgentCredential(pulumi.ComponentResource):
    credential_id: pulumi.Output[str]
    secret: pulumi.Output[str]

    def __init__(
        self, name: str, args: AgentCredentialArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("autoscale-etcd:infra:AgentCredential", name, None, opts)
        rules = pulumi.Output.from_input(args.access_rules)
        credential = openstack.identity.ApplicationCredential(
            f"{name}-appcred",
            name=pulumi.Output.all(args.roles, rules).apply(
                lambda found: credential_name(args.cluster_name, found[0], found[1])
            ),
            description=(
                f"autoscale-etcd agents of {args.cluster_name}: Heat and Nova calls only"
                if args.access_rules is not None
                else f"autoscale-etcd agents of {args.cluster_name} (no access rules)"
            ),
            roles=args.roles,
            unrestricted=False,
            access_rules=rules.apply(
                lambda found: (
                    None
                    if found is None
                    else [
                        openstack.identity.ApplicationCredentialAccessRuleArgs(
                            service=rule.service, method=rule.method, path=rule.path
                        )
                        for rule in found
                    ]
                )
            ),
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["secret"]),
        )
        self.credential_id = credential.id
        self.secret = pulumi.Output.secret(credential.secret)
        self.register_outputs({"credential_id": self.credential_id, "secret": self.secret})
