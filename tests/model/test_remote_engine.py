"""The remote embedding client against a tiny local HTTP stub: retries, errors, concurrency, tokens.

(The real server, and parity with the local engine: tests/integration/test_remote_embeddings.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch

from models.engine.classifier import load_classifier
from models.engine.heads import build_head, save_embedding_head_checkpoint
from models.engine.remote import (
    EmbeddingRequestError,
    EmbeddingServerError,
    EmbeddingServerUnavailable,
    RemoteEmbeddingEngine,
    RemoteOptions,
    endpoint,
)
from models.manifest import Manifest
from schemas.errors import CheckpointError

DIM = 8


class Stub(ThreadingHTTPServer):
    """Answers POST …/embeddings with ``script``'s statuses in turn, then 200s with fake vectors."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[tuple[int, dict[str, str]]] = []
        self.bodies: list[dict[str, Any]] = []
        self.active = self.peak = 0
        self.delay_s = 0.0
        self.dim = DIM
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: Stub

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        stub = self.server
        body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        with stub.lock:
            stub.bodies.append(body)
            status, headers = stub.script.pop(0) if stub.script else (200, {})
            stub.active += 1
            stub.peak = max(stub.peak, stub.active)
        time.sleep(stub.delay_s)
        if status == 200:
            # a vector that depends on the text: its length and first character
            data = [
                {"object": "embedding", "index": i,
                 "embedding": [float(len(t)), float(ord(t[0]) % 7), *([1.0] * (stub.dim - 2))]}
                for i, t in enumerate(body["input"])
            ]  # fmt: skip
            payload = orjson.dumps({"object": "list", "data": data[::-1], "model": body["model"]})
        else:
            payload = orjson.dumps({"detail": f"scripted {status}"})
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        with stub.lock:
            stub.active -= 1


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """An embedding-head checkpoint whose base is not here (tokens counted as UTF-8 bytes)."""
    torch.manual_seed(0)
    manifest = Manifest(kind="embedding-head", base_model="Qwen/not-in-the-cache", labels=["neg", "pos"],
                        max_length=64, instruction="Classify")  # fmt: skip
    return save_embedding_head_checkpoint(tmp_path, build_head("linear", DIM, 2), manifest)


def engine(ckpt: Path, stub: Stub, **options: Any) -> RemoteEmbeddingEngine:
    opts = RemoteOptions(**{"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0, **options})
    remote = load_classifier(ckpt, embedding_url=stub.url)
    assert isinstance(remote, RemoteEmbeddingEngine)
    return RemoteEmbeddingEngine(
        remote.manifest, remote.head, url=stub.url, model="m", dimensions=DIM, tokenizer=None,
        name="t", options=opts,
    )  # fmt: skip


def test_the_endpoint_url() -> None:
    assert endpoint("http://h:8000/v1/") == "http://h:8000/v1/embeddings"
    assert endpoint("https://h/x/embeddings") == "https://h/x/embeddings"
    with pytest.raises(CheckpointError, match="http:// or https://"):
        endpoint("h:8000")


def test_texts_go_prefixed_in_order_and_features_are_cut_and_unit(ckpt: Path, stub: Stub) -> None:
    remote = engine(ckpt, stub)
    texts = ["好的", "bad", "一般般 ok"]
    tok = remote.tokenise(texts)
    assert tok.ids[1] == list(b"Instruct: Classify\nQuery:bad")  # no tokenizer here: UTF-8 bytes
    assert [remote.text_of(ids) for ids in tok.ids] == [f"Instruct: Classify\nQuery:{t}" for t in texts]
    result = remote.infer(texts, keep_features=True)
    # one request, texts sorted by length; the stub answered in reverse with indices: order restored
    assert sorted(stub.bodies[0]["input"]) == sorted(remote.text_of(ids) for ids in tok.ids)
    assert result.features is not None
    torch.testing.assert_close(result.features.norm(dim=1), torch.ones(3))
    assert result.features[0, 0] < result.features[2, 0]  # row i is text i's vector
    assert result.n_tokens == [len(ids) for ids in tok.ids]


def test_503_then_200_is_retried(ckpt: Path, stub: Stub) -> None:
    stub.script = [(503, {}), (429, {"retry-after": "0"}), (200, {})]
    remote = engine(ckpt, stub)
    seen: list[str] = []
    remote.observer = lambda _s, outcome: seen.append(outcome)
    assert len(remote.classify(["好"])) == 1
    assert seen == ["503", "429", "200"]


def test_a_4xx_is_not_retried_and_names_url_and_status(ckpt: Path, stub: Stub) -> None:
    stub.script = [(400, {})]
    remote = engine(ckpt, stub)
    with pytest.raises(EmbeddingRequestError) as err:
        remote.classify(["好"])
    assert err.value.status == 400 and len(stub.bodies) == 1
    assert str(err.value).startswith(f"embedding server {stub.url}/embeddings refused the request")
    assert '400 Bad Request: {"detail":"scripted 400"}' in str(err.value)


def test_retries_run_out_then_calls_fail_at_once_until_health_answers(ckpt: Path, stub: Stub) -> None:
    stub.script = [(503, {})] * 3
    remote = engine(ckpt, stub, retries=2, cooldown_s=60)
    with pytest.raises(EmbeddingServerUnavailable, match="failed 3 time"):
        remote.classify(["a"])
    with pytest.raises(EmbeddingServerUnavailable, match="not asking again"):
        remote.classify(["a"])
    assert len(stub.bodies) == 3
    assert remote.health()  # a real request: the stub answers 200 again, and the cool-down ends
    assert len(remote.classify(["a"])) == 1


def test_requests_are_cut_by_count_and_tokens_and_run_in_parallel(ckpt: Path, stub: Stub) -> None:
    stub.delay_s = 0.2
    remote = engine(ckpt, stub, request_size=3, request_tokens=10_000, in_flight=4)
    assert len(remote.classify([f"text {i}" for i in range(12)])) == 12
    assert sorted(len(b["input"]) for b in stub.bodies) == [3, 3, 3, 3] and stub.peak == 4
    stub.bodies.clear()
    remote = engine(ckpt, stub, request_size=100, request_tokens=64)  # 31 bytes per text here
    remote.classify([f"text {i}" for i in range(4)])
    assert [len(b["input"]) for b in stub.bodies] == [2, 2]


def test_vectors_narrower_than_the_head_are_refused(ckpt: Path, stub: Stub) -> None:
    stub.dim = 4
    with pytest.raises(EmbeddingServerError, match="4-dimensional embeddings but the head reads 8"):
        engine(ckpt, stub).classify(["a"])
