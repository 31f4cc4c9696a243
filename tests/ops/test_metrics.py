"""The Prometheus endpoint: counters kept in Redis (monotonic, across restarts and processes), gauges read
when scraped, names and types as Prometheus's naming guide and parser expect, and the Grafana dashboard's
queries name only metrics the endpoint serves."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from core.ops.metrics import PipelineCollector
from tests.conftest import ROOT, copy_challenge, wait_for


def exposition(runtime) -> str:
    with urllib.request.urlopen(f"http://{runtime.metrics.address}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        return answer.read().decode()


def scrape(runtime) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposition(runtime)) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_after_ingesting_the_challenge(runtime_factory):
    runtime = runtime_factory(watch=False, workers=2, metrics_listen="127.0.0.1:0")
    assert runtime.metrics.port != 0
    copy_challenge(runtime.settings.watch)
    (runtime.settings.watch / "bad.json").write_bytes(orjson.dumps([
        {"id": 1, "email": "ok1@example.com", "first_name": "A"},
        {"id": 2 ** 40, "email": "too-big-id@example.com"},
        {"id": 3, "email": "ok3@example.com", "first_name": "C"},
    ]))
    summary = runtime.run_once()
    samples = scrape(runtime)
    assert value(samples, "swordsec_up") == 1
    assert value(samples, "swordsec_users") == summary.users == 9977 + 2
    assert value(samples, "swordsec_records_accepted_total") == 9977 + 2
    assert value(samples, "swordsec_records_rejected_total") == 1
    assert value(samples, "swordsec_users_merged_total", outcome="new") == 9977 + 2
    assert value(samples, "swordsec_files_total", outcome="merged") == 11
    assert value(samples, "swordsec_files_total", outcome="rejected") == 0
    assert value(samples, "swordsec_ledger_files", state="merged") == 11
    assert value(samples, "swordsec_ledger_files", state="streaming") == 0
    assert value(samples, "swordsec_files_damaged_total") == 1  # 6.json, cut inside a record
    assert value(samples, "swordsec_queue_jobs", state="queued") == 0
    assert value(samples, "swordsec_queue_jobs", state="failed") == 0
    assert value(samples, "swordsec_local_workers_alive") == 2
    wait_for(lambda: value(scrape(runtime), "swordsec_workers_alive") == 2, 30, message="two workers in Redis")
    assert value(samples, "swordsec_ingest_latency_seconds_count") == 11
    assert value(samples, "swordsec_ingest_latency_seconds_bucket", le="+Inf") == 11
    assert value(samples, "swordsec_ingest_latency_seconds_sum") > 0
    assert value(samples, "swordsec_export_age_seconds") >= 0


def test_values_are_read_at_scrape_time(runtime_factory):
    runtime = runtime_factory(watch=False, workers=2, metrics_listen="127.0.0.1:0")
    wait_for(lambda: value(scrape(runtime), "swordsec_local_workers_alive") == 2, 30, message="two workers")
    runtime.supervisor.scale(1)
    wait_for(lambda: value(scrape(runtime), "swordsec_local_workers_alive") == 1, 30, message="scale down to 1")
    wait_for(lambda: value(scrape(runtime), "swordsec_workers_alive") == 1, 60,
             message="the stopped worker to leave Redis")
    before = value(scrape(runtime), "swordsec_users")
    copy_challenge(runtime.settings.watch, names={"1.json"})
    runtime.run_once()
    assert value(scrape(runtime), "swordsec_users") == before + 1000


def test_endpoint_stops_with_the_runtime(runtime_factory):
    runtime = runtime_factory(watch=False, workers=0, metrics_listen="127.0.0.1:0")
    address = runtime.metrics.address
    scrape(runtime)
    runtime.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{address}/metrics", timeout=5)


def test_redis_down_gives_up_zero_not_an_error():
    class Down:
        def counters(self):
            raise redis.ConnectionError("gone")

    families = {f.name: f for f in PipelineCollector(Down(), queue=None).collect()}
    assert list(families) == ["swordsec_up"] and families["swordsec_up"].samples[0].value == 0


def test_names_and_types_follow_prometheus_conventions(runtime_factory):
    runtime = runtime_factory(watch=False, workers=1, metrics_listen="127.0.0.1:0")
    copy_challenge(runtime.settings.watch, names={"1.json"})
    runtime.run_once()
    families = {f.name: f for f in text_string_to_metric_families(exposition(runtime))}
    ours = {name: f.type for name, f in families.items() if name.startswith("swordsec_")}
    assert ours == {
        "swordsec_up": "gauge", "swordsec_records_accepted": "counter", "swordsec_records_rejected": "counter",
        "swordsec_users_merged": "counter", "swordsec_files": "counter", "swordsec_files_damaged": "counter",
        "swordsec_ingest_latency_seconds": "histogram", "swordsec_users": "gauge", "swordsec_ledger_files": "gauge",
        "swordsec_queue_jobs": "gauge", "swordsec_workers_alive": "gauge", "swordsec_local_workers_alive": "gauge",
        "swordsec_export_age_seconds": "gauge", "swordsec_users_undecodable": "gauge"}
    for family in families.values():  # counters expose *_total samples; units are base units
        if family.type == "counter":
            assert {s.name for s in family.samples} <= {family.name + "_total", family.name + "_created"}
    assert "process_resident_memory_bytes" in families and "python_info" in families
    buckets = [s.value for s in families["swordsec_ingest_latency_seconds"].samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == 1  # cumulative, +Inf last


def test_counters_only_grow_across_restarts(make_settings, connection):
    """Kept in Redis: a restarted server (or a second one) adds to them instead of starting from zero."""
    from core.runtime import Runtime

    seen = []
    for name in ("1.json", "2.json"):
        runtime = Runtime(make_settings(workers=1, metrics_listen="127.0.0.1:0"), watch=False).start()
        try:
            copy_challenge(runtime.settings.watch, names={name})
            runtime.run_once()
            samples = scrape(runtime)
            seen.append((value(samples, "swordsec_records_accepted_total"),
                         value(samples, "swordsec_files_total", outcome="merged"),
                         value(samples, "swordsec_ingest_latency_seconds_count")))
        finally:
            runtime.stop()
    assert seen == [(1000, 1, 1), (2000, 2, 2)]


def test_the_grafana_dashboard_queries_only_metrics_we_serve(runtime_factory):
    import json
    import re

    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    assert dashboard["panels"] and dashboard["title"] == "swordsec-console"
    runtime = runtime_factory(watch=False, workers=1, metrics_listen="127.0.0.1:0")
    copy_challenge(runtime.settings.watch, names={"1.json"})
    runtime.run_once()
    served = {name for name, _ in scrape(runtime)}
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in queries for name in re.findall(r"\b(swordsec_[a-z_]+)", expr)}
    assert used and used <= served, f"the dashboard asks for {sorted(used - served)}"
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["gridPos"]["w"] > 0 and panel["datasource"]["type"] == "prometheus"


def test_metrics_over_tls_with_the_server_certificate(runtime_factory, tmp_path):
    """Off loopback the endpoint needs TLS (or --insecure); with the --tls-cert pair it serves https only."""
    import ssl

    from tests.service.test_security import make_certificate

    cert, key = make_certificate(tmp_path, ["127.0.0.1", "localhost"])
    runtime = runtime_factory(watch=False, workers=0, tls_cert=cert, tls_key=key, metrics_listen="127.0.0.1:0")
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"https://{runtime.metrics.address}/metrics", timeout=10, context=context) as answer:
        assert b"swordsec_up 1.0" in answer.read()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{runtime.metrics.address}/metrics", timeout=10).read()
    assert any("exposed: metrics on" in e.text for e in runtime.events.recent(2000))


def test_host_port_has_one_parser():
    import pytest

    from core.config import ConfigError, join_address, parse_address

    assert parse_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert join_address("::1", 9100) == "[::1]:9100" and join_address("0.0.0.0", 1) == "0.0.0.0:1"
    for bad in ("9100", ":9100", "host:", "host:http", "host:65536", "host:-1"):
        with pytest.raises(ConfigError, match="is not HOST:PORT"):
            parse_address(bad, "metrics listen address")
