"""Files a reader must never see half-written: written beside their target, then renamed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o600, durable: bool = False
) -> None:
    """Replace `path` with `data` (mode `mode`) through a file beside it and a rename;
    `durable`: fsync'd before the rename, for what a crash must not lose (the node's
    settings, the agent's own bundle)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
