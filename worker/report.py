"""``sentiment report``: the Grafana dashboard's panels drawn from Prometheus into one PNG.

For a look at a run where no Grafana is at hand. Each panel of the dashboard JSON becomes a
small chart; each of its queries is asked of Prometheus as a range query (``query_range``) with
Grafana's variables replaced as for "All", and each returned series is a line labelled by the
query's ``legendFormat``.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

DEFAULT_DASHBOARD = (
    Path(__file__).resolve().parents[1] / "ops" / "grafana" / "dashboards" / "sentiment-worker.json"
)


@dataclass(frozen=True, slots=True)
class Series:
    legend: str
    times: list[float]
    values: list[float]


def grafana_expr(expr: str, rate_interval: str) -> str:
    """The query as Grafana sends it with every variable on "All"."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", ".*").replace("$topic", ".*")


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


def query_range(base_url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    url = f"{base_url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ConfigError(
            f"Prometheus refused {expr!r}: {exc.read().decode(errors='replace')[:300]}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot reach Prometheus at {base_url} ({exc}); see --prometheus") from None
    if answer.get("status") != "success":
        raise ConfigError(f"Prometheus could not evaluate {expr!r}: {answer.get('error')}")
    return list(answer["data"]["result"])


def panel_series(base_url: str, panel: dict[str, Any], start: float, end: float, step: float) -> list[Series]:
    rate_interval = f"{max(4 * step, 30):.0f}s"
    out = []
    for target in panel.get("targets", []):
        for result in query_range(base_url, grafana_expr(target["expr"], rate_interval), start, end, step):
            points = [(float(t), float(v)) for t, v in result["values"]]
            out.append(
                Series(
                    legend(target.get("legendFormat", ""), result["metric"]),
                    [t - start for t, _ in points],
                    [v for _, v in points],
                )
            )
    return out


def render_report(
    base_url: str, out: Path, *, dashboard: Path = DEFAULT_DASHBOARD, minutes: float = 15.0,
    step: float | None = None, end: float | None = None,
) -> tuple[int, int]:  # fmt: skip
    """Write the PNG; returns (panels drawn, series drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not dashboard.is_file():
        raise ConfigError(f"dashboard {dashboard} not found (see --dashboard)")
    panels = json.loads(dashboard.read_text())["panels"]
    end = end or time.time()
    start = end - minutes * 60
    step = step or max(1.0, minutes * 60 / 240)
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 2.7 * rows), dpi=100, squeeze=False)
    n_series = 0
    for ax, panel in zip(axes.flat, panels, strict=False):
        series = panel_series(base_url, panel, start, end, step)
        n_series += len(series)
        for s in series:
            ax.plot(s.times, s.values, label=s.legend[:40], linewidth=1.2)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_title(f"{panel['title']}" + (f"  [{unit}]" if unit else ""), fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if series:
            ax.legend(fontsize=7, loc="upper left", ncol=2 if len(series) > 3 else 1)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=8)
    fig.suptitle(f"Sentiment worker: last {minutes:g} min from {base_url}", fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return len(panels), n_series
