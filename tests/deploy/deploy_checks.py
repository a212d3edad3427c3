"""Shared parsing for the deployment checks: Dockerfiles, the Grafana dashboard, the service's metric contract."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILES = {"cpu": DEPLOY / "docker" / "Dockerfile.cpu", "gpu": DEPLOY / "docker" / "Dockerfile.gpu"}
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "saliency.json"

# The metric families the service exports (issue 5's contract, issue 12's model label) and their labels.
# Histograms also expose <name>_bucket / _sum / _count, counters <name>_total.
EXPORTED_METRICS: dict[str, tuple[str, set[str]]] = {
    "saliency_requests": ("counter", {"route", "method", "status", "protocol", "model"}),
    "saliency_request_latency_seconds": ("histogram", {"route", "protocol", "groups"}),
    "saliency_queue_wait_seconds": ("histogram", {"model"}),
    "saliency_inference_seconds": ("histogram", {"model"}),
    "saliency_batch_size": ("histogram", {"model"}),
    "saliency_queue_depth": ("gauge", {"model"}),
    "saliency_inflight_requests": ("gauge", set()),
    "saliency_errors": ("counter", {"code"}),
    "saliency_stage_seconds": ("histogram", {"model", "stage"}),
    "saliency_model_info": ("gauge", {"name", "version", "variant", "provider"}),
}

# What Grafana substitutes in panel queries, with values that suit a short test against a real Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}

_SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series_names() -> set[str]:
    """Every sample name a Prometheus query may use for the exported families."""
    return {name + suffix for name, (kind, _) in EXPORTED_METRICS.items() for suffix in _SAMPLE_SUFFIXES[kind]}


def metric_names_in(expr: str) -> set[str]:
    """The ``saliency_*`` series names a PromQL expression selects (recording-rule names contain ``:``)."""
    return set(re.findall(r"(?<![\w:])(saliency_[a-z0-9_]+)(?![\w:])", expr))


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, continuation lines joined.

    Attributes:
        path: the file.
        instructions: ``(KEYWORD, arguments)`` in file order.
        global_args: ``ARG name=default`` declared before the first ``FROM``.
    """

    path: Path
    instructions: list[tuple[str, str]] = field(default_factory=list)
    global_args: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"{self.path.name} has no {keyword}"
        return found[-1]

    def final_stage(self) -> list[tuple[str, str]]:
        """The instructions of the last stage (the image that runs)."""
        starts = [i for i, (key, _) in enumerate(self.instructions) if key == "FROM"]
        return self.instructions[starts[-1] :]

    def env(self) -> dict[str, str]:
        """``ENV`` of the final stage (``key=value`` form), ``${VAR}`` references to earlier values expanded."""
        values: dict[str, str] = {}
        for key, args in self.final_stage():
            if key == "ENV":
                for token in shlex.split(args):
                    name, value = token.split("=", 1)
                    values[name] = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), ""), value)
        return values


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse a Dockerfile into instructions (comments dropped, ``\\`` continuations joined)."""
    parsed = Dockerfile(path)
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not any(k == "FROM" for k, _ in parsed.instructions):
            name, _, default = args.partition("=")
            parsed.global_args[name.strip()] = default.strip()
        parsed.instructions.append((keyword, args.strip()))
    assert not pending, f"{path.name} ends in a line continuation"
    return parsed


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` for every target of every panel, Grafana variables substituted."""
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unsubstituted variable in {expr}"
            queries.append((panel["title"], expr))
    return queries
