"""The cluster CA of an https stack, made at deploy time and kept as a Pulumi secret.

Nodes get the CA certificate and key through Heat (the key as a stack parameter),
issue their own certificate for their own address at boot (`infra/node/issue-cert.sh`)
and delete the CA key right after. No auto-tls: it is slow on low-entropy VMs.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

TEN_YEARS_HOURS = 10 * 365 * 24


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


@dataclass(frozen=True)
class ClusterCAArgs:
    cluster_name: str


class ClusterCA(pulumi.ComponentResource):
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterCAArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("autoscale-etcd:infra:ClusterCA", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        cert = tls.SelfSignedCert(
            f"{name}-cert",
            private_key_pem=key.private_key_pem,
            is_ca_certificate=True,
            validity_period_hours=TEN_YEARS_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
            # OpenSSL's strict verification (Python >= 3.13, urllib3) wants a CA's SKID
            set_subject_key_id=True,
            subject=tls.SelfSignedCertSubjectArgs(
                common_name=f"{args.cluster_name} etcd CA", organization="autoscale-etcd"
            ),
            opts=child,
        )
        self.cert_pem = cert.cert_pem
        self.key_pem = pulumi.Output.secret(key.private_key_pem)
        self.register_outputs({"cert_pem": self.cert_pem})
