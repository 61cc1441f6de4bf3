"""The agent as one file for the nodes: a zipapp (PEP 441) built from the `agent/` package.

The nodes get it from the Heat stack, not from their user-data (which stays under its
32 KiB budget): `infra.heat.AgentBundle` puts `Bundle.packed` (gzip, then base64) in a
resource's metadata, the user-data names `Bundle.sha256`, and `infra/node/fetch-agent.py`
fetches, checks and installs it at boot. The zip members are stored, not deflated,
because one gzip stream over all the sources compresses far better than each file
deflated alone. Docstrings, comments and function annotations are left out
(`minified`): the node runs the code, the repository keeps the documentation.

The build is deterministic (sorted members, fixed timestamps), so the same sources
give the same bytes and sha256, and `pulumi preview` shows no change to the nodes when
the agent did not change.
"""

from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from infra.settings import PROJECT_DIR

AGENT_DIR = PROJECT_DIR / "agent"
# Modules the nodes never import: the CA and certificate making of the tests and the lab
# (nodes run infra/node/issue-cert.sh).
LAB_ONLY = frozenset({"tls.py"})
SHEBANG = b"#!/usr/bin/env python3\n"
ZIPAPP_MAIN = "from agent.__main__ import main\n\nraise SystemExit(main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def minified(source: str, filename: str) -> str:
    """The module without docstrings and function annotations (comments go with ast.unparse).

    A module that reads its own `__doc__` (argparse help) keeps its module docstring.
    Class-level annotations stay: pydantic and dataclasses need them.
    """
    tree = ast.parse(source, filename=filename)
    keep_module_doc = "__doc__" in source
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            node.returns = None
            arguments = node.args
            for arg in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs):
                arg.annotation = None
            for arg in (arguments.vararg, arguments.kwarg):
                if arg is not None:
                    arg.annotation = None
        if isinstance(node, ast.Module) and keep_module_doc:
            continue
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def agent_sources(agent_dir: Path = AGENT_DIR) -> dict[str, str]:
    """Archive name -> minified source of every module the nodes need."""
    sources: dict[str, str] = {}
    for path in sorted(agent_dir.rglob("*.py")):
        relative = path.relative_to(agent_dir.parent).as_posix()
        if path.name in LAB_ONLY or "__pycache__" in relative:
            continue
        sources[relative] = minified(path.read_text(encoding="utf-8"), relative)
    return sources


def build_zipapp(agent_dir: Path = AGENT_DIR) -> bytes:
    """The zipapp's bytes: `python3 agent.pyz ARGS` runs `agent.__main__.main()`."""
    members = {"__main__.py": ZIPAPP_MAIN, **agent_sources(agent_dir)}
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name].encode("utf-8"))
    return buffer.getvalue()


@dataclass(frozen=True)
class Bundle:
    """The zipapp's bytes and the two forms the program passes on."""

    zipapp: bytes

    @property
    def sha256(self) -> str:
        """What the user-data names: the node installs these bytes and no others."""
        return hashlib.sha256(self.zipapp).hexdigest()

    @property
    def packed(self) -> str:
        """gzip (level 9, no timestamp), then base64: the Heat metadata's `content`."""
        compressed = gzip.compress(self.zipapp, compresslevel=9, mtime=0)
        return base64.b64encode(compressed).decode("ascii")


@cache
def agent_bundle() -> Bundle:
    """The agent of this checkout, built once per process."""
    return Bundle(build_zipapp())
