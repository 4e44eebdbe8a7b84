"""A real run drawn as the Grafana dashboard: dev broker, worker, Prometheus, then ``sentiment report``.

Streams the shipped test reviews (and one malformed message in fifty) at ``--rate`` reviews/s for
``--seconds`` through a worker serving the demo model (trained on first use under ``--home``),
while Debian's Prometheus scrapes it every 2 s with the alert rules loaded, then renders the
dashboard's panels over the run into ``bench/results/dashboard-cpu.png``, and writes the figures the
README quotes from it (each series' median and maximum while streaming, after a 30 s warm-up of the
rate windows) into ``dashboard-cpu.json`` beside it.

    python bench/dashboard.py --seconds 120 --rate 150
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.demo.splits import demo_splits
from worker.commands.demo import wait_ready
from worker.commands.dev_broker import DevBroker
from worker.commands.report import DEFAULT_DASHBOARD, panel_series, render_report
from worker.kafka.admin import create_topics
from worker.kafka.clients import produce_values
from worker.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


Figures = dict[str, dict[str, dict[str, float]]]  # panel title -> series legend -> median, max


def figures(url: str, start: float, end: float, warmup: float = 30.0) -> Figures:
    """Each panel's series over [start + warmup, end]: median and maximum, as queried for the picture."""
    out: Figures = {}
    for panel in json.loads(DEFAULT_DASHBOARD.read_text())["panels"]:
        rows = {}
        for s in panel_series(url, panel, start + warmup, end, 2):
            values = [v for v in s.values if v == v]  # NaN: a quantile of no observations
            if values:
                rows[s.legend] = {"median": round(statistics.median(values), 4), "max": round(max(values), 4)}
        out[panel["title"]] = rows
    return out


async def steady(brokers: str, topic: str, texts: list[str], rate: float, seconds: float) -> None:
    start, sent, n = time.monotonic(), 0, int(rate * seconds)
    while sent < n:
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        chunk = []
        for i in range(sent, min(sent + max(1, int(rate / 10)), n)):
            value = (
                b"{broken" if i % 50 == 49 else orjson.dumps({"id": f"r{i}", "text": texts[i % len(texts)]})
            )
            chunk.append((f"k{i}".encode(), value))
        await produce_values(brokers, topic, chunk)
        sent += len(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--rate", type=float, default=150, help="reviews/s")
    parser.add_argument("--home", type=Path, default=Path.home() / ".cache" / "qwen3-sentiment")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dashboard-cpu.png")
    args = parser.parse_args()
    prometheus = shutil.which("prometheus")
    if not prometheus:
        sys.exit("prometheus not found: ./setup.sh --dev installs Debian's prometheus package")
    texts = [ex.text for ex in demo_splits().test]
    work = Path(tempfile.mkdtemp(prefix="dashboard-"))
    with DevBroker(free_port()) as broker:
        asyncio.run(
            create_topics(
                broker.bootstrap,
                ["reviews", "reviews.sentiment", "reviews.dlq"],
                partitions=4,
                replication_factor=1,
            )
        )
        web = free_port()
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker", "--brokers", broker.bootstrap,
             "--home", str(args.home), "--web-port", str(web), "--web-host", "127.0.0.1",
             "--log-level", "warning"],
        )  # fmt: skip
        config = {
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
            "rule_files": [str(ROOT / "ops" / "prometheus" / "rules.yml")],
            "scrape_configs": [{"job_name": "sentiment-worker",
                                "static_configs": [{"targets": [f"127.0.0.1:{web}"]}]}],
        }  # fmt: skip
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        server = subprocess.Popen(
            [prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            started = time.time()
            wait_ready(web, worker, timeout_s=600)
            ready_s = time.time() - started
            print(f"streaming {args.rate:g} reviews/s for {args.seconds:g} s", flush=True)
            streamed = time.time()
            asyncio.run(steady(broker.bootstrap, "reviews", texts, args.rate, args.seconds))
            stopped = time.time()
            time.sleep(10)
            url, end = f"http://127.0.0.1:{port}", time.time()
            panels, series = render_report(url, args.out, minutes=(args.seconds + 20) / 60, step=2, end=end)
            summary = {
                "rate": args.rate,
                "seconds": args.seconds,
                "worker_ready_after_s": round(ready_s, 1),
                "window": "each series while streaming, after 30 s: median and max",
                "panels": figures(url, streamed, stopped),
            }
            table = args.out.with_suffix(".json")
            table.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
            print(f"wrote {args.out}: {panels} panels, {series} series; figures in {table}")
        finally:
            server.terminate()
            worker.terminate()
            server.wait(timeout=30)
            worker.wait(timeout=60)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
