"""runbook/prometheus/: promtool checks and unit-tests the rules; every alert has a runbook
section and tests firing and not firing; every metric the rules and the Grafana
dashboard name is one the appliance defines (and so exports)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "runbook" / "prometheus"
RULES = RULES_DIR / "appliance.rules.yml"
TESTS = RULES_DIR / "tests.yml"
DASHBOARD = RULES_DIR / "grafana-dashboard.json"
ALERTS_MD = ROOT / "runbook" / "alerts.md"
PROMTOOL = Path(
    os.environ.get("APPLIANCE_PROMTOOL", shutil.which("promtool") or "/usr/bin/promtool")
)
# Metrics Prometheus itself adds to every scrape.
PROMETHEUS_OWN = {"up"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Not skipped when missing: .ci/run installs Debian's prometheus package (promtool),
    # and a rules test that silently skipped would prove nothing.
    assert PROMTOOL.exists(), f"{PROMTOOL} is missing: apt-get install prometheus (see .ci/run)"
    return subprocess.run(
        [str(PROMTOOL), *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=600
    )


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict]:
    return {r["alert"]: r for r in _rules() if "alert" in r}


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested not firing"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_has_a_runbook_section() -> None:
    text = ALERTS_MD.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#{2,4} (.+)$", text, re.M)}
    for name, rule in _alerts().items():
        ann = rule.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), name
        url = ann.get("runbook_url", "")
        page, _, anchor = url.partition("#")
        assert page == "runbook/alerts.md" and anchor in anchors, (name, url)
        assert rule["labels"]["severity"] in ("critical", "warning"), name
    # The SLOs are written down.
    for slo in ("99.9 %", "99 %", "60 s", "5 minutes"):
        assert slo in text


# -- metric names -----------------------------------------------------------------------

_FUNCTIONS_AND_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _FUNCTIONS_AND_KEYWORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def exported_names() -> set[str]:
    """Every sample name the appliance's processes define (the entry points import every
    module with metrics)."""
    import appliance.api.app
    import appliance.observability.alerts
    import appliance.scripting.main
    import appliance.worker.main  # noqa: F401

    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return names


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+), \w+\)", var["definition"])
            assert inner, var
            exprs.append(inner.group(1))
    return exprs


def test_metric_name_extraction() -> None:
    assert metric_names(
        'sum by (le, route) (rate(appliance_x_bucket{route=~"/api/.*"}[5m])) > 0.5 * b:c:d'
    ) == {"appliance_x_bucket", "b:c:d"}
    assert metric_names("x unless on (a, b) max by (a) (y offset 1h) == 1") == {"x", "y"}


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    exported = exported_names()
    recorded = {r["record"] for r in _rules() if "record" in r}
    exprs = [r["expr"] for r in _rules()] + _dashboard_exprs()
    used: set[str] = set()
    for expr in exprs:
        used |= metric_names(expr)
    unknown = used - exported - recorded - PROMETHEUS_OWN
    assert unknown == set(), f"not exported by the appliance: {sorted(unknown)}"
    # The dashboard shows the metrics this issue added, and every SLO.
    dash_used = set().union(*(metric_names(e) for e in _dashboard_exprs()))
    for name in (
        "appliance_process_cpu_seconds_total",
        "appliance_process_resident_memory_bytes",
        "appliance_send_queue_depth",
        "appliance_send_queue_oldest_age_seconds",
        "appliance_account_state",
        "appliance:api_requests:error_ratio_rate5m",
        "appliance:sends:error_ratio_rate5m",
        "appliance:webhook_deliveries:error_ratio_rate5m",
    ):
        assert name in dash_used, name
    # A name that does not exist would be caught.
    assert metric_names("appliance_no_such_metric") - exported == {"appliance_no_such_metric"}
