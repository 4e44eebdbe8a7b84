"""The ``embedding-head`` kind with its embeddings from a server: OpenAI-compatible ``/v1/embeddings``.

A team that already serves Qwen3-Embedding (infinity-emb, vLLM, sglang, TEI) points the manifest's
``embedding_url`` (or ``load_classifier(embedding_url=…)``) at it; the head still runs here. The
server must pool the *last* token, as the Qwen3-Embedding repositories' ``1_Pooling/config.json``
says (infinity-emb reads it; vLLM and sglang pool the last token for Qwen3-Embedding) and append
``<|endoftext|>`` (the repositories' tokenizer does). What the client does itself, so that any such
server gives the recipe's features: the instruction prefix (``Instruct: {task}\\nQuery:{text}``),
the MRL cut to ``dimensions`` and the L2 normalisation (cutting and re-normalising a unit vector is
the same as normalising the cut raw one, so a server that normalises and one that does not agree).

Token counts (the worker's micro-batches and ``n_tokens``): when the manifest's ``base_model`` is
found locally (a directory, or a hub id in the local cache), texts are tokenised with the base's own
tokenizer and cut at ``max_length`` tokens, exactly as :class:`EmbeddingHeadEngine` does; the text
sent is those tokens decoded (less the appended ``<|endoftext|>``, which the server adds). When it is
not, a text's "token ids" are its UTF-8 bytes: an upper bound on its tokens (a byte-level BPE token
is at least one byte), so budgets hold, but ``n_tokens`` over-counts and no text is cut here (the
server truncates at its own limit, and ``truncated`` stays false).

Requests: the texts of one call are cut by ``request_tokens`` and ``request_size``; up to
``in_flight`` requests run at once; each has a timeout; 408, 429, 5xx, timeouts and refused
connections are retried with exponential backoff and jitter (``Retry-After`` honoured, capped);
any other 4xx raises :class:`EmbeddingRequestError` at once, with one line naming the URL, the
status and the server's reason. When the retries run out the server counts as down for
``cooldown_s``: calls then fail at once (so the worker's text-by-text retry of a failed batch does
not wait out the backoff per text) until :meth:`RemoteEmbeddingEngine.health`, a real request, gets
an answer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import orjson
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tokenizers import Tokenizer
from torch import nn

from models.engine.classifier import INSTRUCTION, EngineInfo, Inference, Prediction, Tokenised
from models.engine.heads import HEAD_FILE, load_head
from models.engine.loading import load_tokenizer, require_file, resolve_base
from models.engine.packing import plan_batches
from models.manifest import Manifest
from models.tokenizer import ENDOFTEXT
from schemas.errors import CheckpointError, ModelUnavailable, SentimentError

log = logging.getLogger(__name__)

RETRIED = frozenset({408, 429})  # and every 5xx
Observer = Callable[[float, str], None]
"""Called once per HTTP attempt with its seconds and outcome: the status code ("200", "503"),
"timeout" or "connect" (metrics: request latency, errors by status)."""


class EmbeddingServerError(SentimentError):
    """The embedding server could not give the embeddings."""


class EmbeddingRequestError(EmbeddingServerError):
    """The server refused a request (a 4xx other than 408/429): not retried."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class EmbeddingServerUnavailable(EmbeddingServerError, ModelUnavailable):
    """Timeouts, refused connections or 429/5xx until the retries ran out (or the cool-down): the
    worker waits for the server (not ready) instead of dead-lettering anything."""


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    request_size: int = 64  # texts per request
    request_tokens: int = 8192  # tokens (see the module docstring) per request
    in_flight: int = 4  # requests at once
    timeout_s: float = 20.0  # per request: 5 attempts stay under --stuck-batch-s (120 s), so a hung
    # server shows as "model unavailable" (not ready), not as a hung model call (/healthz fails)
    retries: int = 4  # after the first attempt
    backoff_s: float = 0.25  # first retry's delay; doubles, with jitter, up to max_backoff_s
    max_backoff_s: float = 8.0
    cooldown_s: float = 5.0  # after the retries ran out, calls fail at once for this long
    probe_timeout_s: float = 5.0  # health()
    idle_probe_s: float = 5.0  # the worker probes the server this often while no batch runs (readiness)


def endpoint(url: str) -> str:
    """``http://host:8000/v1`` (an OpenAI client's base URL) or the full ``…/embeddings`` URL."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CheckpointError(f"embedding_url must be an http:// or https:// URL; got {url!r}")
    return url if url.endswith("/embeddings") else f"{url}/embeddings"


def head_in_dim(directory: Path) -> int:
    """The embedding width the head reads (``0.weight``'s inputs), without loading the base."""
    require_file(directory, HEAD_FILE, why="the trained head of an embedding-head checkpoint")
    try:
        with safe_open(str(directory / HEAD_FILE), framework="pt") as f:
            return int(f.get_slice("0.weight").get_shape()[1])
    except Exception as exc:
        raise CheckpointError(f"{directory / HEAD_FILE}: cannot read 0.weight: {exc}") from None


class RemoteEmbeddingEngine:
    """The :class:`~models.engine.classifier.Classifier` of an ``embedding-head`` checkpoint whose
    embeddings come from an OpenAI-compatible server; the head runs here, on the CPU, in float32."""

    def __init__(
        self,
        manifest: Manifest,
        head: nn.Module,
        *,
        url: str,
        model: str,
        dimensions: int,
        tokenizer: Tokenizer | None,
        append_id: int | None = None,
        name: str,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 256,
        options: RemoteOptions | None = None,
        observer: Observer | None = None,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.manifest = manifest
        self.head = head.float().eval()
        self.url, self.model = endpoint(url), model
        self.dimensions = dimensions
        self.tokenizer, self.append_id = tokenizer, append_id
        self.eos_id = tokenizer.token_to_id(ENDOFTEXT) if tokenizer is not None else None
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        self.options = opts = options or RemoteOptions()
        self.observer = observer
        self.idle_probe_s = opts.idle_probe_s
        self.headers = {"content-type": "application/json"}
        if api_key:  # OpenAI-style; never logged (requests are logged by URL and status only)
            self.headers["authorization"] = f"Bearer {api_key}"
        self.client = httpx.Client(
            timeout=opts.timeout_s,
            limits=httpx.Limits(max_connections=opts.in_flight + 1),
            transport=transport,
        )
        self.pool = ThreadPoolExecutor(max_workers=opts.in_flight, thread_name_prefix="embedding-request")
        self._down_until = 0.0
        self._lock = threading.Lock()
        self.info = EngineInfo(
            name=name,
            version=manifest.version,
            kind=manifest.kind,
            labels=tuple(manifest.labels),
            max_length=manifest.max_length,
            device=self.url,
            dtype="float32",
        )

    @classmethod
    def load(
        cls, directory: Path, manifest: Manifest, *, url: str, model: str | None = None, **kw: Any
    ) -> Self:
        """The head from ``directory``; the base's tokenizer if ``base_model`` is found locally."""
        tokenizer: Tokenizer | None = None
        append_id = None
        try:
            base: Path | None = resolve_base(manifest.base_model, directory)
        except CheckpointError:
            base = None
        if base is not None and (base / "tokenizer.json").is_file():
            tokenizer, append_id = load_tokenizer(base, manifest.max_length, append_eos=True)
        else:
            log.info(
                "%s: base_model %r is not here; counting a text's tokens as its UTF-8 bytes (an upper "
                "bound) and leaving truncation to the embedding server", directory, manifest.base_model,
            )  # fmt: skip
        dims = manifest.dimensions or head_in_dim(directory)
        head = load_head(directory, in_dim=dims, num_labels=len(manifest.labels))
        return cls(
            manifest, head, url=url, model=model or manifest.embedding_model or manifest.base_model,
            dimensions=dims, tokenizer=tokenizer, append_id=append_id,
            name=manifest.name or directory.name, **kw,
        )  # fmt: skip

    # --- tokens -----------------------------------------------------------------------------

    def tokenise(self, texts: Sequence[str]) -> Tokenised:
        if self.manifest.instruction:
            texts = [INSTRUCTION.format(task=self.manifest.instruction, text=t) for t in texts]
        if self.tokenizer is None:
            return Tokenised([list(t.encode("utf-8")) for t in texts], [False] * len(texts))
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = [e.ids for e in encodings]
        if self.append_id is not None:
            ids = [[*i, self.append_id] for i in ids]
        return Tokenised(ids, [bool(e.overflowing) for e in encodings])

    def text_of(self, ids: Sequence[int], truncated: bool = False) -> str:
        """What is sent for a tokenised text: the text again (prefix included, final EOS left out)."""
        if self.tokenizer is None:
            return bytes(ids).decode("utf-8")
        if ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        # a cut may end inside a character's bytes: drop the replacement characters that leaves
        return text.rstrip("\ufffd") if truncated else text

    # --- requests ---------------------------------------------------------------------------

    def _observe(self, seconds: float, outcome: str) -> None:
        if self.observer is not None:
            self.observer(seconds, outcome)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        opts = self.options
        if retry_after is not None:
            try:
                return min(opts.max_backoff_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(opts.max_backoff_s, opts.backoff_s * 2**attempt) * (0.5 + random.random() / 2)

    def post(self, texts: list[str], *, probe: bool = False) -> torch.Tensor:
        """One request's embeddings ``[n, d]`` (float32), in order; retried as the module says.

        ``probe`` (health): one attempt with the probe timeout, ignoring and clearing the cool-down.
        """
        opts = self.options
        body = orjson.dumps({"model": self.model, "input": texts, "encoding_format": "float"})
        attempts = 1 if probe else opts.retries + 1
        why = ""
        for attempt in range(attempts):
            if not probe and time.monotonic() < self._down_until:
                raise EmbeddingServerUnavailable(
                    f"embedding server {self.url} is unavailable ({why or 'it failed recently'}); "
                    f"not asking again until a health probe succeeds or {opts.cooldown_s:g} s pass"
                )
            started = time.perf_counter()
            retry_after = None
            try:
                response = self.client.post(
                    self.url, content=body, headers=self.headers,
                    timeout=opts.probe_timeout_s if probe else opts.timeout_s,
                )  # fmt: skip
            except httpx.TimeoutException as exc:
                outcome, why = "timeout", f"timed out ({type(exc).__name__})"
            except httpx.TransportError as exc:
                outcome, why = "connect", f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                outcome = str(status)
                if status == 200:
                    self._observe(time.perf_counter() - started, outcome)
                    vectors = self._vectors(response, len(texts))
                    self._down_until = 0.0
                    return vectors
                detail = " ".join(response.text.split())[:300]
                if status not in RETRIED and status < 500:
                    self._observe(time.perf_counter() - started, outcome)
                    raise EmbeddingRequestError(
                        f"embedding server {self.url} refused the request (model {self.model!r}, "
                        f"{len(texts)} texts): {status} {response.reason_phrase}: {detail}{_hint(status)}",
                        status,
                    )
                why = f"{status} {response.reason_phrase}: {detail}"
                retry_after = response.headers.get("retry-after")
            self._observe(time.perf_counter() - started, outcome)
            if attempt + 1 < attempts:
                delay = self._delay(attempt, retry_after)
                log.warning("embedding request failed (%s); retrying in %.2f s", why, delay)
                time.sleep(delay)
        if not probe:
            with self._lock:
                self._down_until = time.monotonic() + opts.cooldown_s
        raise EmbeddingServerUnavailable(
            f"embedding server {self.url} failed {attempts} time(s); last: {why}"
        )

    def _vectors(self, response: httpx.Response, n: int) -> torch.Tensor:
        try:
            data = orjson.loads(response.content)["data"]
            rows = sorted(data, key=lambda d: d.get("index", 0)) if all("index" in d for d in data) else data
            vectors = torch.tensor([d["embedding"] for d in rows], dtype=torch.float32)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise EmbeddingServerError(
                f"embedding server {self.url}: not an OpenAI embeddings response ({exc!r})"
            ) from None
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise EmbeddingServerError(
                f"embedding server {self.url} returned {tuple(vectors.shape)} for {n} texts"
            )
        if vectors.shape[1] < self.dimensions:
            raise EmbeddingServerError(
                f"embedding server {self.url} (model {self.model!r}) returns {vectors.shape[1]}-dimensional "
                f"embeddings but the head reads {self.dimensions}: is it serving the checkpoint's base "
                f"{self.manifest.base_model!r}?"
            )
        return vectors

    def _embed_planned(self, texts: list[str], lengths: list[int]) -> torch.Tensor:
        opts = self.options
        batches = plan_batches(
            lengths, max_batch_tokens=opts.request_tokens, max_batch_size=opts.request_size
        )
        futures: list[tuple[list[int], Future[torch.Tensor]]] = [
            (b, self.pool.submit(self.post, [texts[i] for i in b])) for b in batches
        ]
        out: torch.Tensor | None = None
        try:
            for batch, future in futures:
                vectors = future.result()
                if out is None:
                    out = torch.empty(len(texts), vectors.shape[1])
                out[torch.tensor(batch)] = vectors
        except BaseException:
            for _, future in futures:
                future.cancel()
            raise
        assert out is not None
        return out

    def features(self, vectors: torch.Tensor) -> torch.Tensor:
        """The recipe's client-side part: MRL cut, then L2 normalisation."""
        return F.normalize(vectors[:, : self.dimensions], p=2.0, dim=-1)

    # --- the Classifier protocol --------------------------------------------------------------

    def infer(self, texts: Sequence[str], *, keep_features: bool = False) -> Inference:
        return self.infer_tokenised(self.tokenise(texts), keep_features=keep_features)

    def infer_tokenised(self, tok: Tokenised, *, keep_features: bool = False) -> Inference:
        lengths = [len(ids) for ids in tok.ids]
        if not tok.ids:
            return Inference(torch.empty(0, len(self.manifest.labels)), None, [], [])
        texts = [self.text_of(ids, t) for ids, t in zip(tok.ids, tok.truncated, strict=True)]
        feats = self.features(self._embed_planned(texts, lengths))
        with torch.inference_mode():
            logits = self.head(feats)
        return Inference(logits, feats if keep_features else None, tok.truncated, lengths)

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        return self.classify_tokenised(self.tokenise(texts)) if texts else []

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        return self.infer_tokenised(tok).predictions() if tok.ids else []

    def warm_up(self) -> float:
        """A few requests of several lengths (the server reachable, the vectors wide enough); seconds."""
        started = time.perf_counter()
        self.classify(["好" * n for n in (1, 7, 33)])
        return time.perf_counter() - started

    def health(self) -> bool:
        """Whether the server answers now: one real request (no retries), through the head."""
        try:
            tok = self.tokenise(["ok"])
            vectors = self.post([self.text_of(tok.ids[0])], probe=True)
            with torch.inference_mode():
                probs = self.head(self.features(vectors)).softmax(-1)
        except Exception as exc:
            log.error("embedding server health probe failed: %s", exc)
            return False
        return bool(torch.isfinite(probs).all())

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def _hint(status: int) -> str:
    if status == 404:
        return (
            " (check the URL: OpenAI-compatible servers answer POST <base>/v1/embeddings; infinity-emb "
            "without --url-prefix /v1 answers <base>/embeddings)"
        )
    if status in (401, 403):
        return " (the server wants credentials)"
    return ""
