"""The Prometheus endpoint: every value read from Redis and the supervisor when scraped."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import RuntimeCollector, histogram
from tests.conftest import copy_challenge, wait_for


def scrape(runtime) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{runtime.metrics.address}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


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
    assert value(samples, "swordsec_users_merged") == summary.users == 9977 + 2
    assert value(samples, "swordsec_users_accepted") == 9977 + 2
    assert value(samples, "swordsec_users_rejected") == 1
    assert value(samples, "swordsec_files", state="merged") == 11
    assert value(samples, "swordsec_files", state="streaming") == 0
    assert value(samples, "swordsec_files_damaged") == 1  # 6.json, cut inside a record
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
    before = value(scrape(runtime), "swordsec_users_merged")
    copy_challenge(runtime.settings.watch, names={"1.json"})
    runtime.run_once()
    assert value(scrape(runtime), "swordsec_users_merged") == before + 1000


def test_endpoint_stops_with_the_runtime(runtime_factory):
    runtime = runtime_factory(watch=False, workers=0, metrics_listen="127.0.0.1:0")
    address = runtime.metrics.address
    scrape(runtime)
    runtime.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{address}/metrics", timeout=5)


def test_redis_down_gives_up_zero_not_an_error():
    class Down:
        def reports(self, limit):
            raise redis.ConnectionError("gone")

    runtime = type("R", (), {"store": Down(), "queue": None, "supervisor": None})()
    families = {f.name: f for f in RuntimeCollector(runtime).collect()}
    assert list(families) == ["swordsec_up"] and families["swordsec_up"].samples[0].value == 0


def test_histogram_is_cumulative():
    assert histogram([0.05, 0.3, 7.0], buckets=(0.1, 1.0, 10.0)) == [("0.1", 1), ("1.0", 2), ("10.0", 3),
                                                                     ("+Inf", 3)]


def test_metrics_over_tls_with_the_server_certificate(runtime_factory, tmp_path):
    """Off loopback the endpoint needs TLS (or --insecure); with the --tls-cert pair it serves https only."""
    import ssl

    from tests.test_security import make_certificate

    cert, key = make_certificate(tmp_path, ["127.0.0.1", "localhost"])
    runtime = runtime_factory(watch=False, workers=0, tls_cert=cert, tls_key=key, metrics_listen="127.0.0.1:0")
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"https://{runtime.metrics.address}/metrics", timeout=10, context=context) as answer:
        assert b"swordsec_up 1.0" in answer.read()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{runtime.metrics.address}/metrics", timeout=10).read()
    assert any("exposed: metrics on" in e.text for e in runtime.events.recent(2000))
