"""User-data sizes against Nova's limit, and how long `python -m infra render` takes.

Nova refuses user-data whose base64 form is longer than 65,535 bytes
(`MAX_USERDATA_SIZE` in nova/compute/api.py, checked against the base64 text the API
receives); the project's own budget is 32 KiB. The documents are built by
`infra.userdata` for every role of every example stack (`Pulumi.dev.yaml` and
`tests/stacks/`), then measured twice: as rendered (the `@@TOKEN@@`s Heat's str_replace
fills in at server creation still in place) and with the tokens replaced by values of
real size: an ECDSA P-256 CA (what `infra/tls.py` makes) issued by openssl, a
Keystone application credential secret (86 characters: 64 random bytes, base64url), a
stack "name/uuid", a Keystone URL.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.rows import Row, check, figure
from infra.settings import PROJECT_DIR, load_stack_file, stack_file
from infra.userdata import (
    BUDGET,
    Token,
    member_user_data,
    metrics_user_data,
    proxy_user_data,
)

NOVA_LIMIT = 65535
"""Bytes of user-data once base64-encoded."""
STACKS = {
    "dev": stack_file("dev"),
    "metrics": PROJECT_DIR / "tests" / "stacks" / "Pulumi.metrics.yaml",
    "ownnet": PROJECT_DIR / "tests" / "stacks" / "Pulumi.ownnet.yaml",
}
SECTION = "user-data (Nova: 65,535 bytes base64)"


def _example_ca() -> tuple[str, str]:
    """A P-256 CA certificate and key, base64 of their PEM, made by openssl (or stand-ins
    of the same size class if openssl is missing: a P-256 PEM cert is ~600 bytes)."""
    if shutil.which("openssl") is None:
        return "A" * 900, "A" * 330
    with tempfile.TemporaryDirectory() as tmp:
        key, cert = Path(tmp) / "ca.key", Path(tmp) / "ca.crt"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec"),
                *("-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "3650"),
                *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=etcd-ca"),
            ],
            check=True,
            capture_output=True,
        )
        return (
            base64.b64encode(cert.read_bytes()).decode(),
            base64.b64encode(key.read_bytes()).decode(),
        )


def example_values() -> dict[str, str]:
    cert, key = _example_ca()
    return {
        Token.AUTH_URL: "https://keystone.cloud.example.com:5000/v3",
        Token.REGION: "RegionOne",
        Token.CREDENTIAL_ID: uuid.uuid4().hex,
        Token.CREDENTIAL_SECRET: secrets.token_urlsafe(64),
        Token.STACK: f"autoscale-etcd-dev-cluster/{uuid.uuid4()}",
        Token.METRICS_HOST: "10.42.0.250",
        Token.NETDATA_API_KEY: str(uuid.uuid4()),
        Token.TLS_CA_CERT: cert,
        Token.TLS_CA_KEY: key,
        # the wait-condition handle's endpoint (stack user project in the path) and its
        # Keystone fernet token (about 180-250 characters)
        Token.READY_URL: (
            f"https://heat.cloud.example.com:8004/v1/{uuid.uuid4().hex}/stacks/"
            f"autoscale-etcd-dev/{uuid.uuid4()}/resources/agents_ready_handle/signal"
        ),
        Token.READY_TOKEN: "gAAAAAB" + secrets.token_urlsafe(180),
    }


def substituted(text: str, values: dict[str, str]) -> str:
    for token, value in values.items():
        text = text.replace(token, value)
    return text


def documents() -> list[tuple[str, str, str]]:
    """(stack, role, text) of every role each example stack deploys."""
    out = []
    for name, path in STACKS.items():
        stack = load_stack_file(path)
        cluster = f"autoscale-etcd-{name}"
        out.append((name, "member", member_user_data(stack, cluster_name=cluster).text))
        if stack.proxies:
            out.append((name, "proxy", proxy_user_data(stack, cluster_name=cluster).text))
        if stack.metrics_server:
            out.append((name, "metrics", metrics_user_data(stack, cluster_name=cluster).text))
    return out


def render_seconds(runs: int) -> list[float]:
    """Wall time of `python -m infra render --stack dev --out <tmp>`, one process per run."""
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            start = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "infra", "render", "--stack", "dev", "--out", out],
                cwd=PROJECT_DIR,
                check=True,
                capture_output=True,
            )
            times.append(time.monotonic() - start)
    return times


def bench_userdata(*, render_runs: int = 1) -> list[Row]:
    values = example_values()
    rows: list[Row] = []
    docs = documents()
    for role in ("member", "proxy", "metrics"):
        mine = [(stack, text) for stack, r, text in docs if r == role]
        if not mine:
            continue
        stack, text = max(mine, key=lambda d: len(substituted(d[1], values).encode()))
        full = substituted(text, values).encode()
        rows.append(
            check(
                SECTION,
                f"{role} user-data, largest of {len(mine)} stack(s) ({stack}), tokens filled",
                len(full),
                "B",
                "<",
                BUDGET,
            )
        )
        rows.append(
            check(
                SECTION,
                f"{role} user-data base64 ({stack})",
                len(base64.b64encode(full)),
                "B",
                "<=",
                NOVA_LIMIT,
            )
        )
        rows.append(
            figure(
                SECTION,
                f"{role} user-data as rendered, tokens in place ({stack})",
                len(text.encode()),
                "B",
            )
        )
    times = render_seconds(render_runs)
    rows.append(
        figure(
            SECTION,
            f"python -m infra render --stack dev (median of {len(times)})",
            statistics.median(times),
            "s",
        )
    )
    return rows
