"""Per-node and per-deployment gauges for /metrics, read from the registry when Prometheus scrapes.

Every gateway exports the same fleet figures (they come from the shared database), so dashboards
and alerts aggregate them with `max by (node)`; see docs/operations.md.
"""

import logging
from collections.abc import Iterable

from django.db import DatabaseError
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .status import NodeData, list_node_data

logger = logging.getLogger(__name__)

_LIVE_STATES = ("ready", "draining", "drained", "starting")


class FleetCollector(Collector):
    """Node load, capacity, memory and readiness, and deployment states, as gauges."""

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def _families(self) -> dict[str, GaugeMetricFamily]:
        node = ["node"]
        return {
            "ok": GaugeMetricFamily("axs_fleet_scrape_ok", "1 when the fleet registry answered this scrape."),
            "up": GaugeMetricFamily("axs_node_up", "1 while the node heartbeats (ready, starting or draining).", labels=node),
            "state": GaugeMetricFamily("axs_node_state", "1 for the node's current state.", labels=["node", "state"]),
            "inflight": GaugeMetricFamily("axs_node_inflight", "Requests the node is decoding.", labels=node),
            "queued": GaugeMetricFamily("axs_node_queued", "Requests queued on the node.", labels=node),
            "slots": GaugeMetricFamily("axs_node_slots", "Requests the node decodes at once.", labels=node),
            "tps": GaugeMetricFamily("axs_node_decode_tokens_per_second", "The node's decode rate.", labels=node),
            "ttft": GaugeMetricFamily("axs_node_ttft_p95_seconds", "The node's own TTFT p95.", labels=node),
            "errors": GaugeMetricFamily("axs_node_error_rate", "Server errors over the node's last 200 requests.", labels=node),
            "memory": GaugeMetricFamily("axs_node_free_memory_bytes", "Free memory on the node.", labels=node),
            "age": GaugeMetricFamily("axs_node_heartbeat_age_seconds", "Seconds since the node's last heartbeat.", labels=node),
            "models": GaugeMetricFamily("axs_node_loaded_models", "Models ready on the node.", labels=node),
            "deployment": GaugeMetricFamily(
                "axs_deployment_state", "1 for each deployment's current state.", labels=["model", "node", "state"]
            ),
            "progress": GaugeMetricFamily("axs_deployment_progress", "Load progress in percent.", labels=["model", "node"]),
            "ready": GaugeMetricFamily("axs_model_ready_nodes", "Nodes on which the model is ready.", labels=["model"]),
        }

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        try:
            nodes = list_node_data()
        except DatabaseError:
            logger.warning("Fleet metrics: registry unreachable", exc_info=True)
            families["ok"].add_metric([], 0)
            return [families["ok"]]
        families["ok"].add_metric([], 1)
        ready: dict[str, int] = {}
        for n in nodes:
            self._node(families, n, ready)
        for model, count in sorted(ready.items()):
            families["ready"].add_metric([model], count)
        return list(families.values())

    @staticmethod
    def _node(f: dict[str, GaugeMetricFamily], n: NodeData, ready: dict[str, int]) -> None:
        name = n["name"]
        up = n["state"] in _LIVE_STATES
        f["up"].add_metric([name], 1 if up else 0)
        f["state"].add_metric([name, n["state"]], 1)
        f["inflight"].add_metric([name], n["inflight"])
        f["queued"].add_metric([name], n["queued"])
        f["slots"].add_metric([name], n["slots"])
        f["tps"].add_metric([name], n["tokens_per_s"])
        f["ttft"].add_metric([name], n["ttft_p95_ms"] / 1000)
        f["errors"].add_metric([name], n["error_rate"])
        f["memory"].add_metric([name], n["free_memory_bytes"])
        f["age"].add_metric([name], n["heartbeat_age_s"])
        f["models"].add_metric([name], n["loaded_models"])
        for d in n["deployments"]:
            f["deployment"].add_metric([d["model"], name, d["state"]], 1)
            f["progress"].add_metric([d["model"], name], d["progress"])
            ready.setdefault(d["model"], 0)
            if d["state"] == "ready" and up:
                ready[d["model"]] += 1


_collector = FleetCollector()


def register() -> None:
    """Add the fleet gauges to the default registry (once per process)."""
    if _collector not in REGISTRY._collector_to_names:  # the registry has no public membership test
        REGISTRY.register(_collector)
