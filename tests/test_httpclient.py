"""The agent's own HTTP client (agent/httpclient.py) against a real HTTP server on
127.0.0.x: keep-alive, a peer that closed an idle connection, timeouts, refusals,
redirects not followed, JSON and query strings, concurrent use."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.httpclient import Http, HttpError, HttpTimeout
from tests.etcd_cluster import free_address


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ip: str) -> None:
        super().__init__((ip, 0), Handler)
        self.connections = 0
        self.sockets: list[socket.socket] = []
        self.seen: list[dict[str, object]] = []
        self.close_after_answer = False

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1
        self.server.sockets.append(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.server.close_after_answer:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
        if self.path.startswith("/slow"):
            time.sleep(2)
            self._answer(200, b"late")
        elif self.path.startswith("/redirect"):
            self._answer(302, b"", {"Location": "/elsewhere"})
        elif self.path.startswith("/trickle"):
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"abc")
            self.wfile.flush()
            time.sleep(2)
            self.wfile.write(b"def")
        else:
            self._answer(200, json.dumps({"path": self.path}).encode(), {"X-Token": "t0k"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"null")
        self.server.seen.append({"method": "POST", "path": self.path, "body": body})
        self._answer(200, json.dumps({"echo": body}).encode())


@pytest.fixture
def server() -> Iterator[Server]:
    ip, _, _ = free_address()
    srv = Server(ip)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_json_query_headers_and_keep_alive(server: Server) -> None:
    with Http() as http:
        answer = http.get(f"{server.url}/api?x=1", params={"format": "shell"}, timeout=2)
        assert answer.status_code == 200 and answer.ok
        assert answer.json() == {"path": "/api?x=1&format=shell"}
        assert answer.headers.get("x-token") == "t0k"  # case-insensitive
        posted = http.post(f"{server.url}/v3/kv/put", json={"key": "a2V5"}, timeout=2)
        assert posted.json() == {"echo": {"key": "a2V5"}}
        for _ in range(5):
            http.get(f"{server.url}/again", timeout=2)
    assert server.connections == 1  # seven calls, one connection
    assert server.seen[1] == {"method": "POST", "path": "/v3/kv/put", "body": {"key": "a2V5"}}


def test_connection_close_is_honoured(server: Server) -> None:
    with Http() as http:
        server.close_after_answer = True
        http.get(f"{server.url}/closing", timeout=2)  # answered with Connection: close
        server.close_after_answer = False
        assert http.get(f"{server.url}/after", timeout=2).json() == {"path": "/after"}
    assert server.connections == 2


def test_an_idle_connection_the_server_closed_costs_no_error(server: Server) -> None:
    """etcd (or anything between) closes idle keep-alive connections; the next call must
    not fail on the dead one (a failed call would count against the member)."""
    with Http() as http:
        http.get(f"{server.url}/one", timeout=2)
        for sock in server.sockets:  # the server side of the idle connection goes away
            sock.shutdown(socket.SHUT_RDWR)
        time.sleep(0.1)
        assert http.get(f"{server.url}/two", timeout=2).json() == {"path": "/two"}
        assert http.post(f"{server.url}/three", json=3, timeout=2).json() == {"echo": 3}
    assert server.connections == 2


def test_a_slow_answer_is_a_timeout_and_the_connection_is_not_kept(server: Server) -> None:
    with Http() as http:
        started = time.monotonic()
        with pytest.raises(HttpTimeout, match="timed out"):
            http.get(f"{server.url}/slow", timeout=0.3)
        assert time.monotonic() - started < 1.5
        assert http._idle == {} or all(not conns for conns in http._idle.values())
        assert http.get(f"{server.url}/fine", timeout=2).status_code == 200


def test_a_refused_connection_names_its_cause() -> None:
    ip, port, _ = free_address()
    with Http() as http, pytest.raises(HttpError) as error:
        http.get(f"http://{ip}:{port}/health", timeout=1)
    assert not isinstance(error.value, HttpTimeout)
    assert str(error.value) == "ConnectionRefusedError: [Errno 111] Connection refused"


def test_redirects_are_not_followed(server: Server) -> None:
    with Http() as http:
        answer = http.get(f"{server.url}/redirect", timeout=2)
    assert answer.status_code == 302
    assert answer.headers.get("Location") == "/elsewhere"
    assert [s["path"] for s in server.seen] == ["/redirect"]


def test_stream_gives_what_has_arrived(server: Server) -> None:
    with Http() as http, http.stream("GET", f"{server.url}/trickle", timeout=5) as answer:
        assert answer.status == 200
        assert answer.read1(100) == b"abc"  # without waiting for the rest


def test_bad_urls_and_bad_tls_files_are_errors_not_crashes(tmp_path) -> None:
    with Http() as http:
        for url in ("ftp://127.0.0.1/x", "http:///nohost", "http://127.0.0.1:99999/x"):
            with pytest.raises(HttpError):
                http.get(url, timeout=1)
    with Http(verify=str(tmp_path / "missing-ca.pem")) as http, pytest.raises(HttpError) as error:
        http.get("https://127.0.0.1:1/x", timeout=1)
    assert "missing-ca.pem" in str(error.value)


def test_concurrent_calls_share_one_client(server: Server) -> None:
    with Http() as http, ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda n: http.get(f"{server.url}/n{n}", timeout=5).json(), range(40))
        )
    assert sorted(a["path"] for a in answers) == sorted(f"/n{n}" for n in range(40))
    assert server.connections <= 8


def test_a_body_that_stops_coming_is_a_timeout_while_streaming(server: Server) -> None:
    """A failure in the middle of the body is the client's own error, as one before it."""
    with Http() as http:
        with (
            pytest.raises(HttpTimeout),
            http.stream("GET", f"{server.url}/trickle", timeout=0.5) as a,
        ):
            assert a.read1(100) == b"abc"
            a.read1(100)  # the rest comes 2 s later
        with pytest.raises(HttpTimeout):
            http.get(f"{server.url}/trickle", timeout=0.5)
