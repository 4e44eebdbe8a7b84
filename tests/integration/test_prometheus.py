"""A real Prometheus server scrapes a worker under traffic; every dashboard and alert query runs on it.

Debian's ``prometheus`` package provides the server (``./setup.sh --dev`` installs it). Grafana's
variables are replaced as Grafana would with "All" selected and a 30 s rate interval.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.integration.conftest import WorkerFactory
from tests.unit.test_ops_files import RULES, dashboard_exprs, rule_exprs
from worker.kafka.admin import create_topics
from worker.kafka.clients import produce_values
from worker.ports import free_port

pytestmark = pytest.mark.integration

GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$instance": ".*", "$topic": ".*"}


def api(port: int, path: str, **params: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def as_grafana_sends(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def traffic(broker: str, topic: str, stop: threading.Event) -> None:
    """20 reviews every 0.5 s, one of them malformed, until ``stop``."""

    async def run() -> None:
        n = 0
        while not stop.is_set():
            batch = [
                (b"k", orjson.dumps({"id": f"p{n + i}", "text": "物流很快，质量不错"})) for i in range(19)
            ]
            batch.append((b"bad", b"{not json"))
            await produce_values(broker, topic, batch)
            n += 20
            await asyncio.sleep(0.5)

    asyncio.run(run())


def test_dashboard_and_alert_queries_return_data_from_a_real_prometheus(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not found: ./setup.sh --dev installs Debian's prometheus package"
    asyncio.run(create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=2))
    worker = start_worker("--batch-size", "16")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{
            "job_name": "sentiment-worker",
            "static_configs": [{"targets": [f"127.0.0.1:{worker.web_port}"]}],  # type: ignore[attr-defined]
        }],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    stop = threading.Event()
    producer = threading.Thread(target=traffic, args=(broker, topics["input"], stop))
    args = [
        prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    with open(tmp_path / "prometheus.log", "wb") as log:
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    try:
        producer.start()
        deadline = time.monotonic() + 60
        while True:  # scrapes with traffic
            try:
                up = api(port, "query", query='up{job="sentiment-worker"}')["data"]["result"]
                out = api(port, "query", query="sentiment_messages_out_total")["data"]["result"]
                if up and up[0]["value"][1] == "1" and out and float(out[0]["value"][1]) > 100:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)

        deadline = time.monotonic() + 30
        while True:  # until every panel has data (a rate needs two scrapes in its 30 s), or 30 s passed
            empty = []
            for title, expr in dashboard_exprs():
                answer = api(port, "query", query=as_grafana_sends(expr))
                assert answer["status"] == "success", (title, expr, answer)
                if not answer["data"]["result"]:
                    empty.append((title, expr))
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not empty, f"dashboard queries without data: {empty}"

        for rule in rule_exprs():
            answer = api(port, "query", query=rule["expr"])
            assert answer["status"] == "success", (rule["alert"], answer)
        deadline = time.monotonic() + 30
        while True:  # the rules have been evaluated by the server itself, too
            groups = api(port, "rules")["data"]["groups"]
            evaluated = {r["name"]: r for g in groups for r in g["rules"]}
            done = bool(evaluated) and all(r["health"] != "unknown" for r in evaluated.values())
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert set(evaluated) == {r["alert"] for r in rule_exprs()}
        assert all(r["health"] == "ok" for r in evaluated.values()), evaluated

        # the same panels drawn from range queries into a PNG, for a person to look at
        png = tmp_path / "report.png"
        proc = subprocess.run(
            [sys.executable, "-m", "worker", "report", "--prometheus", f"http://127.0.0.1:{port}",
             "--minutes", "1", "--out", str(png)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        panels, series = map(int, re.findall(r"(\d+) panels, (\d+) series", proc.stdout)[0])
        assert panels == len({title for title, _ in dashboard_exprs()}) and series >= panels
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    finally:
        stop.set()
        producer.join(timeout=10)
        server.terminate()
        server.wait(timeout=30)
