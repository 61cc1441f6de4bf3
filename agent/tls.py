"""A node's TLS files made the way an https stack makes them, for the tests and the lab.

On a cloud, the cluster CA is made at deploy time by `infra.tls.ClusterCA` (pulumi-tls:
ECDSA P-256, self-signed, CA:TRUE, key usage cert signing, CRL signing and digital
signature, valid ten years) and each node issues its own certificate at boot with
`infra/node/issue-cert.sh`. Here `make_ca` makes a CA with those same properties with
the `openssl` command, and `issue_node_cert` runs that very script (not a copy of it):
one implementation of the node side, and the tests exercise the script itself.

Not part of the nodes' agent bundle (`infra.bundle.LAB_ONLY`): nodes run the script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.settings import TlsFiles

ISSUE_CERT_SCRIPT = Path(__file__).resolve().parent.parent / "infra" / "node" / "issue-cert.sh"
CA_DAYS = 3650
"""infra.tls.TEN_YEARS_HOURS (87600 h) in days."""
NODE_DAYS = 3650
"""What issue-cert.sh gives a node certificate (`openssl x509 -days 3650`)."""

_CA_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
utf8 = yes
[dn]
O = autoscale-etcd
CN = {common_name}
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
"""


class TlsError(RuntimeError):
    """openssl or issue-cert.sh failed; the message holds what it printed."""


@dataclass(frozen=True)
class CA:
    """The cluster CA: its certificate and, while it can still issue, its key."""

    cert_file: Path
    key_file: Path


def openssl_binary() -> str:
    found = shutil.which("openssl")
    if found is None:
        raise TlsError("the openssl command is not installed (setup/system-packages.sh)")
    return found


def _run(command: list[str], *, env: dict[str, str] | None = None, what: str) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=60, env=env
    )
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()[-2000:]
        raise TlsError(f"{what} failed (exit {result.returncode}): {output}")


def make_ca(directory: Path, cluster_name: str) -> CA:
    """A cluster CA in `directory` (ca.crt, ca.key mode 0600), as `ClusterCA` makes it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() or c in " ._-" else "-" for c in cluster_name)
    config = directory / "ca.cnf"
    config.write_text(_CA_CONFIG.format(common_name=f"{name} etcd CA"), encoding="utf-8")
    ca = CA(cert_file=directory / "ca.crt", key_file=directory / "ca.key")
    old = os.umask(0o077)
    try:
        _run(
            [
                openssl_binary(),
                "req",
                "-x509",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-config",
                str(config),
                "-days",
                str(CA_DAYS),
                "-keyout",
                str(ca.key_file),
                "-out",
                str(ca.cert_file),
            ],
            what="openssl req (cluster CA)",
        )
    finally:
        os.umask(old)
        config.unlink(missing_ok=True)
    ca.cert_file.chmod(0o644)
    return ca


def issue_node_cert(
    ca: CA,
    pki_dir: Path,
    *,
    ip: str | None = None,
    name: str,
    metadata_url: str | None = None,
    instance_data: str | None = None,
    group: str | None = None,
    role: str = "member",
) -> TlsFiles:
    """Give a node its certificate the way its boot does.

    The CA certificate and key are put in `pki_dir` as cloud-init writes them (the key
    mode 0600), then `issue-cert.sh pki_dir` runs: it issues `node.crt`/`node.key` for
    `ip` (or, if `ip` is None, for the address `metadata_url` says, as on a cloud, or
    cloud-init's `instance_data` file when the metadata service does not answer) and
    deletes its copy of the CA key; `role` is its ROLE argument (member, or proxy: no CN).
    `group` may read the key (default: the caller's own group; on a node it is `etcd`).
    Running it again once done changes nothing.
    """
    pki_dir = Path(pki_dir)
    pki_dir.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_file=str(pki_dir / "ca.crt"),
        cert_file=str(pki_dir / "node.crt"),
        key_file=str(pki_dir / "node.key"),
    )
    done = (pki_dir / "node.crt").is_file() and not (pki_dir / "ca.key").exists()
    if not done:
        shutil.copyfile(ca.cert_file, pki_dir / "ca.crt")
        key_copy = pki_dir / "ca.key"
        fd = os.open(key_copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Path(ca.key_file).read_bytes())
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AUTOSCALE_NODE_NAME": name,
        "AUTOSCALE_PKI_GROUP": group or _own_group(),
    }
    if ip is not None:
        env["AUTOSCALE_NODE_IP"] = ip
    if metadata_url is not None:
        env["AUTOSCALE_METADATA_URL"] = metadata_url
    if instance_data is not None:
        env["AUTOSCALE_INSTANCE_DATA"] = instance_data
    _run(["sh", str(ISSUE_CERT_SCRIPT), str(pki_dir), role], env=env, what="issue-cert.sh")
    return files


def _own_group() -> str:
    import grp

    return grp.getgrgid(os.getegid()).gr_name
