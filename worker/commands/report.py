"""``sentiment report``: the Grafana dashboard's panels drawn from Prometheus into one PNG.

For a look at a run where no Grafana is at hand. Each panel of the dashboard JSON becomes a
small chart; each of its queries is asked of Prometheus as a range query (``query_range``) with
Grafana's variables replaced as for "All", and each returned series is a line labelled by the
query's ``legendFormat``. The y axis says what is counted: the panel's ``axisLabel`` where it has
one, else its Grafana unit in words (``percentunit`` drawn as %, seconds below one as ms, bytes in
KiB/MiB/GiB). A stat panel shown by name only (``textMode: name``, the model) is drawn as text.
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
    Path(__file__).resolve().parents[2] / "ops" / "grafana" / "dashboards" / "sentiment-worker.json"
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


# Grafana unit id -> (what the y axis says, factor applied to the values); see :func:`axis`.
UNITS: dict[str, tuple[str, float]] = {
    "percentunit": ("%", 100.0),
    "percent": ("%", 1.0),
    "reqps": ("per second", 1.0),
    "ops": ("per second", 1.0),
    "s": ("s", 1.0),
    "ms": ("ms", 1.0),
    "bytes": ("bytes", 1.0),
    "decbytes": ("bytes", 1.0),
    "short": ("", 1.0),
    "none": ("", 1.0),
    "": ("", 1.0),
}
_BINARY = ("bytes", "KiB", "MiB", "GiB", "TiB")


def axis(panel: dict[str, Any], largest: float) -> tuple[str, float]:
    """The y axis label and the factor for ``panel``'s values, whose largest magnitude is ``largest``."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = str(defaults.get("unit", ""))
    label, factor = UNITS.get(unit, (unit, 1.0))
    if unit == "s" and 0 < largest < 1:
        label, factor = "ms", 1000.0
    elif unit in ("bytes", "decbytes"):
        power = min(len(_BINARY) - 1, max(0, int(math.log(largest, 1024)))) if largest >= 1 else 0
        label, factor = _BINARY[power], 1024.0**-power
    named = defaults.get("custom", {}).get("axisLabel")
    return (str(named) if named else label), factor


def duration(seconds: float) -> str:
    """``140`` -> ``2 min 20 s``; ``900`` -> ``15 min``; ``3900`` -> ``1 h 5 min``."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {name}" for n, name in ((hours, "h"), (minutes, "min"), (secs, "s")) if n]
    return " ".join(parts) or "0 s"


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
        ax.set_title(panel["title"], fontsize=10, loc="left")
        if not series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        if panel.get("type") == "stat" and panel.get("options", {}).get("textMode") == "name":
            # what Grafana shows: the names (a model's name, version, device), not the value 1
            text = "\n".join(sorted({s.legend for s in series}))
            ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=13)
            ax.set_axis_off()
            continue
        largest = max((abs(v) for s in series for v in s.values if math.isfinite(v)), default=0.0)
        label, factor = axis(panel, largest)
        for s in series:
            ax.plot(s.times, [v * factor for v in s.values], label=s.legend[:40], linewidth=1.2)
        ax.set_ylabel(label, fontsize=8)
        if all(v >= 0 for s in series for v in s.values if math.isfinite(v)):
            # from zero, as a size or a rate reads (not a zoom on its wiggles), with room above the top
            ax.set_ylim(0, largest * factor * 1.1 or 1.0)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="best", ncol=2 if len(series) > 3 else 1)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for column in axes.T:  # the time axis named once per column, under its lowest chart
        charts = [ax for ax in column if ax.get_visible() and ax.axison]
        if charts:
            charts[-1].set_xlabel("seconds", fontsize=8)
    fig.suptitle(f"Sentiment worker: last {duration(minutes * 60)} from {base_url}", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # the top 0.4 inch for the title
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return len(panels), n_series
