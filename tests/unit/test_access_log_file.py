"""The API processes' access log in their own rotated files
(appliance/observability/access_log.py), not through supervisord's stdout pipe."""

from __future__ import annotations

import asyncio
import io
import logging
import weakref
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from appliance.observability.access_log import ACCESS_LOGGER, log_access_to_file
from appliance.observability.logging import setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    access = logging.getLogger(ACCESS_LOGGER)
    saved = (root.handlers[:], root.level, access.handlers[:], access.propagate)
    yield
    for handler in access.handlers:
        handler.close()
    root.handlers[:], root.level, access.handlers[:], access.propagate = saved


def test_access_lines_go_to_the_process_file_and_other_lines_to_stdout(
    tmp_path: Path, restore_logging: None
) -> None:
    stdout = io.StringIO()
    setup_logging("api", stream=stdout)
    path = log_access_to_file(tmp_path, instance="api_07")
    assert path == tmp_path / "api_07.access.log"
    logging.getLogger(ACCESS_LOGGER).info(
        "%s %s %s", "GET", "/healthz", 200, extra={"status": 200, "duration_ms": 0.4}
    )
    logging.getLogger("appliance.api.app").warning("something else")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    entry = orjson.loads(lines[0])
    assert entry["msg"] == "GET /healthz 200" and entry["status"] == 200
    assert entry["role"] == "api" and entry["logger"] == ACCESS_LOGGER
    assert "GET /healthz" not in stdout.getvalue()
    assert "something else" in stdout.getvalue()


def test_the_file_is_rotated_by_size(tmp_path: Path, restore_logging: None) -> None:
    setup_logging("api", stream=io.StringIO())
    path = log_access_to_file(tmp_path, instance="api_00", max_bytes=2000, backups=2)
    assert path is not None
    access = logging.getLogger(ACCESS_LOGGER)
    for n in range(100):
        access.info("GET /x/%d 200", n)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["api_00.access.log", "api_00.access.log.1", "api_00.access.log.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    last = path.read_text(encoding="utf-8").splitlines()[-1]
    assert orjson.loads(last)["msg"] == "GET /x/99 200"


def test_without_a_log_directory_the_lines_stay_on_stdout(
    tmp_path: Path, restore_logging: None
) -> None:
    stdout = io.StringIO()
    setup_logging("api", stream=stdout)
    assert log_access_to_file(tmp_path / "missing", instance="api_00") is None
    logging.getLogger(ACCESS_LOGGER).info("GET /healthz 200")
    assert "GET /healthz 200" in stdout.getvalue()


# -- buffered, cheap lines (write_access, BufferedRotatingHandler) -------------------------


def test_write_access_is_the_same_json_buffered_until_the_timer(
    tmp_path: Path, restore_logging: None
) -> None:
    from appliance.observability import access_log
    from appliance.observability.context import request_id_var

    setup_logging("api", stream=io.StringIO())
    path = log_access_to_file(tmp_path, instance="api_01")
    assert path is not None
    handler = logging.getLogger(ACCESS_LOGGER).handlers[0]
    assert isinstance(handler, access_log.BufferedRotatingHandler)

    async def main() -> None:
        request_id_var.set("req-1")
        access_log.write_access("POST", "/api/x", 202, 1.25)
        logging.getLogger(ACCESS_LOGGER).info(
            "%s %s %s", "GET", "/healthz", 200, extra={"status": 200, "duration_ms": 0.5}
        )
        assert path.read_text(encoding="utf-8") == ""  # still in memory
        for _ in range(100):  # bounded: the timer is FLUSH_S
            if path.read_text(encoding="utf-8").count("\n") == 2:
                break
            await asyncio.sleep(access_log.FLUSH_S / 5)

    asyncio.run(main())
    fast, logged = (orjson.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    assert fast["msg"] == "POST /api/x 202" and fast["status"] == 202
    assert fast["duration_ms"] == 1.25 and fast["request_id"] == "req-1"
    assert set(fast) == set(logged) | {"request_id"}  # the logger's line has no request id
    for same in ("level", "role", "instance", "pid", "logger"):
        assert fast[same] == logged[same]
    assert fast["time"].endswith("Z") and len(fast["time"]) == len(logged["time"])


def test_ids_given_to_write_access_make_the_line_the_context_would(
    tmp_path: Path, restore_logging: None
) -> None:
    from appliance.observability import access_log
    from appliance.observability.context import request_id_var, request_ids, traceparent_var

    setup_logging("api", stream=io.StringIO())
    path = log_access_to_file(tmp_path, instance="api_02")
    assert path is not None
    request_id, traceparent = request_ids(None, None)

    async def main() -> None:
        request_id_var.set(request_id)
        traceparent_var.set(traceparent)
        access_log.write_access("GET", "/healthz", 200, 0.3)  # read from the context
        request_id_var.set(None)
        traceparent_var.set(None)
        access_log.write_access(
            "GET", "/healthz", 200, 0.3, request_id=request_id, trace_id=traceparent[3:35]
        )

    asyncio.run(main())
    logging.getLogger(ACCESS_LOGGER).handlers[0].flush()
    from_context, given = (
        orjson.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
    )
    assert from_context["request_id"] == given["request_id"] == request_id
    assert from_context["trace_id"] == given["trace_id"] == traceparent.split("-")[1]
    del from_context["time"], given["time"]
    assert list(given.items()) == list(from_context.items())  # same fields, same order


def test_buffered_lines_rotate_by_size_and_reach_the_file_at_shutdown(
    tmp_path: Path, restore_logging: None
) -> None:
    from appliance.observability import access_log

    setup_logging("api", stream=io.StringIO())
    path = log_access_to_file(tmp_path, instance="api_00", max_bytes=2000, backups=2)
    assert path is not None

    async def main() -> None:
        for n in range(100):
            access_log.write_access("GET", f"/x/{n}", 200, 0.1)

    asyncio.run(main())  # the loop ends before the timer: lines still buffered
    handler = logging.getLogger(ACCESS_LOGGER).handlers[0]
    logging.shutdown([weakref.ref(handler)])  # what the process's exit does to it
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["api_00.access.log", "api_00.access.log.1", "api_00.access.log.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    last = path.read_text(encoding="utf-8").splitlines()[-1]
    assert orjson.loads(last)["msg"] == "GET /x/99 200"


def test_a_moved_file_is_reopened(tmp_path: Path, restore_logging: None) -> None:
    setup_logging("api", stream=io.StringIO())
    path = log_access_to_file(tmp_path, instance="api_00")
    assert path is not None
    access = logging.getLogger(ACCESS_LOGGER)
    access.info("GET /before 200")
    path.rename(tmp_path / "moved.log")  # logrotate, or an operator
    access.info("GET /after 200")
    assert "/before" in (tmp_path / "moved.log").read_text(encoding="utf-8")
    assert "/after" in path.read_text(encoding="utf-8")
