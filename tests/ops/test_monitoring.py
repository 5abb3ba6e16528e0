"""The shipped Grafana dashboard and alert rules only name metrics this code exports."""

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import fleet.operations  # noqa: F401  (registers the fleet collector, as the URLconf does)
from tests.conftest import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
NAME = re.compile(r"\b(axs_[a-z0-9_]+)")


def exported() -> set[str]:
    return set(REGISTRY._names_to_collectors)  # every sample name, _total/_bucket included


def expressions_in(path: Path) -> list[str]:
    if path.suffix == ".json":
        return [t["expr"] for p in json.loads(path.read_text())["panels"] for t in p["targets"]]
    return [rule["expr"] for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_cover_node_offline_errors_queue_and_ttft():
    rules = {rule["alert"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for rule in g["rules"]}

    assert {"AxsNodeOffline", "AxsHighErrorRate", "AxsQueueSaturated", "AxsTTFTHigh"} <= rules


def test_dashboard_and_alerts_name_only_exported_metrics():
    names = exported()
    for path in (MONITORING / "grafana-dashboard.json", MONITORING / "alerts.yml"):
        used = {name for expr in expressions_in(path) for name in NAME.findall(expr)}

        assert used, path
        assert used <= names, f"{path.name} names metrics nobody exports: {sorted(used - names)}"
