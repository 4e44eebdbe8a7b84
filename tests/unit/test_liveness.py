"""The ``--processes`` parent's liveness probe against real HTTP servers (the standard library's),
answering as a worker's ``/healthz`` does, or not answering."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.liveness import Unhealthy, healthz, probe_host
from worker.ports import free_port


class Healthz(BaseHTTPRequestHandler):
    """``/healthz`` as the worker serves it; the server's ``answer`` says which."""

    def do_GET(self) -> None:
        answer = self.server.answer  # type: ignore[attr-defined]
        if answer == "slow":
            time.sleep(2)
        status, body = (200, {"status": "ok"}) if answer in ("ok", "slow") else (503, answer)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the slow answer's client has gone (the probe timed out): nothing to report


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = Server(("127.0.0.1", 0), Healthz)
    httpd.answer = "ok"  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_200_is_healthy(server: ThreadingHTTPServer) -> None:
    assert healthz("127.0.0.1", server.server_port) is None


def test_503_is_unhealthy_and_says_why(server: ThreadingHTTPServer) -> None:
    server.answer = {"status": "model call hung", "model_busy_s": 130.2}  # type: ignore[attr-defined]
    problem = healthz("127.0.0.1", server.server_port)
    assert problem == Unhealthy("/healthz 503 {'status': 'model call hung', 'model_busy_s': 130.2}", True)


def test_no_answer_within_the_timeout_is_unhealthy_and_not_answering(server: ThreadingHTTPServer) -> None:
    server.answer = "slow"  # type: ignore[attr-defined]
    started = time.monotonic()
    problem = healthz("127.0.0.1", server.server_port, timeout_s=0.5)
    assert problem == Unhealthy("/healthz did not answer within 0.5 s", answers=False)
    assert time.monotonic() - started < 1.5


def test_a_listener_that_never_answers_is_unhealthy() -> None:
    """A stopped process (SIGSTOP, a wedged driver call): the kernel accepts, nothing reads."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        problem = healthz("127.0.0.1", listener.getsockname()[1], timeout_s=0.3)
    assert problem is not None and not problem.answers


def test_nothing_listening_is_not_a_failure() -> None:
    """A worker still loading its model (or stopping) serves nothing yet: not a liveness failure."""
    assert healthz("127.0.0.1", free_port()) is None


@pytest.mark.parametrize(
    ("web_host", "expected"),
    [("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("127.0.0.1", "127.0.0.1"), ("10.1.2.3", "10.1.2.3")],
)
def test_the_probe_reaches_a_wildcard_listener_on_loopback(web_host: str, expected: str) -> None:
    assert probe_host(web_host) == expected
