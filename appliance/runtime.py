"""What every appliance process does before its own work: settings, secrets, logging."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from appliance.config import Paths, Settings, load_settings
from appliance.errors import StartupError
from appliance.observability.logging import setup_logging
from appliance.observability.tracing import setup_tracing
from appliance.secrets import Secrets, load_secrets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Boot:
    paths: Paths
    settings: Settings
    secrets: Secrets


def boot(role: str) -> Boot:
    """Load and check everything; on a problem log it and exit 78 (EX_CONFIG)."""
    setup_logging(role)
    try:
        paths = Paths.discover()
        settings = load_settings(paths)
        setup_logging(role, settings.log_level)
        secrets = load_secrets(paths.secrets_dir)
        setup_tracing(role, env_file=paths.env_file)  # off unless OTEL_TRACES_EXPORTER is set
    except StartupError as exc:
        log.critical(str(exc))
        # 78 (EX_CONFIG) tells supervisord's operator this is not a crash to retry away.
        sys.exit(78)
    return Boot(paths, settings, secrets)


def freeze_startup_heap() -> None:
    """Leave what start-up built (modules, the app, its caches) out of the garbage
    collector's passes from now on.

    A process holds hundreds of thousands of long-lived objects once it has started,
    and the collector's older generations traverse them all again and again while
    requests allocate; frozen, they are never traversed (nor freed: they live as long as
    the process anyway). Collected first, so start-up's own garbage is not kept."""
    gc.collect()
    gc.freeze()


async def repeat(
    step: Callable[[], Awaitable[object]], interval_s: float, logger: logging.Logger, what: str
) -> None:
    """Run ``step`` every ``interval_s`` seconds for ever; a failed pass is logged (as
    "``what`` failed", with its traceback) and the next one runs as usual."""
    while True:
        try:
            await step()
        except Exception:
            logger.exception("%s failed", what)
        await asyncio.sleep(interval_s)
