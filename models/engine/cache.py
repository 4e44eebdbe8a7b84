"""Result and embedding caches: a text the model has already scored is not scored again.

Reviews repeat (the same short "好评", retries of a batch, re-reads after a rebalance), and an
``embedding-head`` checkpoint's expensive part, the base's embedding, is shared by every head trained
on that base. :class:`CachedClassifier` wraps any engine (:class:`~models.engine.classifier.Classifier`)
and looks each text up by its *token ids* (the model's own tokenizer output: the exact text, the
instruction prefix included, and for a cut text exactly what the model sees):

- ``sequence-classifier``: a **result cache**. Key: the model's identity (kind, name, version, dtype,
  labels) and the ids; value: the label and every label's probability. A hit skips the model.
- ``embedding-head`` (a local base or an embeddings server): an **embedding cache**. Key: the
  embedding's identity (the manifest's ``embedding_model or base_model``, ``dimensions``,
  ``instruction``, ``max_length``, dtype, tokenizer ids or UTF-8 bytes) and the ids; value: the
  normalised, MRL-cut embedding the head reads (float32). A hit runs only the engine's head, so a new
  head version (and ``train head``) reuses every embedding already computed for that base.

Where the entries live is a :class:`CacheStore`: :class:`LRUCache` in the process (the default), or
:class:`RedisCache`, shared by every worker. The cache is an optimisation, never a dependency: a
store that fails answers "all miss" and drops writes, so an outage costs compute, never a review.

In the process the lookup happens earlier, when texts are tokenised (:meth:`CachedClassifier.tokenise`),
by the text itself (the model's identity and the text, or a digest of a text longer than a review:
the same text is the same ids, cut or not, for one engine), so a hit skips the tokenizer as well as
the model and no key is built from ids.
An entry is what the text needs to be answered again: its :class:`Prediction` (a result), or its
token count, ``truncated`` and embedding. What was found travels with the ids
(:class:`CachedTokenised`; a hit's ids are empty, as none of it goes to the model) to
:meth:`CachedClassifier.classify_tokenised`, which computes only the misses. A shared store is
keyed by a digest of the ids, which every process (and ``train head``) computes alike.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import re
import sys
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast
from urllib.parse import urlsplit

import orjson
import torch

from models.engine.classifier import Classifier, EngineInfo, Inference, Prediction, Tokenised
from schemas.errors import ConfigError

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

Key = bytes | str
"""A shared store's key. The in-process LRU takes any hashable key: :class:`CachedClassifier` gives it
the ids' bytes themselves, which hash faster than any digest (they never leave the process)."""
CacheName = Literal["result", "embedding"]
Outcome = Literal["hit", "miss", "error"]
Observer = Callable[[str, str, int], None]
"""Called with (cache, outcome, count) once per outcome per batch, counting distinct texts: "hit"
(served from the store), "miss" (computed; a malformed entry is a miss) or "error" (the store could
not answer, or is in its cool-down after a failure: computed). Metrics: lookups by cache and outcome."""

FORMAT = "v1"  # in every key: a change of the value layout starts from an empty cache
# An in-process key holds its text up to this many characters (a review), a longer one's 16-byte
# digest: the store is bounded by entries, and a text may be as long as --max-message-bytes.
KEY_TEXT_CHARS = 1024
REDIS_SCHEMES = ("redis", "rediss", "unix")


class CacheStore(Protocol):
    """Bytes by key, bounded in time. Never raises for an unavailable backend: it degrades."""

    def get_many(self, keys: Sequence[Any]) -> list[bytes | None] | None:
        """The value of each key (None: absent or expired); None when the store cannot answer now."""
        ...

    def set_many(self, items: Sequence[tuple[Any, bytes]]) -> None:
        """Store every item with the store's TTL; dropped when the store cannot take them now."""
        ...

    def close(self) -> None: ...


def _bytes(key: Hashable) -> Hashable:
    return key.encode() if isinstance(key, str) else key


class LRUCache:
    """In the process: at most ``max_entries`` entries, each a miss ``ttl_s`` after it was written.

    Thread-safe (one lock): the worker's model thread and a trainer may share it. Values are kept as
    given (bytes, or any object: nothing leaves the process, so results are not serialised)."""

    shared = False  # CachedClassifier: keys need no digest, values no serialising or checking

    def __init__(
        self, *, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ConfigError(f"cache max_entries must be at least 1; got {max_entries}")
        if not ttl_s > 0:
            raise ConfigError(f"cache ttl_s must be positive; got {ttl_s}")
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()  # key → (expires, value)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: Sequence[Hashable]) -> list[Any]:
        now = self.clock()
        out: list[Any] = []
        data, append = self._data, out.append
        with self._lock:
            for key in map(_bytes, keys):
                entry = data.get(key)
                if entry is None:
                    append(None)
                elif entry[0] <= now:
                    del data[key]
                    append(None)
                else:
                    data.move_to_end(key)
                    append(entry[1])
        return out

    def set_many(self, items: Sequence[tuple[Hashable, Any]]) -> None:
        expires = self.clock() + self.ttl_s
        data = self._data
        with self._lock:
            for key, value in items:
                k = _bytes(key)
                if k in data:  # a new key goes to the end by itself
                    data.move_to_end(k)
                data[k] = (expires, value)
            while len(data) > self.max_entries:
                data.popitem(last=False)

    def close(self) -> None:
        with self._lock:
            self._data.clear()


class RedisCache:
    """A Redis (or Valkey, KeyDB) shared by every worker: ``MGET`` to look up, one pipeline of
    ``SET key value PX ttl`` to write.

    Any failure (refused, timed out, an error reply) makes that call all-miss (or drops its writes),
    logs one warning per outage and one info line when the store answers again, and starts a
    cool-down of ``cooldown_s`` in which the store is not asked at all: a Redis that hangs costs
    one short timeout per cool-down, not one per batch. The client never retries by itself.
    """

    shared = True  # other processes read it: digest keys, serialised values checked when read

    def __init__(
        self, client: redis.Redis, *, ttl_s: float, name: str, cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if not ttl_s > 0:
            raise ConfigError(f"cache ttl_s must be positive; got {ttl_s}")
        self.client, self.name = client, name
        self.ttl_ms = None if math.isinf(ttl_s) else max(1, round(ttl_s * 1000))
        self.cooldown_s, self.clock = cooldown_s, clock
        self._down_until = 0.0
        self._outage = False
        self._lock = threading.Lock()

    @classmethod
    def from_url(
        cls, url: str, *, ttl_s: float, timeout_s: float = 0.25, connect_timeout_s: float = 0.25,
        cooldown_s: float = 5.0,
    ) -> RedisCache:  # fmt: skip
        """A client for ``url`` (connects on first use: a Redis down at start only degrades)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), 0),  # redis-py ≥ 6 retries 3 times by default
            )  # fmt: skip
        except (ValueError, TypeError) as exc:
            safe = redact(url)
            raise ConfigError(f"cache URL {safe}: {redact(str(exc))}") from None
        return cls(client, ttl_s=ttl_s, name=redact(url), cooldown_s=cooldown_s)

    def _available(self) -> bool:
        return self.clock() >= self._down_until

    def _failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            self._down_until = self.clock() + self.cooldown_s
            first, self._outage = not self._outage, True
        if first:
            log.warning(
                "cache %s failed (%s: %s: %s); computing without it, asking again in %g s",
                self.name, what, type(exc).__name__, redact(str(exc)), self.cooldown_s,
            )  # fmt: skip

    def _answered(self) -> None:
        if self._outage:
            with self._lock:
                back, self._outage = self._outage, False
            if back:
                log.info("cache %s answers again", self.name)

    def get_many(self, keys: Sequence[Key]) -> list[bytes | None] | None:
        if not keys:
            return []
        if not self._available():
            return None
        try:
            values = cast("list[Any]", self.client.mget(list(keys)))
        except Exception as exc:  # a cache never fails a batch
            self._failed("MGET", exc)
            return None
        self._answered()
        return [v if isinstance(v, bytes) else None for v in values]

    def set_many(self, items: Sequence[tuple[Key, bytes]]) -> None:
        if not items or not self._available():
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(key, value, px=self.ttl_ms)
                pipe.execute()
        except Exception as exc:
            self._failed("SET", exc)
            return
        self._answered()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception as exc:
            log.debug("closing cache %s: %r", self.name, exc)


_USERINFO = re.compile(r"(?<=://)([^/]*)@")  # up to the last @ of the authority
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&#]*")


def redact(text: str) -> str:
    """``redis://user:secret@host`` → ``redis://user:***@host`` (also ``?password=``), for logs."""

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m.group(1).partition(":")
        return f"{user}:***@" if sep else "***@"

    return _PASSWORD_PARAM.sub(r"\1***", _USERINFO.sub(userinfo, text))


def open_cache(
    url: str | None, *, max_entries: int, ttl_s: float, timeout_s: float = 0.25, cooldown_s: float = 5.0
) -> LRUCache | RedisCache:
    """``None`` or ``memory://``: an :class:`LRUCache`; ``redis://``, ``rediss://``, ``unix://``: a
    :class:`RedisCache` (``max_entries`` is then Redis's own ``maxmemory`` policy's business)."""
    if url is None or url == "memory://":
        return LRUCache(max_entries=max_entries, ttl_s=ttl_s)
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(f"cache URL must be memory://, redis://, rediss:// or unix://; got {redact(url)!r}")
    return RedisCache.from_url(
        url, ttl_s=ttl_s, timeout_s=timeout_s, connect_timeout_s=timeout_s, cooldown_s=cooldown_s
    )


def _plain(tok: Tokenised) -> Tokenised:
    """The ids and flags alone, for the inner engine."""
    return tok if type(tok) is Tokenised else Tokenised(tok.ids, tok.truncated)


def _ids_bytes(ids: Sequence[int]) -> bytes:
    a = array("I", ids)  # token ids and UTF-8 bytes both fit in 32 bits
    if BIG_ENDIAN:
        a.byteswap()  # one key layout on every machine sharing a Redis
    return a.tobytes()


BIG_ENDIAN = sys.byteorder != "little"


@dataclass(frozen=True, slots=True)
class CachedTokenised(Tokenised):
    """Texts tokenised by :meth:`CachedClassifier.tokenise` with an in-process store: each text's key
    and what the store held for it then (None: a miss, tokenised). A hit's ``ids`` are empty (none
    of it goes to the model, and it costs a micro-batch's token budget nothing); its ``truncated``
    is the entry's."""

    keys: list[Hashable]
    found: list[Any]

    def take(self, index: Sequence[int]) -> CachedTokenised:
        return CachedTokenised(
            [self.ids[i] for i in index], [self.truncated[i] for i in index],
            [self.keys[i] for i in index], [self.found[i] for i in index],
        )  # fmt: skip

    def part(self, start: int, stop: int) -> CachedTokenised:
        return CachedTokenised(
            self.ids[start:stop], self.truncated[start:stop], self.keys[start:stop], self.found[start:stop]
        )

    def join(self, others: Sequence[Tokenised]) -> CachedTokenised:
        parts = [self, *others]
        if not all(isinstance(p, CachedTokenised) for p in parts):
            raise TypeError("texts tokenised by a CachedClassifier join only others tokenised by it")
        cached = cast(list[CachedTokenised], parts)
        return CachedTokenised(
            [i for p in cached for i in p.ids], [t for p in cached for t in p.truncated],
            [k for p in cached for k in p.keys], [f for p in cached for f in p.found],
        )  # fmt: skip


class CachedClassifier:
    """A :class:`~models.engine.classifier.Classifier` that asks ``store`` before ``inner``.

    Texts are looked up once per distinct token ids (duplicates in a batch are computed once); the
    misses go to the inner engine in one call and are written back. ``health`` and ``warm_up`` go
    to the inner engine uncached: they must prove the model computes. Everything else (``observer``,
    ``close`` of a remote engine, ``manifest``…) is the inner engine's.
    """

    def __init__(
        self, inner: Classifier, store: CacheStore, *, namespace: str = "sentiment",
        observer: Observer | None = None,
    ) -> None:  # fmt: skip
        self.inner, self.store, self.observer = inner, store, observer
        self.info: EngineInfo = inner.info
        self.max_batch_tokens, self.max_batch_size = inner.max_batch_tokens, inner.max_batch_size
        engine: Any = inner
        self.cache: CacheName = (
            "embedding"
            if inner.info.kind == "embedding-head" and hasattr(engine, "infer_tokenised")
            else "result"
        )
        if self.cache == "embedding":
            m = engine.manifest
            self.dimensions = int(engine.dimensions)
            identity: tuple[Any, ...] = (
                m.embedding_model or m.base_model, self.dimensions, m.instruction, m.max_length,
                inner.info.dtype, "utf-8" if engine.tokenizer is None else "tokens",
            )  # fmt: skip
        else:
            i = inner.info
            identity = (i.kind, i.name, i.version, i.dtype, i.labels)
        self.identity = identity
        self._prefix = f"{namespace}:{self.cache}:{FORMAT}:".encode()
        self._local = not getattr(store, "shared", True)  # in this process: text keys, values as they are
        # the identity keys the hash (blake2b's own key): one call per text, nothing copied
        self._identity = hashlib.blake2b(orjson.dumps(identity), digest_size=32).digest()
        self._tag = self._identity[:8]  # an in-process key: (tag, text)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def key(self, ids: Sequence[int]) -> Hashable:
        """The store key of one tokenised text: for a shared store, a digest of the identity and the
        ids; in the process (ids that did not come through :meth:`tokenise`), the identity's digest
        and the ids' bytes (a bytes object caches its hash: the LRU's several lookups cost one)."""
        if self._local:
            return self._tag + _ids_bytes(ids)
        return (
            self._prefix + blake2b(_ids_bytes(ids), digest_size=16, key=self._identity).hexdigest().encode()
        )

    # --- the Classifier protocol ------------------------------------------------------------------

    def tokenise(self, texts: Sequence[str]) -> Tokenised:
        """The inner engine's tokenisation; with an in-process store, of the texts it does not hold
        (see the module docstring)."""
        if not self._local or not texts:
            return self.inner.tokenise(texts)
        tag = self._tag
        keys: list[Hashable] = [
            (tag, text if len(text) <= KEY_TEXT_CHARS else blake2b(text.encode(), digest_size=16).digest())
            for text in texts
        ]
        found: list[Any] = self.store.get_many(keys) or [None] * len(keys)  # in the process: never None
        missing = [i for i, entry in enumerate(found) if entry is None]
        if len(missing) == len(texts):
            tok = self.inner.tokenise(texts)
            return CachedTokenised(tok.ids, tok.truncated, keys, found)
        ids: list[list[int]] = [[] for _ in found]
        at = 1 if self.cache == "embedding" else None  # an embedding entry: (n_tokens, truncated, features)
        truncated = [
            False if entry is None else (entry[at] if at is not None else entry.truncated) for entry in found
        ]
        if missing:
            fresh = self.inner.tokenise([texts[i] for i in missing])
            for j, i in enumerate(missing):
                ids[i], truncated[i] = fresh.ids[j], fresh.truncated[j]
        return CachedTokenised(ids, truncated, keys, found)

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        return self.classify_tokenised(self.tokenise(texts)) if texts else []

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        if not tok.ids:
            return []
        if self.cache == "embedding":
            index, features, miss_logits = self._embed(tok)
            hits = features[len(miss_logits) :]
            logits = torch.cat([miss_logits, self._head(hits)]) if len(hits) else miss_logits
            return Inference(logits[index], None, tok.truncated, self._n_tokens(tok)).predictions()
        if isinstance(tok, CachedTokenised):
            return self._results_by_text(tok)
        return self._results(tok)

    def warm_up(self) -> float:
        return self.inner.warm_up()

    def health(self) -> bool:
        return self.inner.health()

    def close(self) -> None:
        """Close the inner engine (if it holds anything) and the store."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
        self.store.close()

    # --- embeddings -----------------------------------------------------------------------------

    def embed_tokenised(self, tok: Tokenised) -> torch.Tensor:
        """The features the head reads, ``[n, dimensions]`` float32 on the CPU, through the cache."""
        if self.cache != "embedding":
            raise TypeError(f"a {self.info.kind} checkpoint has no embedding cache")
        if not tok.ids:
            return torch.empty(0, self.dimensions)
        index, features, _ = self._embed(tok)
        return features[index]

    def _lookup(self, tok: Tokenised) -> tuple[list[Hashable], dict[Hashable, int], list[Any] | None]:
        """Each row's key, the distinct keys (→ their first row), and each distinct key's stored
        answer (None: a miss; the list None: the store failed). Texts from :meth:`tokenise` bring
        what the in-process store held for them; other ids are looked up now."""
        first: dict[Hashable, int] = {}
        if isinstance(tok, CachedTokenised):
            answers: list[Any] = []
            for row, (key, entry) in enumerate(zip(tok.keys, self._found_now(tok), strict=True)):
                if key not in first:
                    first[key] = row
                    answers.append(None if entry is None else entry[2])  # (n_tokens, truncated, features)
            return tok.keys, first, answers
        keys = [self.key(ids) for ids in tok.ids]
        for row, key in enumerate(keys):
            first.setdefault(key, row)
        return keys, first, self.store.get_many(list(first))

    def _write(
        self, tok: Tokenised, keys: list[Hashable], rows: Sequence[int], values: Sequence[Any]
    ) -> None:
        """Store the computed ``values`` of ``rows``: by text with the ids (in the process), else by ids."""
        if isinstance(tok, CachedTokenised):  # an embedding, with what its text's hit needs
            ids, truncated = tok.ids, tok.truncated
            entries = [(keys[r], (len(ids[r]), truncated[r], v)) for r, v in zip(rows, values, strict=True)]
            self.store.set_many(cast(Any, entries))  # in the process: any value
        else:
            self.store.set_many([(keys[r], v) for r, v in zip(rows, values, strict=True)])

    def _observe(self, distinct: int, hits: int, failed: bool) -> None:
        if self.observer is None:
            return
        counts = {"error": distinct} if failed else {"hit": hits, "miss": distinct - hits}
        for outcome, count in counts.items():
            if count:
                self.observer(self.cache, outcome, count)

    def _results(self, tok: Tokenised) -> list[Prediction]:
        """In the process the store holds (label, probabilities) tuples as they are; a shared store
        holds them as JSON, checked when read."""
        keys, first, values = self._lookup(tok)
        answers: dict[Hashable, tuple[int, tuple[float, ...]]] = {}
        if values is not None:
            for k, v in zip(first, values, strict=True):
                answer = (cast(Any, v) if self._local else self._result(v)) if v is not None else None
                if answer is not None:
                    answers[k] = answer
        self._observe(len(first), len(answers), values is None)
        encode: Callable[[Any], Any] = (lambda a: a) if self._local else orjson.dumps
        if not answers and len(first) == len(keys):  # all distinct, all missed: the model's answers
            computed = self.inner.classify_tokenised(_plain(tok))
            self._write(
                tok, keys, range(len(keys)), [encode((p.label_id, p.probabilities)) for p in computed]
            )
            return computed
        missed = [k for k in first if k not in answers]
        if missed:
            rows = [first[k] for k in missed]
            computed = self.inner.classify_tokenised(_plain(tok.take(rows)))
            for k, p in zip(missed, computed, strict=True):
                answers[k] = (p.label_id, p.probabilities)
            self._write(tok, keys, rows, [encode(answers[k]) for k in missed])
        return [
            Prediction(*answers[k], truncated=t, n_tokens=len(ids))
            for k, ids, t in zip(keys, tok.ids, tok.truncated, strict=True)
        ]

    def _results_by_text(self, tok: CachedTokenised) -> list[Prediction]:
        """The in-process store holds each text's :class:`Prediction` (the same text: the same ids,
        ``truncated`` and ``n_tokens``); the misses run in one inner call, duplicates once."""
        keys, found = tok.keys, self._found_now(tok)
        missing = [i for i, entry in enumerate(found) if entry is None]
        hits = (
            len({keys[i] for i, entry in enumerate(found) if entry is not None})
            if len(missing) < len(keys)
            else 0
        )
        if not missing:
            self._observe(hits, hits, False)
            return cast(list[Prediction], list(found))
        first: dict[Hashable, int] = {}
        for i in missing:
            first.setdefault(keys[i], i)
        self._observe(hits + len(first), hits, False)
        if len(first) == len(keys):  # all distinct, all missed (a stream of new reviews)
            computed = self.inner.classify_tokenised(_plain(tok))
            self.store.set_many(cast(Any, list(zip(keys, computed, strict=True))))
            return computed
        computed = self.inner.classify_tokenised(_plain(tok.take(list(first.values()))))
        self.store.set_many(cast(Any, list(zip(first, computed, strict=True))))
        answer = dict(zip(first, computed, strict=True))
        return [entry if entry is not None else answer[key] for key, entry in zip(keys, found, strict=True)]

    def _found_now(self, tok: CachedTokenised) -> list[Any]:
        """What the store held at tokenising, completed with what it holds now for the misses: the
        batches in flight before this one (the same texts, tokenised ahead of the model) have
        stored their answers since."""
        missing = [i for i, entry in enumerate(tok.found) if entry is None]
        if not missing:
            return tok.found
        now = self.store.get_many([tok.keys[i] for i in missing]) or [None] * len(missing)
        if all(entry is None for entry in now):
            return tok.found
        found = list(tok.found)
        for i, entry in zip(missing, now, strict=True):
            found[i] = entry
        return found

    def _n_tokens(self, tok: Tokenised) -> list[int]:
        """Each text's token count: a hit's is its entry's (its ids are empty)."""
        if isinstance(tok, CachedTokenised):
            return [len(ids) if e is None else e[0] for ids, e in zip(tok.ids, tok.found, strict=True)]
        return [len(ids) for ids in tok.ids]

    def _result(self, value: bytes | None) -> tuple[int, tuple[float, ...]] | None:
        """A stored result, or None where it is absent or not one of this model's (a miss)."""
        if value is None:
            return None
        try:
            label, probs = orjson.loads(value)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
        n = len(self.info.labels)
        if (
            type(label) is not int
            or not 0 <= label < n
            or not isinstance(probs, list)
            or len(probs) != n
            or not all(type(p) is float and math.isfinite(p) for p in probs)
        ):
            return None
        return label, tuple(probs)

    def _embed(self, tok: Tokenised) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(each row's position in the features, the misses' features then the hits', the misses'
        logits). The misses run in one inner call; their features are written back."""
        keys, first, values = self._lookup(tok)
        width = 4 * self.dimensions  # float32
        sized = (
            []
            if values is None
            else [(k, v) for k, v in zip(first, values, strict=True) if v and len(v) == width]
        )
        hit_features = torch.empty(0, self.dimensions)
        if sized:
            stored = torch.frombuffer(bytearray(b"".join(v for _, v in sized)), dtype=torch.float32)
            stored = stored.view(len(sized), self.dimensions)
            finite = torch.isfinite(stored).all(dim=1)
            hit_features = stored[finite]
            sized = [kv for kv, ok in zip(sized, finite.tolist(), strict=True) if ok]
        hits = [k for k, _ in sized]
        hit_set = set(hits)
        missed = [k for k in first if k not in hit_set]
        self._observe(len(first), len(hits), values is None)
        miss_features = torch.empty(0, self.dimensions)
        miss_logits = torch.empty(0, len(self.info.labels))
        if missed:
            engine: Any = self.inner
            rows = [first[k] for k in missed]
            inference: Inference = engine.infer_tokenised(_plain(tok.take(rows)), keep_features=True)
            assert inference.features is not None
            miss_features = inference.features.float().contiguous()
            miss_logits = inference.logits
            blob = ctypes.string_at(miss_features.data_ptr(), miss_features.nbytes)
            self._write(tok, keys, rows, [blob[j * width : (j + 1) * width] for j in range(len(missed))])
        position = {k: j for j, k in enumerate([*missed, *hits])}
        index = torch.tensor([position[k] for k in keys], dtype=torch.int64)
        return index, torch.cat([miss_features, hit_features]), miss_logits

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """The inner engine's head on cached features, where and as the engine runs it (float32)."""
        head: torch.nn.Module = self.inner.head  # type: ignore[attr-defined]
        param = next(head.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            return head(features.to(device=device, dtype=torch.float32)).float().cpu()
