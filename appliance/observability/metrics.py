"""Prometheus metrics, shared by every process through multiprocess mode.

supervisord's environment sets PROMETHEUS_MULTIPROC_DIR before any process imports
prometheus_client; appliancectl wipes that directory before supervisord starts.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Collection, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
IPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0)

HTTP_REQUESTS = Counter(
    "appliance_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "appliance_http_request_duration_seconds",
    "Time from request start to response, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
# The children of HTTP_REQUESTS and HTTP_LATENCY by (method, route, status): ``labels``
# checks its arguments and takes a lock on every call, a request needs only a dictionary
# lookup. Bounded, since a client chooses the method of a 404 or 405 (past the bound:
# ``labels`` each time, as before).
HTTP_CHILDREN_KEPT = 4096
_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_http_request(method: str, route: str, status: int, elapsed_s: float) -> None:
    """One answered request: counted by method, route template and status, and timed."""
    key = (method, route, status)
    children = _http_children.get(key)
    if children is None:
        children = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_LATENCY.labels(method, route),
        )
        if len(_http_children) < HTTP_CHILDREN_KEPT:
            _http_children[key] = children
    children[0].inc()
    children[1].observe(elapsed_s)


IPC_CALLS = Counter(
    "appliance_ipc_calls_total",
    "JSON-RPC calls from an API process to the worker, by method and outcome.",
    ["method", "outcome"],
)
IPC_LATENCY = Histogram(
    "appliance_ipc_call_duration_seconds",
    "JSON-RPC call round trip seen by the caller.",
    ["method"],
    buckets=IPC_BUCKETS,
)
PROCESS_RESTARTS = Counter(
    "appliance_process_restarts_total",
    "Processes supervisord started again after they exited.",
    ["program"],
)
PROCESS_CRASHES = Counter(
    "appliance_process_crashes_total",
    "Unexpected process exits seen by the supervisord event listener.",
    ["program"],
)
PROCESS_UP = Gauge(
    "appliance_process_start_time_seconds",
    "Start time of each living appliance process (one sample per pid).",
    ["role"],
    multiprocess_mode="liveall",
)


# Per-process resources. prometheus_client's own process collector does not work in
# multiprocess mode, so every process samples itself from /proc into per-pid gauges
# (``liveall``: the supervisord listener removes a dead pid's file).
PROCESS_CPU = Gauge(
    "appliance_process_cpu_seconds_total",
    "CPU time (user + system) this process used since it started; rate() it.",
    ["role"],
    multiprocess_mode="liveall",
)
PROCESS_RSS = Gauge(
    "appliance_process_resident_memory_bytes",
    "Resident memory of this process.",
    ["role"],
    multiprocess_mode="liveall",
)
PROCESS_SAMPLE_INTERVAL_S = 5.0

# Sends (worker): accept-to-sent time is the sends SLO's indicator (runbook/alerts.md).
SEND_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
SENDS = Counter(
    "appliance_sends_total",
    "Outbound messages that finished, by outcome (sent, failed).",
    ["outcome"],
)
SEND_ACCEPT_TO_SENT = Histogram(
    "appliance_send_accept_to_sent_seconds",
    "From a send's acceptance to the engine taking it (status sent).",
    buckets=SEND_BUCKETS,
)
# Sampled by the worker's monitor (appliance/worker/monitor.py) every MONITOR_INTERVAL_S.
SEND_QUEUE_DEPTH = Gauge(
    "appliance_send_queue_depth",
    "Sends queued or being sent, per account.",
    ["account"],
    multiprocess_mode="mostrecent",
)
SEND_QUEUE_OLDEST = Gauge(
    "appliance_send_queue_oldest_age_seconds",
    "Age of the oldest send still queued or being sent, per account (0 when none).",
    ["account"],
    multiprocess_mode="mostrecent",
)
ACCOUNT_STATE = Gauge(
    "appliance_account_state",
    "1 for the account's current engine connection state, 0 for the others.",
    ["account", "state"],
    multiprocess_mode="mostrecent",
)
ACCOUNT_DESIRED_CONNECTED = Gauge(
    "appliance_account_desired_connected",
    "1 when the account should be connected (not disconnected or logged out on request).",
    ["account"],
    multiprocess_mode="mostrecent",
)
# The gauges with an ``account`` label (all set by the worker's monitor): an account's
# label sets are removed when it is deleted (``forget_account``). The exposition leaves
# out every series labelled with an account that no longer exists, in any family (these
# gauges, the auto-replies' counters, whatever a service adds): ``exposition(accounts=...)``.
ACCOUNT_GAUGES = (SEND_QUEUE_DEPTH, SEND_QUEUE_OLDEST, ACCOUNT_STATE, ACCOUNT_DESIRED_CONNECTED)
ACCOUNT_GAUGE_NAMES = frozenset(g._name for g in ACCOUNT_GAUGES)


def forget_account(account: str) -> None:
    """Remove a deleted account's label sets from the per-account gauges of this process.

    prometheus-client cannot remove label sets in multiprocess mode (it warns, and the
    values stay in this process's file): there the exposition leaves them out instead,
    reading which accounts exist (``exposition``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Removal of labels", UserWarning)
        for gauge in ACCOUNT_GAUGES:
            gauge.remove_by_labels({"account": account})


DISK_FREE = Gauge(
    "appliance_disk_free_bytes",
    "Free bytes (for unprivileged users) on the data directory's filesystem.",
    multiprocess_mode="mostrecent",
)
DISK_SIZE = Gauge(
    "appliance_disk_size_bytes",
    "Size of the data directory's filesystem.",
    multiprocess_mode="mostrecent",
)
DATABASE_SIZE = Gauge(
    "appliance_database_size_bytes",
    "The SQLite database with its WAL.",
    multiprocess_mode="mostrecent",
)
WEBHOOK_DEAD = Gauge(
    "appliance_webhook_dead_deliveries",
    "Webhook deliveries given up on (dead letters) still kept.",
    multiprocess_mode="mostrecent",
)
BUILTIN_ALERTS = Gauge(
    "appliance_builtin_alerts_firing",
    "Built-in alerts (system.alert events) currently raised, by rule.",
    ["rule"],
    multiprocess_mode="mostrecent",
)

_sampler: threading.Thread | None = None
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_process_stats(pid: int | str = "self") -> tuple[float, int]:
    """(CPU seconds, resident bytes) of a process, from /proc; (0, 0) where there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode()
        with open(f"/proc/{pid}/statm", "rb") as fh:
            statm = fh.read().split()
    except OSError:
        times = os.times()
        return times.user + times.system, 0
    # Fields after the command, which is in parentheses and may contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return cpu, int(statm[1]) * _PAGE_SIZE


def sample_process(role: str) -> None:
    cpu, rss = read_process_stats()
    PROCESS_CPU.labels(role=role).set(cpu)
    PROCESS_RSS.labels(role=role).set(rss)


def _sample_forever(role: str, interval_s: float) -> None:
    while True:
        with contextlib.suppress(Exception):  # never take the process down for a metric
            sample_process(role)
        time.sleep(interval_s)


def mark_started(role: str) -> None:
    """Record this process's start and sample its CPU and memory from now on."""
    global _sampler
    PROCESS_UP.labels(role=role).set(time.time())
    sample_process(role)
    if _sampler is None:
        _sampler = threading.Thread(
            target=_sample_forever,
            args=(role, PROCESS_SAMPLE_INTERVAL_S),
            name="process-metrics",
            daemon=True,
        )
        _sampler.start()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _AccountsKept:
    """A collector's families, each sample with an ``account`` label only for
    ``accounts``. Keyed on the label, not on a list of families: a counter of a service
    (``automations``' auto-reply counters) is not known here, and observability
    imports nothing of the appliance."""

    def __init__(self, source: Any, accounts: Collection[str]) -> None:
        self.source = source
        self.accounts = frozenset(accounts)

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            family.samples = [
                s
                for s in family.samples
                if "account" not in s.labels or s.labels["account"] in self.accounts
            ]
            yield family


def exposition(accounts: Collection[str] | None = None) -> tuple[bytes, str]:
    """The aggregate of every process, built fresh per scrape. Given ``accounts`` (the
    ids that exist), every series labelled with any other account is left out: a
    deleted account's last values stay in the worker's multiprocess file for good."""
    source: Any = REGISTRY
    if multiprocess_enabled():
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    if accounts is not None:
        source = _AccountsKept(source, accounts)
    return generate_latest(source), CONTENT_TYPE_LATEST
