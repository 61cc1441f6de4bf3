"""The lab's side of an https stack: a cluster CA per lab, each node's certificate issued
the way its boot issues it, and the lab's own client certificate.

    pki = LabPki.for_stack(stack, root / "pki", cluster_name, client_ip=f"{prefix}.1")
    pki.issue(node_settings.etcd.tls, ip=member.ip, name=member.name)   # before the agent starts
    EtcdClient(urls, tls=pki.client)                                     # the lab's watcher etc.

`for_stack` gives None for a plain-http stack, so callers write `tls=pki.client if pki
else None`. The CA is made as `infra.tls.ClusterCA` makes it at deploy time, and node
certificates come from `infra/node/issue-cert.sh` itself (see agent/tls.py). No
auto-tls anywhere: etcd gets the files, with client-cert-auth on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.settings import TlsFiles
from agent.tls import CA, make_ca
from agent.tls import issue_node_cert as _issue
from infra.settings import StackSettings


def is_https(stack: StackSettings) -> bool:
    return "https" in (stack.etcdclientscheme, stack.etcdpeerscheme)


def make_lab_ca(directory: Path, cluster_name: str) -> CA:
    """The lab's cluster CA in `directory` (ca.crt, ca.key), as the program makes it."""
    return make_ca(Path(directory), cluster_name)


def issue_node_cert(ca: CA, ip: str, directory: Path, name: str) -> TlsFiles:
    """A node's ca.crt, node.crt and node.key in `directory`, for `ip`, by issue-cert.sh."""
    return _issue(ca, Path(directory), ip=ip, name=name)


@dataclass(frozen=True)
class LabPki:
    ca: CA
    client: TlsFiles
    """The lab's own client certificate (watcher, writer, checks, `python -m lab status`)."""

    @classmethod
    def create(cls, directory: Path, cluster_name: str, *, client_ip: str) -> LabPki:
        directory = Path(directory)
        ca = make_lab_ca(directory / "ca", cluster_name)
        client = issue_node_cert(ca, client_ip, directory / "lab-client", "lab")
        return cls(ca=ca, client=client)

    @classmethod
    def for_stack(
        cls, stack: StackSettings, directory: Path, cluster_name: str, *, client_ip: str
    ) -> LabPki | None:
        """A CA and the lab's client certificate if the stack is https; None otherwise."""
        if not is_https(stack):
            return None
        return cls.create(directory, cluster_name, client_ip=client_ip)

    def issue(self, files: TlsFiles, *, ip: str, name: str) -> TlsFiles:
        """Issue a node's certificate where its settings expect it (`files`, from
        `agent_settings(..., tls_dir=...)`: ca.crt, node.crt, node.key in one dir)."""
        directory = Path(files.cert_file).parent
        issued = issue_node_cert(self.ca, ip, directory, name)
        if issued != files:
            raise ValueError(f"node settings expect {files}, issue-cert.sh wrote {issued}")
        return issued


def client_tls_from_state(state: dict[str, Any]) -> TlsFiles | None:
    """The lab's client certificate as `lab.json` records it (for another process)."""
    files = state.get("client_tls")
    return TlsFiles.model_validate(files) if files else None
