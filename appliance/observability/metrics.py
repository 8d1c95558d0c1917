"""Prometheus metrics, shared by every process through multiprocess mode.

supervisord's environment sets PROMETHEUS_MULTIPROC_DIR before any process imports
prometheus_client; appliancectl wipes that directory before supervisord starts.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
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


def mark_started(role: str) -> None:
    PROCESS_UP.labels(role=role).set(time.time())


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition() -> tuple[bytes, str]:
    """The aggregate of every process, built fresh per scrape."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
