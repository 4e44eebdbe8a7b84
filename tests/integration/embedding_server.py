"""A real OpenAI-compatible embedding server for the tests: infinity-emb, from a virtualenv of its own.

infinity-emb pins sentence-transformers<4 and numpy<2, which the project's environment does not
hold, so it lives in its own virtualenv, found at ``$SENTIMENT_EMBEDDING_SERVER_VENV`` (default
``.venv-emb`` in the checkout), which ``./setup.sh --dev`` makes (PyPI needed: infinity-emb is not
in the local index). Without it the tests that need the server fail, saying how to make it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from worker.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SENTIMENT_EMBEDDING_SERVER_VENV", ROOT / ".venv-emb"))
SERVER = VENV / "bin" / "infinity_emb"
SERVED_NAME = "tiny-qwen3-embedding"


def require_server() -> Path:
    if not SERVER.is_file():
        pytest.fail(
            f"no infinity-emb virtualenv at {VENV}: ./setup.sh --dev makes it (or set "
            "SENTIMENT_EMBEDDING_SERVER_VENV to one)",
            pytrace=False,
        )
    return SERVER


class InfinityServer:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}/v1"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def infinity(
    model_dir: Path, log: Path, *, port: int | None = None, timeout_s: float = 120
) -> Iterator[InfinityServer]:
    """Serve ``model_dir`` (a sentence-transformers layout) on CPU in float32 at ``/v1/embeddings``.

    infinity's torch engine loads it with sentence-transformers, whose ``1_Pooling/config.json``
    (``pooling_mode_lasttoken``) and tokenizer (``<|endoftext|>`` appended) give the Qwen3-Embedding
    recipe, and L2-normalises the whole vector.
    """
    server = require_server()
    port = port or free_port()
    cmd = [
        str(server), "v2", "--model-id", str(model_dir), "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1",
        "--engine", "torch", "--device", "cpu", "--dtype", "float32",
        "--no-compile", "--no-bettertransformer", "--no-model-warmup", "--no-vector-disk-cache",
        "--batch-size", "16", "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    env.pop("VIRTUAL_ENV", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    running = InfinityServer(proc, port, log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"infinity_emb exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{running.url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"infinity_emb not ready in {timeout_s} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield running
    finally:
        running.kill()
