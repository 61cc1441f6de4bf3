"""A new agent bundle, taken by a running node: found, checked, installed over its own.

The stack's settings document names the bundle every node should run (`bundle_sha256`).
A node whose agent runs from another bundle takes the new one when the cluster is whole,
one node at a time (etcd lock `UPGRADE_LOCK`, never while a member leaves), installs it
over its own file (written beside it and renamed: never seen half-written) only if its
sha256 is the named one, and exits with `EXIT_UPGRADE`, so that systemd
(`Restart=on-failure`) starts the new agent; etcd, a unit of its own, keeps running. The
new agent releases the lock once it is a healthy member again.

An agent run from its sources (the lab, the tests) has no bundle: it takes none.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
from pathlib import Path
from typing import Any

from agent.files import atomic_write

EXIT_UPGRADE = 75
"""The agent's exit status after installing a new bundle (EX_TEMPFAIL: systemd's
`Restart=on-failure` starts it again)."""


class BundleError(RuntimeError):
    """The stack's bundle is not the one its settings name, or cannot be read."""


def running_bundle(module_file: str | None = None) -> Path | None:
    """The zipapp this agent runs from (`.../agent.pyz/agent/__init__.py`), or None."""
    if module_file is None:
        import agent

        module_file = agent.__file__
    parts = Path(module_file).parts
    for index, part in enumerate(parts):
        if part.endswith(".pyz"):
            return Path(*parts[: index + 1])
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(metadata: dict[str, Any], sha256: str) -> bytes:
    """The bundle in a stack's `agent_bundle` metadata, only if its sha256 is `sha256`
    (infra/heat.py AgentBundle; infra/node/fetch-agent.py checks it the same way)."""
    if metadata.get("encoding") != "gzip+base64" or not isinstance(metadata.get("content"), str):
        raise BundleError("the stack's bundle is not gzip+base64 content")
    try:
        data = gzip.decompress(base64.b64decode(metadata["content"], validate=True))
    except (binascii.Error, OSError, EOFError) as error:
        raise BundleError(f"the stack's bundle does not decode: {error}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise BundleError(f"the stack's bundle has sha256 {actual}, its settings name {sha256}")
    return data


def install(data: bytes, target: Path) -> None:
    """Write `data` over `target` (mode 0755), through a file beside it and a rename."""
    atomic_write(target, data, mode=0o755, durable=True)
