"""The result and embedding caches (models/engine/cache.py): the in-process store, the URL handling,
and :class:`CachedClassifier` on fakes and on tiny real engines of each kind (cached == uncached).

(A real Redis shared by two workers, its TTL and its outages: tests/integration/test_cache_redis.py.)
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import torch

from models.bases.tiny import build_tiny_embedding_base
from models.engine.cache import (
    KEY_TEXT_CHARS,
    CachedClassifier,
    CachedTokenised,
    LRUCache,
    RedisCache,
    open_cache,
    redact,
)
from models.engine.classifier import (
    EmbeddingHeadEngine,
    EngineInfo,
    Inference,
    Prediction,
    SequenceClassifierEngine,
    Tokenised,
    load_classifier,
)
from models.engine.heads import build_head, save_embedding_head_checkpoint
from models.engine.remote import RemoteEmbeddingEngine
from models.manifest import Manifest
from schemas.errors import ConfigError
from tests.unit.fakes import FakeClassifier

TEXTS = [
    "这个手机很好用，电池也耐用！",
    "太差了",
    "质量还不错，内容只适合边上厕所便消遣了。" * 2,
    "好",
    "Great value 👍",
    "物流很快，质量不错" * 40,  # cut at max_length
]
LABELS = ("negative", "neutral", "positive")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Seen = list[tuple[str, str, int]]


def recorder() -> tuple[Seen, Any]:
    seen: Seen = []
    return seen, lambda cache, outcome, count: seen.append((cache, outcome, count))


# --- LRUCache ---------------------------------------------------------------------------------------


def test_lru_keeps_the_most_recently_used_entries_up_to_its_bound() -> None:
    lru = LRUCache(max_entries=3, ttl_s=60)
    lru.set_many([(b"a", b"1"), (b"b", b"2"), ("c", b"3")])
    assert lru.get_many([b"a"]) == [b"1"]  # a is now the most recent
    lru.set_many([(b"d", b"4")])  # evicts b, the least recently used
    assert len(lru) == 3
    assert lru.get_many([b"a", b"b", b"c", "d"]) == [b"1", None, b"3", b"4"]
    lru.set_many([(b"a", b"new")])
    assert lru.get_many(["a"]) == [b"new"]  # str and bytes keys are the same key


def test_lru_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    lru = LRUCache(max_entries=10, ttl_s=5, clock=clock)
    lru.set_many([(b"a", b"1")])
    clock.now += 4.9
    lru.set_many([(b"b", b"2")])
    assert lru.get_many([b"a", b"b"]) == [b"1", b"2"]
    clock.now += 0.1  # a is 5 s old
    assert lru.get_many([b"a", b"b"]) == [None, b"2"]
    assert len(lru) == 1  # the expired entry is gone, not just hidden
    clock.now += 5
    assert lru.get_many([b"b"]) == [None]


@pytest.mark.parametrize("kw", [{"max_entries": 0, "ttl_s": 1}, {"max_entries": 1, "ttl_s": 0}])
def test_lru_rejects_a_useless_configuration(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        LRUCache(**kw)


# --- open_cache and redaction --------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "memory://"])
def test_open_cache_defaults_to_the_in_process_store(url: str | None) -> None:
    store = open_cache(url, max_entries=7, ttl_s=3)
    assert isinstance(store, LRUCache)
    assert (store.max_entries, store.ttl_s) == (7, 3)


@pytest.mark.parametrize(
    "url",
    ["redis://localhost:6379/0", "rediss://:pw@cache.internal:6380", "unix:///run/redis.sock?db=2"],
)
def test_open_cache_opens_redis_urls_without_connecting(url: str) -> None:
    store = open_cache(url, max_entries=7, ttl_s=3)
    assert isinstance(store, RedisCache)
    assert "pw" not in store.name
    store.close()


@pytest.mark.parametrize(
    "url", ["http://localhost:6379", "memcached://x", "localhost:6379", "", "redis://:hunter2@[::1"]
)
def test_open_cache_rejects_other_urls_in_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_cache(url, max_entries=7, ttl_s=3)
    message = str(err.value)
    assert "\n" not in message and "hunter2" not in message
    assert "memory://" in message or "cache URL" in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:secret@host", "rediss://user:***@host"),
        ("redis://secret@host", "redis://***@host"),
        ("redis://:p@ss@host/0?a=b@c", "redis://:***@host/0?a=b@c"),
        ("unix:///run/r.sock?db=1&password=secret", "unix:///run/r.sock?db=1&password=***"),
        ("redis://host:6379", "redis://host:6379"),
    ],
)
def test_redact_hides_passwords(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_bad_port_is_a_config_error_that_hides_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        open_cache("redis://:hunter2@host:notaport", max_entries=1, ttl_s=1)
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)


# --- CachedClassifier on fakes ---------------------------------------------------------------------


def test_result_cache_on_a_fake_engine_hits_skip_the_model_and_duplicates_run_once() -> None:
    inner = FakeClassifier()
    seen, observer = recorder()
    cached = CachedClassifier(inner, LRUCache(max_entries=100, ttl_s=60), observer=observer)
    texts = ["好的", "差", "好的", "一般好"]
    first = cached.classify(texts)
    assert first == inner.classify(texts)
    assert inner.calls[0] == ["好的", "差", "一般好"]  # the duplicate computed once
    assert seen == [("result", "miss", 3)]  # distinct texts
    inner.calls.clear()
    seen.clear()
    assert cached.classify(["差", "好的", "新的好"]) == inner.classify(["差", "好的", "新的好"])
    assert inner.calls[0] == ["新的好"]
    assert seen == [("result", "hit", 2), ("result", "miss", 1)]
    inner.calls.clear()
    assert cached.classify(texts) == first
    assert inner.calls == []
    assert cached.classify([]) == [] and inner.calls == []


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "shared"])
def test_result_cache_takes_truncated_and_n_tokens_from_the_text_not_the_entry(shared: bool) -> None:
    """A text cut at max_length and one exactly max_length long have the same ids: one entry in a
    shared store (keyed by ids), two in the process (keyed by text, each with its own ids); either
    way each text keeps its own ``truncated``, and a repeat of either is a hit."""
    inner = FakeClassifier()
    cached = CachedClassifier(inner, Store() if shared else LRUCache(max_entries=100, ttl_s=60))
    exact = "好" * inner.info.max_length
    [a] = cached.classify([exact + "多"])
    [b] = cached.classify([exact])
    assert (a.truncated, b.truncated) == (True, False)
    assert a.probabilities == b.probabilities and len(inner.calls) == (1 if shared else 2)
    [a2, b2] = cached.classify([exact + "多", exact])
    assert (a2, b2) == (a, b) and len(inner.calls) == (1 if shared else 2)


def test_a_micro_batchs_part_and_a_text_taken_alone_keep_what_the_store_held() -> None:
    """The scheduler cuts what was tokenised at once into micro-batches (``part``) and the pipeline
    retries a failing batch text by text (``take``): both still know the hits, so the model sees
    only the misses, and the answers are those of the uncached engine."""
    inner = FakeClassifier()
    seen, observer = recorder()
    cached = CachedClassifier(inner, LRUCache(max_entries=100, ttl_s=60), observer=observer)
    cached.classify(["好的", "差"])
    inner.calls.clear()
    seen.clear()
    texts = ["好的", "差", "一般好", "好的", "新的"]
    tok = cached.tokenise(texts)
    part = tok.part(1, 4)  # 差, 一般好, 好的
    assert isinstance(part, CachedTokenised)
    assert cached.classify_tokenised(part) == FakeClassifier().classify(texts[1:4])
    assert inner.calls == [["一般好"]] and seen == [("result", "hit", 2), ("result", "miss", 1)]
    inner.calls.clear()
    [alone] = cached.classify_tokenised(tok.take([4]))
    assert [alone] == FakeClassifier().classify(["新的"]) and inner.calls == [["新的"]]
    # ids that did not come through tokenise() are looked up by their ids (and miss the text entries)
    inner.calls.clear()
    assert cached.classify_tokenised(inner.tokenise(["差"])) == FakeClassifier().classify(["差"])
    assert inner.calls == [["差"]]


@pytest.mark.parametrize("kind", ["result", "embedding"])
def test_a_batch_tokenised_ahead_finds_what_the_batch_before_it_stored(kind: str) -> None:
    """The tokeniser runs ahead of the model: a repeat in the next batch was a miss when it was
    tokenised, but the batch before has stored it by the time the model thread gets there."""
    inner: Any = FakeClassifier() if kind == "result" else FakeEmbeddingEngine()
    calls = counting(inner, "classify_tokenised" if kind == "result" else "infer_tokenised")
    seen, observer = recorder()
    cached = CachedClassifier(inner, LRUCache(max_entries=100, ttl_s=60), observer=observer)
    first, second = cached.tokenise(["好的", "差"]), cached.tokenise(["差", "新的"])  # both before the model
    plain = type(inner)().classify(["差", "新的"])
    cached.classify_tokenised(first)
    seen.clear()
    same(cached.classify_tokenised(second), plain)
    assert calls == [2, 1] and seen == [(kind, "hit", 1), (kind, "miss", 1)]


def test_an_in_process_entry_does_not_hold_a_long_text() -> None:
    """Keys hold a review's text, but a longer text's digest: the store is bounded by entries, and a
    text may be as long as --max-message-bytes, so keeping it would bound nothing."""
    inner = FakeClassifier()
    store = LRUCache(max_entries=100, ttl_s=60)
    cached = CachedClassifier(inner, store)
    long_text, short_text = "好" * 200_000, "好" * KEY_TEXT_CHARS
    first = cached.classify([long_text, short_text])
    assert sorted(len(key[1]) for key in store._data) == [16, KEY_TEXT_CHARS]
    assert cached.classify([long_text, short_text]) == first and len(inner.calls) == 1  # both hits
    cached.classify([long_text + "差"])  # another text, another digest: computed
    assert len(inner.calls) == 2 and len(store) == 3


def test_the_protocol_is_delegated_and_health_is_never_cached() -> None:
    inner = FakeClassifier()
    cached = CachedClassifier(inner, LRUCache(max_entries=100, ttl_s=60))
    assert cached.info is inner.info and cached.inner is inner
    assert (cached.max_batch_tokens, cached.max_batch_size) == (inner.max_batch_tokens, inner.max_batch_size)
    tok, plain = cached.tokenise(["ab"]), inner.tokenise(["ab"])
    assert (tok.ids, tok.truncated) == (plain.ids, plain.truncated)
    assert cached.gate is None  # any other attribute is the inner engine's
    assert cached.health() and cached.warm_up() == 0.0
    inner.broken = True
    assert not cached.health()
    with pytest.raises(AttributeError):
        _ = cached.no_such_thing


class Store(LRUCache):
    """An LRU whose entries the test can spoil, or that fails (None) like a Redis in an outage."""

    shared = True  # read like a shared store: digest keys, serialised values checked when read

    def __init__(self) -> None:
        super().__init__(max_entries=1000, ttl_s=60)
        self.down = False

    def get_many(self, keys: Sequence[bytes | str]) -> list[bytes | None] | None:  # type: ignore[override]
        return None if self.down else super().get_many(keys)

    def spoil(self, value: bytes) -> None:
        self.set_many([(k, value) for k in self._data])


def test_a_failing_store_is_counted_as_errors_and_computed() -> None:
    inner, store = FakeClassifier(), Store()
    seen, observer = recorder()
    cached = CachedClassifier(inner, store, observer=observer)
    store.down = True
    assert cached.classify(["好", "坏", "好"]) == inner.classify(["好", "坏", "好"])
    assert seen == [("result", "error", 2)]


class FakeEmbeddingEngine:
    """An embedding-head engine: a text's features are a function of its ids; a linear head."""

    def __init__(self, dims: int = 4, *, dtype: str = "float32", base: str = "tiny-base") -> None:
        self.info = EngineInfo("fake-head", "1", "embedding-head", LABELS, 16, "cpu", dtype)
        self.manifest = Manifest(kind="embedding-head", base_model=base, labels=list(LABELS), max_length=16)
        self.dimensions, self.tokenizer = dims, object()
        self.max_batch_tokens, self.max_batch_size = 100, 10
        torch.manual_seed(0)
        self.head = build_head("linear", dims, len(LABELS))
        self.calls: list[list[list[int]]] = []

    def tokenise(self, texts: Sequence[str]) -> Tokenised:
        return Tokenised([[ord(c) for c in t] for t in texts], [False] * len(texts))

    def infer_tokenised(self, tok: Tokenised, *, keep_features: bool = False) -> Inference:
        self.calls.append(tok.ids)
        raw = torch.tensor(
            [[sum(ids) % 97, len(ids), ids[0] % 13, 1.0][: self.dimensions] for ids in tok.ids]
        )
        feats = torch.nn.functional.normalize(raw.float(), dim=-1)
        with torch.inference_mode():
            logits = self.head(feats)
        return Inference(logits, feats if keep_features else None, tok.truncated, [len(i) for i in tok.ids])

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        return self.infer_tokenised(tok).predictions()

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        return self.classify_tokenised(self.tokenise(texts))

    def warm_up(self) -> float:
        return 0.0

    def health(self) -> bool:
        return True


def test_embedding_cache_on_a_fake_engine_is_shared_by_heads_on_the_same_base() -> None:
    store = LRUCache(max_entries=100, ttl_s=60)
    seen, observer = recorder()
    one = FakeEmbeddingEngine()
    cached = CachedClassifier(one, store, observer=observer)
    assert cached.cache == "embedding"
    texts = ["好的", "差", "好的"]
    assert cached.classify(texts) == one.classify(texts)
    assert one.calls[0] == [[22909, 30340], [24046]] and seen == [("embedding", "miss", 2)]
    # another head (another version) on the same base: every embedding is a hit, only its head runs
    other = FakeEmbeddingEngine()
    torch.nn.init.normal_(other.head[0].weight)  # type: ignore[arg-type]
    other.info = EngineInfo("fake-head", "2", "embedding-head", LABELS, 16, "cpu", "float32")
    seen.clear()
    again = CachedClassifier(other, store, observer=observer)
    assert again.classify(texts) == other.classify(texts) != cached.classify(texts)
    assert other.calls == [[[22909, 30340], [24046], [22909, 30340]]]  # only the reference call
    assert seen[0] == ("embedding", "hit", 2)
    feats = again.embed_tokenised(other.tokenise(texts))
    reference = other.infer_tokenised(other.tokenise(texts), keep_features=True).features
    assert reference is not None and torch.equal(feats, reference)
    # another base, dimension or dtype: another cache
    keys = {
        CachedClassifier(e, store).key([1, 2])
        for e in (one, other, FakeEmbeddingEngine(3), FakeEmbeddingEngine(dtype="bfloat16"),
                  FakeEmbeddingEngine(base="other-base"))
    }  # fmt: skip
    assert len(keys) == 4


NAN = struct.pack("<4f", *[float("nan")] * 4)
RESULT_JUNK = [
    b"",
    b"not json",
    orjson.dumps([7, [0.5, 0.5]]),
    orjson.dumps([0, [0.5]]),
    orjson.dumps([0, [1.0, "x"]]),
]
EMBEDDING_JUNK = [b"", b"\x00" * 15, b"\x00" * 20, NAN]


@pytest.mark.parametrize(
    ("make", "junk"),
    [(FakeClassifier, j) for j in RESULT_JUNK] + [(FakeEmbeddingEngine, j) for j in EMBEDDING_JUNK],
)
def test_malformed_entries_are_misses(make: Any, junk: bytes) -> None:
    inner, store = make(), Store()
    seen, observer = recorder()
    cached = CachedClassifier(inner, store, observer=observer)
    expected = cached.classify(["好", "坏"])
    store.spoil(junk)
    seen.clear()
    assert cached.classify(["好", "坏"]) == expected
    assert seen == [(cached.cache, "miss", 2)] and len(inner.calls) == 2


# --- CachedClassifier on tiny real engines: cached == uncached ---------------------------------------


def same(cached: list[Prediction], plain: list[Prediction]) -> None:
    assert [p.label_id for p in cached] == [p.label_id for p in plain]
    assert [(p.truncated, p.n_tokens) for p in cached] == [(p.truncated, p.n_tokens) for p in plain]
    got = torch.tensor([p.probabilities for p in cached])
    want = torch.tensor([p.probabilities for p in plain])
    assert torch.allclose(got, want, rtol=0, atol=1e-6), (got - want).abs().max()


def counting(engine: Any, method: str) -> list[int]:
    """Count the texts each call of ``engine.method`` gets (the model's work)."""
    calls: list[int] = []
    original = getattr(engine, method)

    def counted(tok: Tokenised | Sequence[str], **kw: Any) -> Any:
        calls.append(len(tok.ids) if isinstance(tok, Tokenised) else len(tok))
        return original(tok, **kw)

    setattr(engine, method, counted)
    return calls


def exercise(
    cached: CachedClassifier, plain: list[Prediction], calls: list[int], *, cut: bool = True
) -> None:
    """All miss (duplicates once), then all hit without the model, then a mix; each equals ``plain``.
    With the in-process store, the repeat is not tokenised again either, and keeps its ids."""
    texts = [*TEXTS, TEXTS[0], TEXTS[3]]
    tokenised = counting(cached.inner, "tokenise")
    try:
        tok = cached.tokenise(texts)
        assert any(tok.truncated) == cut
        same(cached.classify_tokenised(tok), plain)
        assert calls == [len(TEXTS)]
        again = cached.tokenise(texts)  # the same reviews again (a new batch)
        assert again.truncated == tok.truncated
        if not cached.store.shared:
            assert tokenised == [len(texts)], "hits are not tokenised again"
            assert again.ids == [[]] * len(texts), "a hit sends the model no tokens"
        same(cached.classify_tokenised(again), plain)
        assert calls == [len(TEXTS)], "the second call must be all hits"
    finally:
        del cached.inner.tokenise  # the instance attribute; the method again
    fresh = cached.tokenise(["全新的评论", TEXTS[2]])
    mixed = cached.classify_tokenised(fresh)
    same(mixed[1:], [plain[2]])
    assert calls == [len(TEXTS), 1]


@pytest.fixture(scope="module")
def sequence_engine(tiny_checkpoint: Path) -> SequenceClassifierEngine:
    engine = load_classifier(tiny_checkpoint, device="cpu", dtype="float32")
    assert isinstance(engine, SequenceClassifierEngine)
    return engine


def test_real_sequence_classifier_cached_equals_uncached(sequence_engine: SequenceClassifierEngine) -> None:
    texts = [*TEXTS, TEXTS[0], TEXTS[3]]
    plain = sequence_engine.classify(texts)
    cached = CachedClassifier(sequence_engine, LRUCache(max_entries=100, ttl_s=60))
    assert cached.cache == "result"
    calls = counting(sequence_engine, "classify_tokenised")
    try:
        exercise(cached, plain, calls)
    finally:
        del sequence_engine.classify_tokenised  # the instance attribute; the method again


@pytest.fixture(scope="module")
def embedding_checkpoint(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("cache-embedding")
    base = build_tiny_embedding_base(root / "base", cache_dir=cache_dir)
    torch.manual_seed(7)
    head = build_head("mlp", 32, len(LABELS), hidden=16)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 2.0)  # outputs far from uniform
    manifest = Manifest(kind="embedding-head", base_model=str(base), labels=list(LABELS), max_length=24,
                        instruction="Classify the sentiment", dimensions=32)  # fmt: skip
    return save_embedding_head_checkpoint(root / "head", head, manifest)


def test_real_embedding_head_cached_equals_uncached(embedding_checkpoint: Path) -> None:
    engine = load_classifier(embedding_checkpoint, device="cpu", dtype="float32")
    assert isinstance(engine, EmbeddingHeadEngine)
    texts = [*TEXTS, TEXTS[0], TEXTS[3]]
    plain = engine.classify(texts)
    store = LRUCache(max_entries=100, ttl_s=60)
    cached = CachedClassifier(engine, store)
    assert cached.cache == "embedding"
    calls = counting(engine, "infer_tokenised")
    exercise(cached, plain, calls)
    # hits run the head alone: bit-identical in fp32 (the head is batch-invariant)
    hit = cached.classify_tokenised(cached.tokenise(TEXTS))
    assert hit == plain[: len(TEXTS)]
    feats = cached.embed_tokenised(cached.tokenise(TEXTS[:2]))
    assert feats.shape == (2, 32) and torch.allclose(feats.norm(dim=-1), torch.ones(2))
    # a second engine on the same checkpoint (another worker) finds every embedding
    other = load_classifier(embedding_checkpoint, device="cpu", dtype="float32")
    other_calls = counting(other, "infer_tokenised")
    same(CachedClassifier(other, store).classify(texts), plain)
    assert other_calls == []


def test_real_remote_engine_without_a_tokenizer_caches_embeddings_of_utf8_bytes(
    embedding_checkpoint: Path,
) -> None:
    """The remote engine without the base's tokenizer: ids are UTF-8 bytes, another key space."""
    requests: list[list[str]] = []

    def serve(request: httpx.Request) -> httpx.Response:
        texts = orjson.loads(request.content)["input"]
        requests.append(texts)
        data = [
            {"index": i, "embedding": [b / 255 for b in hashlib.sha256(t.encode()).digest()] + [1.0] * 8}
            for i, t in enumerate(texts)
        ]
        return httpx.Response(200, json={"data": data})

    manifest = Manifest.model_validate(orjson.loads((embedding_checkpoint / "manifest.json").read_bytes()))
    local = load_classifier(embedding_checkpoint, device="cpu", dtype="float32")
    assert isinstance(local, EmbeddingHeadEngine)
    engine = RemoteEmbeddingEngine(
        manifest, local.head, url="http://embeddings.test/v1", model="tiny", dimensions=32, tokenizer=None,
        name="remote", transport=httpx.MockTransport(serve),
    )  # fmt: skip
    try:
        plain = engine.classify([*TEXTS, TEXTS[0], TEXTS[3]])
        requests.clear()
        store = LRUCache(max_entries=100, ttl_s=60)
        cached = CachedClassifier(engine, store)
        assert cached.cache == "embedding"
        assert cached.key(cached.tokenise(["好"]).ids[0]) != CachedClassifier(local, store).key(
            local.tokenise(["好"]).ids[0]
        )
        calls = counting(engine, "infer_tokenised")
        exercise(cached, plain, calls, cut=False)  # the server cuts
        assert sum(map(len, requests)) == len(TEXTS) + 1
    finally:
        engine.close()


def test_an_unreachable_redis_degrades_to_computing_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that cannot be reached: all miss, one warning, and no second attempt in the cool-down."""
    store = RedisCache.from_url("redis://:pw@127.0.0.1:1", ttl_s=5, cooldown_s=60)
    inner = FakeClassifier()
    seen, observer = recorder()
    cached = CachedClassifier(inner, store, observer=observer)
    with caplog.at_level(logging.INFO, logger="models.engine.cache"):
        for _ in range(3):
            assert cached.classify(["好", "坏"]) == inner.classify(["好", "坏"])
    assert seen == [("result", "error", 2)] * 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pw" not in warnings[0].getMessage()
