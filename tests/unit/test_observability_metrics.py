"""Per-process metrics sampled from /proc, and the counters exported as 0 from the start."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from prometheus_client import REGISTRY

from appliance.observability import alerts, metrics

ROOT = Path(__file__).resolve().parents[2]


def test_process_stats_come_from_proc() -> None:
    cpu, rss = metrics.read_process_stats()
    before = os.times()
    assert 0 < cpu <= before.user + before.system + 0.1
    assert rss > 1024 * 1024  # a Python process is bigger than 1 MB
    sum(i * i for i in range(300_000))  # burn some CPU
    assert metrics.read_process_stats()[0] >= cpu
    # No such process: no /proc entry, so no resident size (own CPU time as fallback).
    assert metrics.read_process_stats(pid=2**22 + 7)[1] == 0


def test_sample_process_sets_the_role_gauges() -> None:
    metrics.sample_process("unit")
    cpu = REGISTRY.get_sample_value("appliance_process_cpu_seconds_total", {"role": "unit"})
    rss = REGISTRY.get_sample_value("appliance_process_resident_memory_bytes", {"role": "unit"})
    assert cpu is not None and cpu > 0
    assert rss is not None and rss > 0


def test_restart_and_crash_counters_start_at_zero_for_every_program() -> None:
    conf = configparser.RawConfigParser(strict=False)
    conf.read(ROOT / "supervisord.conf")
    programs = {
        s.split(":", 1)[1] for s in conf.sections() if s.startswith(("program:", "fcgi-program:"))
    }
    assert set(alerts.PROGRAMS) == programs
    alerts.export_zero_counters()
    for program in programs:
        for name in ("appliance_process_crashes_total", "appliance_process_restarts_total"):
            assert REGISTRY.get_sample_value(name, {"program": program}) == 0, (name, program)
