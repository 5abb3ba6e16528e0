"""The benches gate releases through their target checks: a missed target must be reported."""

from bench.fleet import Throughput, dispatch_misses, throughput_misses, throughput_table
from bench.soak import Quarter, soak_misses


def throughput(nodes: int, rps: float, failures: int = 0) -> Throughput:
    return Throughput(nodes=nodes, clients=8 * nodes, rps=rps, p50_ms=320, p99_ms=340, gateway_cores=0.2, spread="", to_full_node=0.0, failures=failures)


def quarter(index: int, *, p95_ms: float, rss_mb: float) -> Quarter:
    return Quarter(index=index, start=0, end=1, requests=100, rps=50, p50_ms=p95_ms / 2, p95_ms=p95_ms, rss_mb=rss_mb)


def test_fleet_flags_a_node_count_that_scales_below_target():
    results = [throughput(1, 25.0), throughput(2, 49.0), throughput(3, 70.0)]

    missed = throughput_misses(results)

    assert missed == ["3 nodes: 2.80x one node < 2.85x"]
    assert "| 3 | 24 | 70.0 | 2.80x | >= 2.85x |" in throughput_table(results)


def test_fleet_passes_linear_scaling_and_flags_failed_requests():
    assert throughput_misses([throughput(1, 25.0), throughput(2, 50.0), throughput(3, 74.0)]) == []
    assert throughput_misses([throughput(1, 25.0, failures=2)]) == ["1 node(s): 2 failed requests"]


def test_fleet_flags_slow_dispatch_only_at_the_target_fleet_size():
    results = {(16, "scored"): (0.01, 0.5), (256, "scored"): (0.1, 0.25), (256, "least_inflight"): (0.05, 0.1)}

    assert dispatch_misses(results) == ["scored at 256 nodes: p99 0.250 ms > 0.2 ms"]


def test_soak_flags_rss_growth_p95_drift_hangs_and_leftovers():
    steady = [quarter(1, p95_ms=200, rss_mb=100), quarter(4, p95_ms=205, rss_mb=102)]
    worse = [quarter(1, p95_ms=200, rss_mb=100), quarter(4, p95_ms=230, rss_mb=110)]

    assert soak_misses(steady, hung=0, errors=0, leftover=0) == []
    assert soak_misses(worse, hung=1, errors=2, leftover=3) == [
        "gateway RSS grew +10.0% (> 5%)",
        "p95 latency drifted +15.0% (> 10%)",
        "1 hung request(s)",
        "2 failed request(s)",
        "3 request(s) still in flight at the gateway after the load stopped",
    ]
