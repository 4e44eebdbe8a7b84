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
from worker.settings import Settings
from worker.start_deadline import BACKSTOP_S

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
    return set(re.findall(r"\b(?:sentiment|process)_\w+", expr))


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dash["panels"] for target in panel["targets"]]


def measured(expr: str) -> str:
    """The metric a query plots (a ratio's numerator): the first one it names."""
    return re.findall(r"\bsentiment_\w+", expr)[0]


# Metrics that count different things: no panel (no y axis) plots two of one group.
DIFFERENT_QUANTITIES = [
    {"sentiment_batch_size_reviews_sum", "sentiment_batch_size_tokens_sum", "sentiment_batches_total"},
    {"sentiment_in_flight_batches", "sentiment_pending_reviews"},
]


def test_each_panel_plots_one_quantity_and_says_which() -> None:
    """One y axis per panel: reviews and tokens per batch, batches and the reviews they hold, each
    have their own panel; and every panel says its unit in words in `sentiment report` (a Grafana
    unit id it knows, or the panel's axisLabel for a bare count or rate)."""
    from worker.commands.report import UNITS

    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        plotted = {measured(t["expr"]) for t in panel["targets"]}
        for group in DIFFERENT_QUANTITIES:
            assert len(plotted & group) <= 1, (panel["title"], plotted & group)
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit", "") in UNITS, panel["title"]
        if panel["type"] == "timeseries" and UNITS[defaults.get("unit", "")][0] in ("", "per second"):
            assert defaults.get("custom", {}).get("axisLabel"), f"{panel['title']}: what does it count?"


@pytest.mark.parametrize(
    ("unit", "largest", "expected"),
    [
        ("percentunit", 0.64, ("%", 100.0)),  # a fraction, drawn as a percentage
        ("s", 0.08, ("ms", 1000.0)),
        ("s", 2.5, ("s", 1.0)),
        ("bytes", 3.2e9, ("GiB", 1024.0**-3)),
        ("bytes", 0.0, ("bytes", 1.0)),
        ("reqps", 150.0, ("per second", 1.0)),
        ("short", 14.7, ("", 1.0)),
    ],
)
def test_report_axis_in_words(unit: str, largest: float, expected: tuple[str, float]) -> None:
    from worker.commands.report import axis

    assert axis({"fieldConfig": {"defaults": {"unit": unit}}}, largest) == expected
    named = {"fieldConfig": {"defaults": {"unit": unit, "custom": {"axisLabel": "reviews/s"}}}}
    assert axis(named, largest) == ("reviews/s", expected[1])


def test_report_title_duration() -> None:
    from worker.commands.report import duration

    assert [duration(s) for s in (140, 2.33333 * 60, 900, 45, 3900, 0)] == [
        "2 min 20 s", "2 min 20 s", "15 min", "45 s", "1 h 5 min", "0 s",
    ]  # fmt: skip


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
              "batch_size_reviews", "model_batch_seconds", "results_total",
              "device_memory_bytes", "sentiment_ready")  # fmt: skip
    queried = " ".join(expr for _, expr in dashboard_exprs())
    assert all(w in queried for w in wanted), [w for w in wanted if w not in queried]


def test_every_alert_has_a_summary_a_runbook_and_exported_metrics() -> None:
    exported = exported_names()
    rules = rule_exprs()
    assert {r["alert"] for r in rules} == {
        "SentimentConsumerLagGrowing", "SentimentDeadLetterRateHigh", "SentimentLatencyP99High",
        "SentimentWorkerNotReady", "SentimentWorkerRestarting", "SentimentNoResults",
        "SentimentPublishRetrying", "SentimentBrokerUnreachable", "SentimentEmbeddingServerFailing",
    }  # fmt: skip
    for rule in rules:
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule["alert"]
        assert metric_names(rule["expr"]) <= exported, rule["alert"]


@pytest.mark.parametrize("command", [
    ("check", "config", OPS / "prometheus" / "prometheus.yml"),
    ("check", "rules", RULES),
    # ops/prometheus/rules_test.yml: a worker in a crash loop pages through SentimentWorkerRestarting,
    # which SentimentWorkerNotReady (5 minutes not scraped) misses
    ("test", "rules", OPS / "prometheus" / "rules_test.yml"),
])  # fmt: skip
def test_promtool_accepts_the_prometheus_files(command: tuple[str, str, Path]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: ./setup.sh --dev installs Debian's prometheus package"
    proc = subprocess.run([promtool, *command[:2], str(command[2])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


DOCKER = OPS.parent / "docker"


def host_path(volume: str) -> Path | None:
    """The host side of a compose bind mount, resolved against docker/ (None for named volumes)."""
    source = volume.split(":")[0] if not volume.startswith("${") else volume.split("}")[0]
    source = re.sub(r"^\$\{\w+:-(.*)$", r"\1", source)  # ${VAR:-default} -> default
    return (DOCKER / source).resolve() if source.startswith(".") else None


def test_compose_brings_up_kraft_kafka_topics_worker_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "topics", "worker", "prometheus", "grafana"}
    kafka = services["kafka"]
    assert (
        kafka["image"].startswith("apache/kafka:")
        and "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    )
    assert "healthcheck" in kafka
    worker = services["worker"]
    env = worker["environment"]
    for topic in (env["SENTIMENT_INPUT_TOPIC"], env["SENTIMENT_OUTPUT_TOPIC"], env["SENTIMENT_DLQ_TOPIC"]):
        assert topic in services["topics"]["command"][0], f"{topic} is not created"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert env["SENTIMENT_BROKERS"] == "kafka:9092"
    assert any(v.endswith(":/models:ro") for v in worker["volumes"]), "the model directory is a volume"
    for service in services.values():
        for volume in service.get("volumes", []):
            path = host_path(volume)
            assert path is None or path.exists(), f"{volume}: {path} does not exist"
    scrape = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["worker:6066"]
    assert "6066:6066" in worker["ports"]
    datasource = yaml.safe_load(
        (OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert datasource["datasources"][0]["uid"] == "prometheus"  # the uid every panel names


@pytest.mark.parametrize(("override", "dockerfile", "base"), [
    (None, "Dockerfile.cpu", "python:"), ("compose.gpu.yaml", "Dockerfile", "nvidia/cuda:"),
])  # fmt: skip
def test_worker_images_run_as_a_user_with_a_model_volume_and_a_healthcheck(
    override: str | None, dockerfile: str, base: str
) -> None:
    compose = yaml.safe_load((DOCKER / (override or "compose.yaml")).read_text())
    worker = compose["services"]["worker"]
    assert worker["build"]["dockerfile"] == f"docker/{dockerfile}"
    if override:
        [device] = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    text = (DOCKER / dockerfile).read_text()
    assert re.search(rf"^FROM {re.escape(base)}", text, re.M)
    assert "torch==2.13.0" in text
    assert re.search(r"^USER sentiment$", text, re.M) and "useradd --uid 10001" in text
    assert re.search(r'^VOLUME \[.*"/models"', text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)


def test_kubernetes_manifests_agree_with_the_worker() -> None:
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in (OPS / "k8s").glob("*.yaml")}
    assert set(docs) == {"deployment", "service", "servicemonitor", "keda-scaledobject"}
    pod = docs["deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # a load that hangs is the worker's own to end (exit 1 and the stacks), before the kubelet's
    # startup probe gives up on it; a slow healthy load is never killed by the liveness probe
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert "initialDelaySeconds" not in container["livenessProbe"]
    start_timeout_s = Settings.model_fields["start_timeout_s"].default
    start_allowance_s = 60  # imports, the broker check: before the deadline is armed
    restart_after_s = startup["periodSeconds"] * (startup["failureThreshold"] - 1)  # probed from 0 s
    assert restart_after_s > start_timeout_s + BACKSTOP_S + start_allowance_s
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    trigger = docs["keda-scaledobject"]["spec"]["triggers"][0]["metadata"]
    assert (
        trigger["consumerGroup"] == env["SENTIMENT_GROUP_ID"]
        and trigger["topic"] == env["SENTIMENT_INPUT_TOPIC"]
    )
    assert (
        docs["keda-scaledobject"]["spec"]["scaleTargetRef"]["name"] == docs["deployment"]["metadata"]["name"]
    )
    assert docs["servicemonitor"]["spec"]["endpoints"][0]["path"] == "/metrics"
    assert docs["service"]["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    [password] = [e for e in container["env"] if e["name"] == "SENTIMENT_SASL_PASSWORD"]
    assert "secretKeyRef" in password["valueFrom"], "the password comes from a Secret"


def test_no_password_in_arguments_and_no_setting_under_its_old_name() -> None:
    files = [*DOCKER.glob("compose*.yaml"), *(OPS / "k8s").glob("*.yaml")]
    for path in files:
        text = path.read_text()
        assert not re.search(r"SENTIMENT_REPLICATION\b|--replication\b(?!-factor)", text), path.name
        for doc in yaml.safe_load_all(text):
            containers = [*doc.get("services", {}).values()]
            if doc.get("kind") == "Deployment":
                containers += doc["spec"]["template"]["spec"]["containers"]
            for container in containers:
                words = [str(w) for w in [*container.get("command", []), *container.get("args", [])]]
                assert not any("--sasl-password" in w for w in words), path.name
