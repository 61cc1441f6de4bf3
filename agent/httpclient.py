"""The agent's HTTP client: HTTP/1.1 on the standard library's http.client and ssl.

Why not requests: the agent runs on every node beside etcd, and its resident memory is a
published figure (bench, target under 40 MB). requests with urllib3, idna, charset
detection and its certificate bundle is ~10 MiB of it; the agent needs none of that
(JSON bodies, IP or DNS hosts, the system's or the cluster's CA).

What it keeps from requests: keep-alive per origin (a pool of idle connections, checked
for a peer that closed before reuse, as urllib3 does), a timeout per socket operation
(connect and each read), TLS with a CA file and a client certificate, no environment
proxies (there are none between a node and its cluster). Redirects are never followed.

Every failure to get an answer is an `HttpError` (`HttpTimeout` for a timeout) whose text
names the cause, e.g. "ConnectionRefusedError: [Errno 111] Connection refused".
"""

from __future__ import annotations

import http.client
import json as jsonlib
import select
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

Verify = bool | str
"""True: the system's CAs; a path: that CA file; False: no verification."""
Cert = tuple[str, str] | None
"""(certificate file, key file) of a client certificate, or None."""

_Key = tuple[str, str, int, Verify, Cert]


class HttpError(Exception):
    """No answer: refused, reset, a TLS failure, a malformed answer, a bad URL."""


class HttpTimeout(HttpError):
    """No answer in time (connect or a read)."""


@dataclass(frozen=True)
class Response:
    status_code: int
    headers: Message
    """Case-insensitive: `headers.get("Location")`."""
    content: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return jsonlib.loads(self.content)


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle connection the peer closed (or wrote to unasked): not reusable."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"


class Http:
    """A thread-safe client; connections are per thread of use, pooled when idle."""

    def __init__(self, *, verify: Verify = True, cert: Cert = None) -> None:
        self.verify = verify
        self.cert = cert
        self._lock = threading.Lock()
        self._idle: dict[_Key, list[http.client.HTTPConnection]] = {}
        self._contexts: dict[tuple[Verify, Cert], ssl.SSLContext] = {}

    # --- calls -------------------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        json: Any = None,
        data: bytes | BinaryIO | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        verify: Verify | None = None,
        cert: Cert = None,
    ) -> Response:
        with self.stream(
            method,
            url,
            timeout=timeout,
            json=json,
            data=data,
            params=params,
            headers=headers,
            verify=verify,
            cert=cert,
        ) as answer:
            return Response(answer.status, answer.headers, answer.read())

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Response:
        return self.request("POST", url, **kwargs)

    @contextmanager
    def stream(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        json: Any = None,
        data: bytes | BinaryIO | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        verify: Verify | None = None,
        cert: Cert = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """The answer before its body is read (`read1` gives what has arrived). The
        connection goes back to the pool only if the body was read to its end. A failure
        while the body is read is an HttpError (HttpTimeout) too, as one before it is.
        `data`: a raw body, bytes or a file read in blocks (give its Content-Length in
        `headers`, or it goes chunked)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"not an http(s) URL: {url!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as error:
            raise HttpError(f"bad URL {url!r}: {error}") from None
        target = parts.path or "/"
        query = "&".join(q for q in (parts.query, urlencode(dict(params or {}))) if q)
        if query:
            target += "?" + query
        sent = {"Accept": "application/json, text/plain, */*", **dict(headers or {})}
        body: bytes | BinaryIO | None = data
        if json is not None:
            body = jsonlib.dumps(json).encode("utf-8")
            sent["Content-Type"] = "application/json"
        verify = self.verify if verify is None else verify
        cert = self.cert if cert is None else cert
        key: _Key = (scheme, parts.hostname, port, verify, cert)
        conn = self._checkout(key, timeout)
        try:
            conn.request(method, target, body=body, headers=sent)
            answer = conn.getresponse()
        except TimeoutError as error:
            conn.close()
            raise HttpTimeout(_describe(error)) from None
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            raise HttpError(_describe(error)) from None
        try:
            yield answer
        except TimeoutError as error:
            raise HttpTimeout(_describe(error)) from None
        except (OSError, http.client.HTTPException) as error:
            raise HttpError(_describe(error)) from None
        finally:
            if answer.isclosed() and not answer.will_close and conn.sock is not None:
                self._checkin(key, conn)
            else:
                conn.close()

    def close(self) -> None:
        with self._lock:
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the pool ----------------------------------------------------------------------
    def _checkout(self, key: _Key, timeout: float) -> http.client.HTTPConnection:
        scheme, host, port, verify, cert = key
        while True:
            with self._lock:
                conns = self._idle.get(key)
                conn = conns.pop() if conns else None
            if conn is None:
                break
            if _dropped(conn):
                conn.close()
                continue
            assert conn.sock is not None
            conn.sock.settimeout(timeout)
            conn.timeout = timeout
            return conn
        if scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self._context(verify, cert)
            )
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _checkin(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(conn)

    def _context(self, verify: Verify, cert: Cert) -> ssl.SSLContext:
        with self._lock:
            context = self._contexts.get((verify, cert))
        if context is not None:
            return context
        try:
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif verify is True:
                context = ssl.create_default_context()
            else:
                context = ssl.create_default_context(cafile=verify)
            if cert is not None:
                context.load_cert_chain(cert[0], cert[1])
        except (OSError, ValueError) as error:
            raise HttpError(f"TLS set-up (CA {verify!r}, cert {cert!r}): {error}") from None
        with self._lock:
            self._contexts[(verify, cert)] = context
        return context
