"""The ``--processes`` parent's liveness probe of a worker: its ``/healthz``, as a kubelet asks it.

Only the parent can ask every worker: a container's liveness probe reaches one port, and a
worker whose model call hung (a failing GPU) holds its partitions, heartbeating, until
something restarts it. Standard library only: the parent imports neither torch nor faust's web
stack.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Unhealthy:
    """Why a worker failed its probe, and whether it answered at all (a worker that does not
    answer cannot act on SIGTERM either: its event loop is blocked)."""

    reason: str
    answers: bool


def probe_host(web_host: str) -> str:
    """Where to reach a server listening on ``web_host``: loopback for the wildcard addresses."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(web_host, web_host)


def healthz(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> Unhealthy | None:
    """None when ``GET /healthz`` says 200, or when nothing listens (the worker is still loading its
    model, or stopping: its exit is the supervisor's business); else why it is unhealthy."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read(2000).decode(errors="replace")
    except TimeoutError:
        return Unhealthy(f"/healthz did not answer within {timeout_s:g} s", answers=False)
    except (OSError, http.client.HTTPException):  # refused (not serving), reset, not HTTP
        return None
    finally:
        conn.close()
    if response.status == 200:
        return None
    try:
        detail = json.loads(body)
    except ValueError:
        detail = body.strip()[:200]
    return Unhealthy(f"/healthz {response.status} {detail}", answers=True)
