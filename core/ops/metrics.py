"""The Prometheus endpoint (`--metrics-listen HOST:PORT`), named by Prometheus's naming guide.

Counters (`*_total`) and the file latency histogram are kept in Redis (core/storage/lua/counters.lua): the
scripts and the server add to them where things happen, so they only grow, survive restarts, and add up
the work of every server and worker process on any machine; `rate()` works on them. Gauges are read
from Redis and the supervisor when Prometheus asks. A scrape costs a handful of Redis reads however many
files were ever ingested. The client library's own process_* and python_* collectors are on too.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

import redis
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from rq import Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry

from core.config import join_address, parse_address
from core.queue.taskqueue import JSONSerializer

if TYPE_CHECKING:
    from pathlib import Path

    from rq import Queue

    from core.queue.supervisor import Supervisor
    from core.storage.store import Store

# The newest file reports looked at for the files-by-state gauge; bounds a scrape's cost.
REPORT_WINDOW = 1000
# Must match LATENCY_BOUNDS in core/storage/lua/counters.lua, string for string (they name Redis hash fields).
LATENCY_BOUNDS = ("0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "120", "300")
FILE_STATES = ("streaming", "queued", "merged", "rejected")
MERGE_OUTCOMES = ("new", "updated", "duplicate")


class PipelineCollector(Collector):
    """Reads the store, the queue and (when this process runs workers) the supervisor on every scrape."""

    def __init__(self, store: Store, queue: Queue, supervisor: Supervisor | None = None):
        self.store = store
        self.queue = queue
        self.supervisor = supervisor

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
        store, queue, supervisor = self.store, self.queue, self.supervisor
        counters = store.counters()
        yield from _counter_families(counters)

        users = GaugeMetricFamily("swordsec_users", "Distinct users in the store (all_users.json holds these)")
        users.add_metric([], store.count())
        yield users

        by_state = Counter(r.get("state", "unknown") for r in store.reports(limit=REPORT_WINDOW))
        files = GaugeMetricFamily("swordsec_ledger_files", f"Files of the newest {REPORT_WINDOW} reports by state",
                                  labels=["state"])
        for state in sorted(set(FILE_STATES) | set(by_state)):
            files.add_metric([state], by_state.get(state, 0))
        yield files

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

        export = store.last_export()
        if export:
            age = GaugeMetricFamily("swordsec_export_age_seconds", "Seconds since all_users.json was last written")
            age.add_metric([], max(0.0, time.time() - export["written_at"]))
            yield age
            bad = GaugeMetricFamily("swordsec_users_undecodable",
                                    "Stored user values the last export could not decode and left out")
            bad.add_metric([], export.get("undecodable", 0))
            yield bad


def _counter_families(counters: dict[str, float]):
    """The monotonic families, from the counters hash (core/storage/lua/counters.lua names its fields)."""
    def counter(name: str, documentation: str, field: str) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation)
        family.add_metric([], counters.get(field, 0))
        return family

    yield counter("swordsec_records_accepted", "Records the server accepted (valid) and handed to the queue",
                  "records:accepted")
    yield counter("swordsec_records_rejected", "Records the server rejected as invalid", "records:rejected")
    merged = CounterMetricFamily("swordsec_users_merged", "Users merged by the workers, by what the merge did",
                                 labels=["outcome"])
    for outcome in MERGE_OUTCOMES:
        merged.add_metric([outcome], counters.get(f"users:{outcome}", 0))
    yield merged
    files = CounterMetricFamily("swordsec_files", "Files ingested to the end: merged, or rejected and set aside",
                                labels=["outcome"])
    for outcome in ("merged", "rejected"):
        files.add_metric([outcome], counters.get(f"files:{outcome}", 0))
    yield files
    yield counter("swordsec_files_damaged", "Files cut short or unreadable in part (their complete records kept)",
                  "files:damaged")
    latency = HistogramMetricFamily("swordsec_ingest_latency_seconds",
                                    "Seconds from starting to read a file to its last batch merged")
    buckets = [(str(float(bound)), counters.get(f"latency:le:{bound}", 0)) for bound in LATENCY_BOUNDS]
    latency.add_metric([], [*buckets, ("+Inf", counters.get("latency:count", 0))],
                       sum_value=counters.get("latency:sum", 0))
    yield latency


class MetricsServer:
    """The HTTP endpoint; its own registry, so several runtimes in one process (tests) never collide."""

    def __init__(self, collector: Collector | None, listen: str, tls_cert: Path | None = None,
                 tls_key: Path | None = None):
        """collector: our families (None serves only the process_* and python_* ones). Settings decide who
        may listen where (loopback by default; off loopback needs TLS or --insecure); with tls_cert/tls_key
        the endpoint is https. The socket is exclusive: SO_REUSEADDR only, never SO_REUSEPORT, so a second
        instance cannot share the port."""
        self.host, self.port = parse_address(listen, "metrics listen address")
        self.tls = tls_cert is not None
        self._tls_files = (str(tls_cert), str(tls_key)) if tls_cert is not None else (None, None)
        self.registry = CollectorRegistry(auto_describe=False)
        if collector is not None:
            self.registry.register(collector)
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_*
            self.registry.register(standard)
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
        return join_address(self.host, self.port)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
