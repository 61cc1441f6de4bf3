"""What an agent keeps between cycles and restarts: one small JSON file in its state dir.

The lab and `status` read it; nothing else writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from agent.files import atomic_write

Phase = Literal["starting", "joining", "member", "leaving", "left", "failed"]

STATE_FILE = "state.json"


@dataclass
class AgentState:
    phase: Phase = "starting"
    member_id: int | None = None
    failmarker: int = 0
    configured: bool = False
    last_scale_up: float | None = None
    """Wall-clock time of this agent's last scale-up call."""
    unhealthy_since: dict[str, float] = field(default_factory=dict)
    """member id (hex) -> wall-clock time it was first seen unhealthy, in a row."""
    leave_via: str | None = None
    """How this node leaves the group: "scale_down" (Heat deletes it) or "replace"."""
    last_cycle: str = ""
    """The sentence the last cycle logged."""
    settings_sha256: str | None = None
    """The stack's settings document this agent follows (its sha256), once taken."""
    upgrade_lease: int | None = None
    """The lease of the upgrade lock this node took to install a new bundle: the new agent
    revokes it (frees the lock) once it is a healthy member again."""
    upgraded_from: str | None = None
    """The bundle (sha256) this node ran before its last upgrade."""
    updated: float = 0.0

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> AgentState:
        path = Path(state_dir) / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        return cls(**known)

    def save(self, state_dir: str | os.PathLike[str]) -> None:
        """Atomic replace, so a reader never sees half a file."""
        atomic_write(Path(state_dir) / STATE_FILE, json.dumps(asdict(self), sort_keys=True))
