"""Entry point of one API process: Quart on Hypercorn with uvloop.

Under supervisord the listening socket arrives as fd 0 (``[fcgi-program:api]``);
for development, ``--bind HOST:PORT`` opens one itself. On SIGTERM or SIGINT the
process first answers /readyz with 503 ``shutting_down`` and stops accepting, serves
what it already accepted for a short drain (``serving.py``: a TLS handshake under way
is not cut), then Hypercorn lets in-flight requests finish within
API_GRACEFUL_TIMEOUT_S, runs the shutdown hooks and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop
from hypercorn.config import Config

from appliance.api.app import create_app
from appliance.api.serving import serve_with_drain
from appliance.api.state import state_of
from appliance.observability.access_log import log_access_to_file
from appliance.observability.metrics import mark_started
from appliance.ops.tls import tls_problems
from appliance.runtime import boot, freeze_startup_heap

log = logging.getLogger(__name__)

# Long enough for a TLS handshake accepted just before the signal, on a busy machine,
# to finish and its request to be served; short enough not to slow a rolling restart.
DRAIN_S = 2.0


async def run(bind: str) -> None:
    ctx = boot("api")
    problems = tls_problems(ctx.settings)
    if problems:  # refuse to start, saying how to fix each (runbook/tls.md)
        log.critical("refusing to start: %s", "; ".join(problems))
        sys.exit(78)  # EX_CONFIG, as boot() does
    if ctx.settings.access_log and ctx.settings.access_log_file:
        log_access_to_file(ctx.settings.log_dir)  # not through supervisord's pipe
    app = create_app(ctx.settings, ctx.secrets)

    @app.before_serving
    async def _freeze() -> None:  # after create_app's own: database, limiter, worker link
        app.url_map.update()  # werkzeug builds its matcher at the first request otherwise
        freeze_startup_heap()  # runbook/performance.md: healthz round 6

    config = Config()
    config.bind = [bind]
    if ctx.settings.tls:
        # HTTPS on the socket supervisord hands over; a renewed certificate is read by
        # each process at its start: appliancectl restart api (rolling, no refusal).
        config.certfile = ctx.settings.tls_cert_file
        config.keyfile = ctx.settings.tls_key_file
    config.graceful_timeout = ctx.settings.api_graceful_timeout_s
    config.accesslog = None  # our middleware logs each request as JSON (middleware.py)
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 5.0

    stop = asyncio.Event()

    def on_signal() -> None:
        if not stop.is_set():
            state_of(app).shutting_down = True  # readyz answers 503 from now on
            log.info("shutting down", extra={"graceful_timeout_s": config.graceful_timeout})
            stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    mark_started("api")
    await serve_with_drain(app, config, stop, drain_s=min(DRAIN_S, config.graceful_timeout))
    log.info("stopped")


def main() -> None:
    parser = argparse.ArgumentParser(prog="appliance-api")
    parser.add_argument("--fd", type=int, help="serve on an inherited listening socket")
    parser.add_argument("--bind", help="HOST:PORT to listen on (development)")
    args = parser.parse_args()
    bind = f"fd://{args.fd}" if args.fd is not None else (args.bind or "127.0.0.1:8080")
    uvloop.run(run(bind))
