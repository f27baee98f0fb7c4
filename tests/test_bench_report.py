"""The benchmark's own logic: target verdicts and the report (the runs themselves are `make bench`)."""

import json

from bench.report import write_report
from bench.run import TARGETS, verdicts


def sample():
    stats = {
        "requests": 100,
        "rps": 1000.0,
        "cpu_us_per_request": 100.0,
        "p50_ms": 1.0,
        "p90_ms": 2.0,
        "p99_ms": 3.0,
        "errors": 0,
        "non2xx": 0,
    }
    return {
        "when": "2026-11-26 12:00:00 UTC",
        "machine": {"cpus": 2, "python": "3.11", "platform": "linux"},
        "seconds_per_run": 1,
        "scenarios": {
            "pass_through": {
                **{
                    k: dict(stats)
                    for k in (
                        "direct",
                        "nginx",
                        "protocol_proxy",
                        "proxy_1_worker",
                        "proxy_2_workers",
                        "proxy_aiohttp_only",
                        "proxy_aiohttp_only_overload_256",
                        "nginx_overload_256",
                        "nginx_2_workers_overload_256",
                        "proxy_2_workers_overload_256",
                        "proxy_overload_256",
                    )
                },
                "pass_through_cpu_ratio": 5.0,
                "protocol_proxy_cpu_ratio": 1.7,
                "aiohttp_only_cpu_ratio": 8.0,
                "aiohttp_only_overload_p99_ratio": 3.5,
                "added_p50_ms": 1.0,
                "added_p99_ms": 2.0,
                "nginx_added_p50_ms": 0.5,
                "overload_p99_ratio": 2.0,
                "overload_p99_ratio_2_workers": 1.5,
                "two_workers_rps_ratio": 1.9,
            },
            "compression": {
                "rounds": 3,
                "panel_bytes": 14290,
                "cpu_us_per_request": {
                    "pass_through_plain": 51.1,
                    "pass_through_gzip": 94.5,
                    "hit_gzip": 50.8,
                    "hit_plain": 78.3,
                    "nginx_plain": 35.2,
                    "nginx_gzip": 71.3,
                },
                "compressed_hit_vs_plain_pass_through_cpu": 0.98,
                "compressed_hit_vs_nginx_gzip_cpu": 0.71,
                "panel_wire_bytes": {"identity": 14290, "gzip": 926},
                "panel_wire_ratio": 15.4,
                "cache_answers_4mib": {"plain": 121, "compressed": 2137},
                "cache_capacity_ratio": 17.7,
            },
            "held": {
                "callers": 10,
                "distinct_slow_queries": 2,
                "seconds": 1.0,
                "ok": 10,
                "errors": 0,
                "error_statuses": {},
                "upstream_calls": 2,
                "proxy_rss_baseline_mb": 1.0,
                "proxy_rss_peak_mb": 1.1,
                "held_rss_kb_per_call": 10.0,
            },
        },
    }


def test_verdicts_compare_each_target_in_its_direction():
    results = sample()
    v = verdicts(results)
    assert set(v) == set(TARGETS)
    assert v["pass_through_cpu_ratio"] == {"value": 5.0, "target": "<= 4", "met": False}
    assert v["overload_p99_ratio"]["met"] is True
    assert v["held_rss_kb_per_call"]["met"] is True
    assert v["cached_meta_rps_ratio"] == {"value": None, "target": ">= 10", "met": None}


def test_report_has_every_measured_scenario_and_a_chart(tmp_path):
    results = sample()
    results["targets"] = verdicts(results)
    write_report(results, tmp_path)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| pass_through_cpu_ratio | 5.0 | <= 4 | **no** |" in text
    assert "## Pass-through load" in text and "## Held connections" in text
    assert "| protocol server + the proxy's Cube client (no auth, no JWT) | 64 |" in text
    assert "costs 1.7x nginx: the floor of serving without aiohttp's server" in text
    assert "| proxy, fast lane off (aiohttp serves every request) | 64 |" in text
    assert "the same proxy costs 8.0x nginx's CPU per request, and its p99 at 256 connections is 3.5x" in text
    assert "| nginx, 2 workers, overload | 256 |" in text
    assert "with two workers each (one per core, as both are deployed) the proxy's p99 is 1.5x nginx's" in text
    assert "## Cached meta" not in text  # not measured in this run
    assert "926 gzipped (**15.4x** less)" in text and "| the proxy, answer cache hit | 78.3 | 50.8 |" in text
    assert "A compressed cache hit costs **0.98x** a plain pass-through's CPU" in text
    assert (tmp_path / "chart.png").stat().st_size > 1000
    json.dumps(results)  # results.json stays plain JSON
