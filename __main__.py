"""The Pulumi program: read the stack's settings, declare the cluster, export outputs."""

import pulumi
import pulumi_openstack as openstack

from infra import cloud_facts
from infra.cluster import MemberGroup, MemberGroupArgs
from infra.credentials import AgentCredential, AgentCredentialArgs
from infra.metrics import MetricsServer, MetricsServerArgs
from infra.network import Network, NetworkArgs
from infra.outputs import client_discovery, client_endpoints
from infra.security import SecurityGroups, SecurityGroupsArgs
from infra.settings import backup_container, from_pulumi_config
from infra.tls import ClusterCA, ClusterCAArgs

# 1. The stack's settings, validated once (every problem reported before anything is made).
settings = from_pulumi_config()
cluster_name = f"{pulumi.get_project()}-{pulumi.get_stack()}"
https = "https" in (settings.etcdclientscheme, settings.etcdpeerscheme)

# 2. What the cloud says: Keystone URL and region for the agents, roles, the flavor's vCPUs.
container = backup_container(cluster_name) if settings.backups == "swift" else None
cloud = cloud_facts.look_up(settings, container)

# 3. Network, security groups, the agents' credential, keypair, cluster CA.
network = Network("network", NetworkArgs(settings, cluster_name))
groups = SecurityGroups("security", SecurityGroupsArgs(settings, cluster_name))
credential = AgentCredential(
    "agents",
    AgentCredentialArgs(cluster_name, roles=cloud.agent_roles, access_rules=cloud.access_rules),
)
keypair = (
    openstack.compute.Keypair("keypair", name=settings.key_name, public_key=settings.public_key)
    if settings.public_key
    else None
)
ca = ClusterCA("ca", ClusterCAArgs(cluster_name)) if https else None
# the snapshots' container outlives the stack: a `pulumi destroy` (or a stack lost by
# mistake) leaves the backups a new stack restores from
backups = (
    openstack.objectstorage.Container(
        "backups", name=container, opts=pulumi.ResourceOptions(retain_on_delete=True)
    )
    if container
    else None
)

# 4. The netdata parent every node streams to.
metrics = (
    MetricsServer(
        "metrics",
        MetricsServerArgs(
            settings,
            cluster_name,
            network_id=network.network_id,
            security_group_ids=groups.metrics_ids,
        ),
        opts=pulumi.ResourceOptions(depends_on=[keypair] if keypair else None),
    )
    if settings.metrics_server
    else None
)

# 5. The members (Heat autoscaling group, policies, alarm) and the gRPC proxies.
members = MemberGroup(
    "members",
    MemberGroupArgs(
        settings=settings,
        cluster_name=cluster_name,
        network_id=network.network_id,
        member_security_groups=groups.member_names,
        proxy_security_groups=groups.proxy_names,
        credential_id=credential.credential_id,
        credential_secret=credential.secret,
        auth_url=cloud.auth_url,
        region=cloud.region,
        member_vcpus=cloud.member_vcpus,
        metrics_host=metrics.private_address if metrics else None,
        netdata_api_key=metrics.api_key if metrics else None,
        ca_cert_pem=ca.cert_pem if ca else None,
        ca_key_pem=ca.key_pem if ca else None,
    ),
    opts=pulumi.ResourceOptions(depends_on=[keypair] if keypair else None),
)

# 6. Outputs.
pulumi.export("heat_stack_id", members.stack_id)
pulumi.export("scale_up_url", members.output("scale_up_url"))
pulumi.export("etcd_client_endpoints", client_endpoints(settings, members))
pulumi.export("client_discovery", client_discovery(settings))
pulumi.export("client_security_group", groups.clients.name)
pulumi.export("metrics_server", metrics.dashboard_url if metrics else None)
pulumi.export("etcd_ca_cert", ca.cert_pem if ca else None)
pulumi.export("backup_container", backups.name if backups else None)
