"""The Grafana dashboard and the Prometheus rules name only metrics the worker exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from worker.metrics import Metrics

OPS = Path(__file__).resolve().parents[2] / "ops"
DASHBOARD = OPS / "grafana" / "dashboards" / "sentiment-worker.json"
RULES = OPS / "prometheus" / "rules.yml"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics.create(registry)
    return {f"{fam.name}{suffix}" for fam in registry.collect() for suffix in SUFFIXES[fam.type]}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bsentiment_\w+", expr))


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dash["panels"] for target in panel["targets"]]


def rule_exprs() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_every_dashboard_panel_has_a_datasource_and_queries_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    assert {v["name"] for v in dash["templating"]["list"]} == {"instance", "topic"}
    assert len(dash["panels"]) >= 10
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus"
            names = metric_names(target["expr"])
            assert names and names <= exported, (panel["title"], names - exported)
    wanted = ("messages_in", "messages_out", "dead_letters", "end_to_end_latency", "consumer_lag",
              "batch_size_reviews", "batch_padding_fraction", "model_batch_seconds", "results_total",
              "device_memory_bytes", "sentiment_ready")  # fmt: skip
    queried = " ".join(expr for _, expr in dashboard_exprs())
    assert all(w in queried for w in wanted), [w for w in wanted if w not in queried]


def test_every_alert_has_a_summary_a_runbook_and_exported_metrics() -> None:
    exported = exported_names()
    rules = rule_exprs()
    assert {r["alert"] for r in rules} == {
        "SentimentConsumerLagGrowing", "SentimentDeadLetterRateHigh", "SentimentLatencyP99High",
        "SentimentWorkerNotReady", "SentimentNoResults",
    }  # fmt: skip
    for rule in rules:
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule["alert"]
        assert metric_names(rule["expr"]) <= exported, rule["alert"]


@pytest.mark.parametrize("check", [("config", OPS / "prometheus" / "prometheus.yml"), ("rules", RULES)])
def test_promtool_accepts_the_prometheus_files(check: tuple[str, Path]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: ./setup.sh --dev installs Debian's prometheus package"
    proc = subprocess.run([promtool, "check", check[0], str(check[1])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
