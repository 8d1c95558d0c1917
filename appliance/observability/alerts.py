"""supervisord event listener: logs crashes, counts restarts, tidies metrics files.

stdin/stdout carry supervisord's listener protocol, so every log line goes to
stderr. On PROCESS_STATE_EXITED it calls prometheus_client's ``mark_process_dead``
for the exited pid, so per-pid live gauges of dead processes disappear.
"""

from __future__ import annotations

import logging
import os
import sys

from prometheus_client import multiprocess
from supervisor import childutils

from appliance.observability.logging import setup_logging
from appliance.observability.metrics import PROCESS_CRASHES, PROCESS_RESTARTS

log = logging.getLogger("appliance.alerts")

# The programs of supervisord.conf (tests/unit/test_observability_metrics.py keeps the
# list equal to it). Their restart and crash counters are exported as 0 from the start,
# so rate() and increase() see the first one.
PROGRAMS = ("scripts", "worker", "webhooks", "api")


def export_zero_counters() -> None:
    for program in PROGRAMS:
        PROCESS_CRASHES.labels(program=program)
        PROCESS_RESTARTS.labels(program=program)


def handle(headers: dict[str, str], payload: str) -> None:
    event = headers.get("eventname", "")
    fields, _ = childutils.eventdata(payload + "\n")
    program = fields.get("groupname", "?")
    name = fields.get("processname", "?")
    if event == "PROCESS_STATE_EXITED":
        pid = int(fields.get("pid", "0") or 0)
        expected = fields.get("expected") == "1"
        if pid and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(pid)
        if not expected:
            PROCESS_CRASHES.labels(program=program).inc()
            log.error(
                "process crashed",
                extra={
                    "program": program,
                    "process_name": name,
                    "exited_pid": pid,
                    "from_state": fields.get("from_state"),
                },
            )
    elif event == "PROCESS_STATE_BACKOFF":
        # Died before startsecs: a failed start, usually config or secrets (see its log).
        PROCESS_CRASHES.labels(program=program).inc()
        log.error(
            "process crashed while starting", extra={"program": program, "process_name": name}
        )
    elif event == "PROCESS_STATE_STARTING" and fields.get("from_state") in ("EXITED", "BACKOFF"):
        PROCESS_RESTARTS.labels(program=program).inc()
        log.warning("process restarting", extra={"program": program, "process_name": name})
    elif event == "PROCESS_STATE_FATAL":
        log.critical(
            "process FATAL: supervisord gave up restarting it; fix the cause, then "
            "`appliancectl start`",
            extra={"program": program, "process_name": name},
        )


def main() -> None:
    setup_logging("alerts", stream=sys.stderr)
    export_zero_counters()
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            handle(headers, payload)
        except Exception:
            log.exception("event handling failed")
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
