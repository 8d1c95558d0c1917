"""What an API process holds while serving: settings, secrets, database, worker client.

Everything a handler may need is a typed attribute here (no dictionary of extras):
a missing dependency is then an error at construction, not a silent ``None`` later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quart import Quart, current_app

from appliance.api.live import EventBell
from appliance.api.ratelimit import RateLimiter
from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.ipc.client import WorkerClient
from appliance.secrets import Secrets


@dataclass
class ApiState:
    settings: Settings
    secrets: Secrets
    worker: WorkerClient
    cipher: DataCipher
    db: Database | None = None
    limiter: RateLimiter | None = None
    shutting_down: bool = False
    # Rung by the worker's "events" notifications; without them readers poll.
    bell: EventBell = field(default_factory=EventBell)


def state_of(app: Quart | None = None) -> ApiState:
    return (app or current_app).extensions["appliance"]  # type: ignore[no-any-return]


def db() -> Database:
    """The database of the API process serving this request."""
    handle = state_of().db
    assert handle is not None, "the database opens before serving starts"
    return handle
