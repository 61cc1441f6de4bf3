"""The Pulumi program: read the stack's settings, declare the cluster, export outputs."""

from infra.settings import from_pulumi_config

settings = from_pulumi_config()
