"""Prometheus config and alert rules pass promtool (syntax and rule unit tests), every dashboard query is valid
PromQL, and the dashboard and alerts use only metrics and labels the service exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_checks import (
    DEPLOY,
    EXPORTED_METRICS,
    dashboard_queries,
    exported_series_names,
    metric_names_in,
)

PROMETHEUS = DEPLOY / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)")


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _alert_exprs() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _family(series: str) -> str:
    for name in EXPORTED_METRICS:
        if series == name or series.removeprefix(name) in {"_total", "_bucket", "_sum", "_count"}:
            return name
    raise KeyError(series)


@needs_promtool
def test_promtool_accepts_the_config_and_rules() -> None:
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout


@needs_promtool
def test_alert_rules_pass_their_unit_tests() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """The rule tests are not vacuous: raising the p99 threshold past the test traffic makes them fail."""
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path)
    text = (PROMETHEUS / "alerts.yml").read_text()
    assert "saliency:request_latency_seconds:p99_5m > 0.5" in text
    (tmp_path / "alerts.yml").write_text(text.replace("p99_5m > 0.5", "p99_5m > 1.5"))
    result = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "SaliencyHighP99Latency" in result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(dashboard: dict, tmp_path: Path) -> None:
    """promtool parses each panel query as a recording rule, so a typo fails here rather than in Grafana."""
    queries = dashboard_queries(dashboard)
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    result = _promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboard_and_alerts_use_only_exported_metrics(dashboard: dict) -> None:
    exported = exported_series_names()
    for title, expr in dashboard_queries(dashboard):
        unknown = metric_names_in(expr) - exported
        assert not unknown, f"panel {title!r} queries {unknown}, which the service does not export"
    for expr in _alert_exprs():
        assert not metric_names_in(expr) - exported, expr


def test_grouping_labels_exist_on_the_queried_metrics(dashboard: dict) -> None:
    exprs = [expr for _, expr in dashboard_queries(dashboard)] + _alert_exprs()
    for expr in exprs:
        labels = {"le", "job", "instance"}.union(*(EXPORTED_METRICS[_family(s)][1] for s in metric_names_in(expr)))
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            grouped = {label.strip() for label in group.split(",")}
            assert grouped <= labels, f"{expr}: groups by {grouped - labels}, which its metrics do not carry"
        for label in re.findall(r"[{,]\s*(\w+)\s*=~?", expr):
            assert label in labels, f"{expr}: filters on label {label!r}, which its metrics do not carry"


def test_dashboard_shows_what_the_operator_needs(dashboard: dict) -> None:
    queries = dashboard_queries(dashboard)
    families = {_family(s) for _, expr in queries for s in metric_names_in(expr)}
    assert families == set(EXPORTED_METRICS), f"not on the dashboard: {set(EXPORTED_METRICS) - families}"
    latency = [expr for _, expr in queries if "saliency_request_latency_seconds_bucket" in expr]
    assert {re.search(r"histogram_quantile\(([\d.]+)", e).group(1) for e in latency} == {"0.5", "0.9", "0.99"}
    by_code = [expr for _, expr in queries if "saliency_errors_total" in expr]
    assert by_code and all("by (code)" in expr for expr in by_code)
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
