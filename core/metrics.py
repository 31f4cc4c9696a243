"""The Prometheus endpoint (`--metrics-listen HOST:PORT`): read from Redis and the supervisor at scrape time.

Nothing is counted in this process: every value is computed from the store of record when Prometheus
asks, so the numbers agree with the console and with what workers on other machines did, and a
restarted server does not reset them. A scrape costs a handful of Redis reads plus one pipelined read
of the newest file reports (REPORT_WINDOW), which bounds its cost however many files were ever ingested.
"""

from __future__ import annotations

import time
from collections import Counter

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from rq import Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry

from core.taskqueue import JSONSerializer

REPORT_WINDOW = 1000
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FILE_STATES = ("streaming", "queued", "merged", "rejected")


def ingest_seconds(report: dict) -> float | None:
    """From the first byte read to the last batch accepted (or merged, when the store records when)."""
    try:
        started = float(report.get("started_at") or 0)
        ended = float(report.get("merged_at") or report.get("finished_at") or 0)
        if started and ended >= started:
            return ended - started
        return float(report["seconds"]) if report.get("seconds") is not None else None
    except (TypeError, ValueError):  # a report written by an older or newer version: skip, never fail a scrape
        return None


def histogram(values: list[float], buckets=LATENCY_BUCKETS) -> list[tuple[str, int]]:
    cumulative = [(str(bound), sum(1 for v in values if v <= bound)) for bound in buckets]
    return [*cumulative, ("+Inf", len(values))]


class RuntimeCollector(Collector):
    """Reads runtime.store, runtime.queue and runtime.supervisor on every scrape."""

    def __init__(self, runtime):
        self.runtime = runtime

    def collect(self):
        up = GaugeMetricFamily("swordsec_up", "1 when Redis answered this scrape")
        try:
            families = list(self._families())
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self):
        store, queue, supervisor = self.runtime.store, self.runtime.queue, self.runtime.supervisor
        reports = store.reports(limit=REPORT_WINDOW)

        users = GaugeMetricFamily("swordsec_users_merged", "Distinct users in the store (all_users.json holds these)")
        users.add_metric([], store.count())
        yield users
        accepted = GaugeMetricFamily("swordsec_users_accepted",
                                     f"Users accepted from the newest {REPORT_WINDOW} files")
        accepted.add_metric([], sum(r.get("accepted", 0) for r in reports))
        yield accepted
        rejected = GaugeMetricFamily("swordsec_users_rejected",
                                     f"Records rejected (invalid) in the newest {REPORT_WINDOW} files")
        rejected.add_metric([], sum(r.get("rejected", 0) for r in reports))
        yield rejected

        by_state = Counter(r.get("state", "unknown") for r in reports)
        files = GaugeMetricFamily("swordsec_files", f"Files by state (newest {REPORT_WINDOW})", labels=["state"])
        for state in sorted(set(FILE_STATES) | set(by_state)):
            files.add_metric([state], by_state.get(state, 0))
        yield files
        damaged = GaugeMetricFamily("swordsec_files_damaged", "Files whose tail was unreadable (complete records kept)")
        damaged.add_metric([], sum(1 for r in reports if r.get("damage")))
        yield damaged

        depth = GaugeMetricFamily("swordsec_queue_jobs", "RQ jobs of our queue by registry", labels=["state"])
        depth.add_metric(["queued"], len(queue))
        depth.add_metric(["started"], StartedJobRegistry(queue.name, connection=queue.connection,
                                                         serializer=JSONSerializer).count)
        depth.add_metric(["failed"], FailedJobRegistry(queue.name, connection=queue.connection,
                                                       serializer=JSONSerializer).count)
        yield depth

        # Worker.all() drops workers whose key expired, so one killed on another machine stops counting
        # within its TTL instead of lingering in the registration set.
        workers = GaugeMetricFamily("swordsec_workers_alive", "RQ workers on our queue, any machine, heartbeat alive")
        workers.add_metric([], len(Worker.all(queue=queue, serializer=JSONSerializer)))
        yield workers
        local = GaugeMetricFamily("swordsec_local_workers_alive", "Worker processes this console supervises")
        local.add_metric([], supervisor.alive_count() if supervisor else 0)
        yield local

        latencies = [s for s in (ingest_seconds(r) for r in reports if r.get("state") == "merged") if s is not None]
        latency = HistogramMetricFamily("swordsec_ingest_latency_seconds",
                                        f"Seconds from reading a file to its users accepted (newest {REPORT_WINDOW})")
        latency.add_metric([], histogram(latencies), sum_value=sum(latencies))
        yield latency

        export = store.last_export()
        if export:
            age = GaugeMetricFamily("swordsec_export_age_seconds", "Seconds since all_users.json was last written")
            age.add_metric([], max(0.0, time.time() - export["written_at"]))
            yield age
            bad = GaugeMetricFamily("swordsec_users_undecodable",
                                    "Stored user values the last export could not decode and left out")
            bad.add_metric([], export.get("undecodable", 0))
            yield bad


class MetricsServer:
    """The HTTP endpoint; its own registry, so several runtimes in one process (tests) never collide."""

    def __init__(self, runtime, listen: str, tls_cert=None, tls_key=None):
        """Settings decide who may listen where (loopback by default; off loopback needs TLS or --insecure);
        with tls_cert/tls_key the endpoint is https. The socket is exclusive: SO_REUSEADDR only, never
        SO_REUSEPORT, so a second instance cannot share the port."""
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.tls = tls_cert is not None
        self._tls_files = (str(tls_cert), str(tls_key)) if tls_cert is not None else (None, None)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RuntimeCollector(runtime))
        self._httpd = None

    def start(self) -> "MetricsServer":
        certfile, keyfile = self._tls_files
        try:
            self._httpd, _thread = start_http_server(self.port, addr=self.host, registry=self.registry,
                                                     certfile=certfile, keyfile=keyfile)
        except OSError as error:
            raise OSError(f"cannot listen on {self.address} for metrics: {error.strerror or error}") from None
        self.port = self._httpd.server_address[1]
        return self

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
