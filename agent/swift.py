"""The agent's Swift client: the few Object Storage calls backups need.

Each call with its API reference (https://docs.openstack.org/api-ref/object-store/):

- the container is the program's (`openstack.objectstorage.Container`): the agents' access
  rules do not let them create or delete it;
- "Create or replace object" `PUT .../{container}/{object}` with `ETag` (the body's MD5:
  Swift answers 422 when what it stored differs) and `X-Object-Meta-*` (our own sha256
  and the snapshot's revision);
- static large objects, for a snapshot over `segment_bytes` (a single object is at most
  5 GiB): the segments are plain objects, then the manifest is `PUT ...?multipart-
  manifest=put` with a JSON list of `{"path": "/container/segment", "etag", "size_bytes"}`
  (https://docs.openstack.org/swift/latest/overview_large_objects.html); Swift checks each
  segment's etag and size. The manifest's `ETag` on a HEAD or GET is the MD5 of the
  concatenated segment etags (quoted), which is what `verify` compares;
  `DELETE ...?multipart-manifest=delete` removes the manifest and its segments;
- "Show container details and list objects" `GET .../{container}?format=json&prefix=`,
  paged with `marker` (at most 10,000 names an answer);
- "Show object metadata" `HEAD`, "Get object content" `GET` (streamed to a file), "Delete
  object" `DELETE`.

The endpoint and the token are the catalog's `object-store` and Keystone's, through the
node's cloud (`agent.cloud_openstack.OpenStackGroup.access`); a 401 gets a new token and
one retry. The token never reaches a log line or an error message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable
from urllib.parse import quote

from agent.httpclient import Http, HttpError, HttpTimeout, Response
from agent.settings import AgentSettings

log = logging.getLogger(__name__)

SWIFT_OBJECT_LIMIT = 5 * 2**30
"""Swift's default `max_file_size`: a larger snapshot must go as a static large object."""
BLOCK = 1 << 20


class SwiftError(Exception):
    """A Swift call that did not do what it was asked (its name, status and an excerpt)."""


@runtime_checkable
class Access(Protocol):
    def access(self, service_type: str, *, renew: bool = False) -> tuple[str, str]: ...

    def scrub(self, text: str) -> str: ...


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    md5: str
    """Swift's `hash` (for a static large object: the MD5 of its segments' etags)."""
    last_modified: str
    large: bool = False
    """A static large object's manifest (Swift's listing names its `slo_etag`)."""


class _Slice:
    """`length` bytes of an open file from `offset`, read in blocks (a segment's body)."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._file = path.open("rb")
        self._file.seek(offset)
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data = self._file.read(size)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


def md5_of(path: Path, offset: int = 0, length: int | None = None) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        file.seek(offset)
        left = path.stat().st_size - offset if length is None else length
        while left > 0:
            data = file.read(min(BLOCK, left))
            if not data:
                break
            digest.update(data)
            left -= len(data)
    return digest.hexdigest()


class SwiftStore:
    """One container of the node's project."""

    def __init__(
        self,
        cloud: Access,
        container: str,
        *,
        timeout: float = 60.0,
        verify: bool | str = True,
        session: Http | None = None,
    ) -> None:
        self.cloud = cloud
        self.container = container
        self.timeout = timeout
        self.verify = verify
        self.http = session or Http(verify=verify)

    @classmethod
    def for_cloud(cls, cloud: object, settings: AgentSettings) -> SwiftStore:
        """The backup container through the node's cloud driver (its credential, its CA)."""
        if not isinstance(cloud, Access):
            raise SwiftError("swift: the cloud driver gives no Keystone access to Swift")
        verify = (settings.cloud.cacert or True) if settings.cloud.verify_tls else False
        return cls(cloud, settings.backup.container, verify=verify)

    # --- calls ---------------------------------------------------------------------------

    def upload(
        self,
        name: str,
        path: Path,
        *,
        meta: dict[str, str] | None = None,
        segment_bytes: int = SWIFT_OBJECT_LIMIT,
        deadline: float | None = None,
    ) -> str:
        """`path` as object `name` (a static large object of `segment_bytes` segments when
        it is larger); returns the ETag Swift keeps for it, checked against the file's.
        `deadline` (time.monotonic()): checked before each segment and the manifest; past
        it the upload stops (its segments deleted) with SwiftError."""
        size = path.stat().st_size
        headers = {f"X-Object-Meta-{k}": v for k, v in (meta or {}).items()}
        if size <= segment_bytes:
            etag = md5_of(path)
            self._put_file(name, path, 0, size, etag, headers)
            return etag
        segments: list[dict[str, Any]] = []
        try:
            for number, offset in enumerate(range(0, size, segment_bytes)):
                self._in_time(name, deadline)
                length = min(segment_bytes, size - offset)
                segment = f"segments/{name}/{number:08d}"
                etag = md5_of(path, offset, length)
                self._put_file(segment, path, offset, length, etag, {})
                segments.append(
                    {"path": f"/{self.container}/{segment}", "etag": etag, "size_bytes": length}
                )
            self._in_time(name, deadline)
            self._call(
                "put manifest",
                "PUT",
                name,
                params={"multipart-manifest": "put"},
                data=json.dumps(segments).encode(),
                headers={"Content-Type": "application/octet-stream", **headers},
                ok=(201,),
            )
        except BaseException:
            # this attempt's segments go with it (a dead agent's are the retention's)
            for uploaded in segments:
                try:
                    self.delete(str(uploaded["path"]).split("/", 2)[2])
                except SwiftError:
                    pass
            raise
        return hashlib.md5(
            "".join(s["etag"] for s in segments).encode(), usedforsecurity=False
        ).hexdigest()

    def _in_time(self, name: str, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise SwiftError(f"swift upload {self.container}/{name}: past its deadline")

    def put_small(self, name: str, data: bytes, *, only_new: bool = False) -> bool:
        """A small object (agent/disaster.py's roll calls and claim), its MD5 as the ETag.
        `only_new`: Swift's `If-None-Match: *`, the object is made only if there is none
        (False: there was one, nothing written)."""
        headers = {
            "ETag": hashlib.md5(data, usedforsecurity=False).hexdigest(),
            "Content-Type": "application/json",
        }
        if only_new:
            headers["If-None-Match"] = "*"
        answer = self._call("create object", "PUT", name, data=data, headers=headers, ok=(201, 412))
        return answer.status_code == 201

    def get_small(self, name: str) -> tuple[bytes, float] | None:
        """A small object's content and its X-Timestamp (Swift's clock: when it was
        written); None when there is none."""
        answer = self._call("get object", "GET", name, ok=(200, 404))
        if answer.status_code == 404:
            return None
        try:
            stamp = float(answer.headers.get("X-Timestamp", "0"))
        except ValueError:
            stamp = 0.0
        return answer.content, stamp

    def head(self, name: str) -> dict[str, str]:
        answer = self._call("show object metadata", "HEAD", name, ok=(200,))
        return {k.lower(): v for k, v in answer.headers.items()}

    def verify_object(self, name: str, etag: str, size: int) -> None:
        """Swift holds `name` with this ETag and size (a HEAD: what a restore would read)."""
        found = self.head(name)
        stored = found.get("etag", "").strip('"')
        length = int(found.get("content-length", "-1"))
        if stored != etag or length != size:
            raise SwiftError(
                f"swift {self.container}/{name}: holds etag {stored or '?'} and {length} B,"
                f" uploaded {etag} and {size} B"
            )

    def list(self, prefix: str = "") -> list[StoredObject]:
        found: list[StoredObject] = []
        marker = ""
        while True:
            params = {"format": "json", "prefix": prefix}
            if marker:
                params["marker"] = marker
            answer = self._call("list objects", "GET", "", params=params, ok=(200, 204))
            page = answer.json() if answer.status_code == 200 and answer.content else []
            if not page:
                return found
            for entry in page:
                found.append(
                    StoredObject(
                        name=str(entry["name"]),
                        size=int(entry.get("bytes", 0)),
                        md5=str(entry.get("hash", "")),
                        last_modified=str(entry.get("last_modified", "")),
                        large="slo_etag" in entry,
                    )
                )
            marker = found[-1].name

    def download(self, name: str, path: Path) -> int:
        """Object `name` into `path` (written beside it, then renamed); its size."""
        partial = path.with_name(path.name + ".part")
        written = 0
        for attempt in (1, 2):
            endpoint, token = self.cloud.access("object-store", renew=attempt == 2)
            try:
                with (
                    self.http.stream(
                        "GET",
                        self._url(endpoint, name),
                        headers={"X-Auth-Token": token},
                        timeout=self.timeout,
                        verify=self.verify,
                    ) as answer,
                    partial.open("wb") as out,
                ):
                    if answer.status == 401 and attempt == 1:
                        answer.read()
                        continue
                    if answer.status != 200:
                        raise SwiftError(
                            f"swift get object {self.container}/{name}: HTTP {answer.status}:"
                            f" {self._excerpt(answer.read())}"
                        )
                    while data := answer.read(BLOCK):
                        out.write(data)
                        written += len(data)
                    out.flush()
                    os.fsync(out.fileno())
            except HttpError as error:
                partial.unlink(missing_ok=True)
                raise SwiftError(self.cloud.scrub(f"swift get object {name}: {error}")) from None
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            os.replace(partial, path)
            return written
        raise SwiftError(f"swift get object {self.container}/{name}: HTTP 401 with a new token")

    def delete(self, name: str, *, large: bool = False) -> None:
        """A plain object, or (`large`) a manifest with its segments: the SLO middleware
        answers that one like a bulk delete, 200 with its own status in the JSON body."""
        if not large:
            self._call("delete object", "DELETE", name, ok=(204, 404))
            return
        answer = self._call(
            "delete large object",
            "DELETE",
            name,
            params={"multipart-manifest": "delete"},
            headers={"Accept": "application/json"},
            ok=(200, 404),
        )
        if answer.status_code == 404:
            return
        try:
            result = answer.json()
        except ValueError:
            result = {}
        status = str(result.get("Response Status", ""))
        if not status.startswith(("200", "404")) or result.get("Errors"):
            raise SwiftError(
                f"swift delete large object {self.container}/{name}: {status or '?'}"
                f" {self._excerpt(answer.content)}"
            )

    # --- plumbing ------------------------------------------------------------------------

    def _url(self, endpoint: str, name: str) -> str:
        url = f"{endpoint.rstrip('/')}/{quote(self.container, safe='')}"
        return f"{url}/{quote(name, safe='/')}" if name else url

    def _put_file(
        self,
        name: str,
        path: Path,
        offset: int,
        length: int,
        etag: str,
        headers: dict[str, str],
    ) -> None:
        def body() -> BinaryIO:
            return _Slice(path, offset, length)  # type: ignore[return-value]

        self._call(
            "create object",
            "PUT",
            name,
            body=body,
            headers={
                "ETag": etag,
                "Content-Length": str(length),
                "Content-Type": "application/octet-stream",
                **headers,
            },
            ok=(201,),
        )

    def _call(
        self,
        what: str,
        method: str,
        name: str,
        *,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        body: Callable[[], BinaryIO] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> Response:
        """One authenticated call; a 401 gets a new token and one retry, a connection
        failure one retry (every call here is idempotent; a file body is opened again)."""
        label = f"swift {what} ({method} {self.container}/{name})"
        for attempt in (1, 2):
            endpoint, token = self.cloud.access("object-store", renew=attempt == 2)
            stream = body() if body is not None else None
            try:
                answer = self.http.request(
                    method,
                    self._url(endpoint, name),
                    params=params,
                    data=stream if stream is not None else data,
                    headers={"X-Auth-Token": token, **(headers or {})},
                    timeout=self.timeout,
                    verify=self.verify,
                )
            except HttpTimeout:
                raise SwiftError(f"{label}: timed out after {self.timeout}s") from None
            except HttpError as error:
                if attempt == 1:  # a kept-alive connection the proxy had closed: once more
                    log.info("%s: %s; once more", label, error)
                    continue
                raise SwiftError(self.cloud.scrub(f"{label}: {error}")) from None
            finally:
                if stream is not None:
                    stream.close()
            if answer.status_code == 401 and attempt == 1:
                log.info("%s: 401, authenticating again", label)
                continue
            if answer.status_code in ok:
                return answer
            raise SwiftError(f"{label}: HTTP {answer.status_code}: {self._excerpt(answer.content)}")
        raise SwiftError(f"{label}: HTTP 401 even with a new token")

    def _excerpt(self, content: bytes) -> str:
        text = " ".join(content.decode("utf-8", errors="replace").split())[:300]
        return self.cloud.scrub(text) or "(empty body)"


def newest_first(objects: list[StoredObject]) -> Iterator[StoredObject]:
    """Snapshot names sort by time, then revision: the newest is the last."""
    return iter(sorted(objects, key=lambda o: o.name, reverse=True))
