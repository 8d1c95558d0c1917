"""One hierarchy for every error the appliance raises on purpose.

    ApplianceError
    ├── StartupError            the process must not start (config, secrets, database)
    │   ├── ConfigError
    │   └── SecretFileError
    ├── DatabaseError
    │   └── LeaseLost           ack/nack/extend with a token that no longer holds the lease
    ├── StorageFull             503 storage_full: SQLite or the media store cannot write
    ├── IpcError                talking to the worker failed
    │   ├── WorkerUnavailable   no connection, or the call timed out
    │   └── RpcError            the worker answered with a JSON-RPC error
    ├── EngineError             a WhatsApp engine's report to the worker (never an answer)
    │   ├── SendError           one send failed; ``permanent`` or retried (engines.base)
    │   ├── LoggedOut           WhatsApp ended the session: link again (engines.base)
    │   └── MediaDownloadError  one inbound media not fetched (engines.cloud.graph)
    └── ClientError             the caller's request cannot be served (4xx)
        ├── InvalidInput        400, with issues [{path, message, code}]
        ├── Unauthenticated     401
        ├── Forbidden           403
        ├── NotFound            404
        ├── Conflict            409
        ├── Unprocessable       422
        └── RateLimited         429, with Retry-After

Each carries the HTTP status an API handler should answer with, so one handler turns
any of them into the standard error shape.
"""

from __future__ import annotations


def N_(template: str, /, **values: object) -> str:
    """A refusal's message, marked for the web panel's catalogs: ``template`` with its
    ``{name}`` fields filled from ``values``. The result is a plain str, the same English
    the API has always answered; the panel translates it by matching it against the
    template (``appliance/api/panel/api_text.py``). Keep the template a literal (the
    extractor reads it) and put every changing part in a field."""
    return template.format(**values) if values else template


class ApplianceError(Exception):
    """Base of every deliberate error."""

    http_status: int = 500


class StartupError(ApplianceError):
    """The process refuses to start; the message names the file and the fix."""


class ConfigError(StartupError):
    """A setting in appliance.env or the environment is invalid."""


class SecretFileError(StartupError):
    """A secret file is missing, a link, too open, or owned by someone else."""


class DatabaseError(ApplianceError):
    """The database cannot be used as required."""


class LeaseLost(DatabaseError):
    """The lease token no longer matches: another claimer owns the job now."""

    http_status = 409


class StorageFull(ApplianceError):
    """The disk (or the database's size limit) is full: the write was rolled back in
    whole, nothing half-written; answered 503 ``storage_full`` (runbook/disk-full.md)."""

    http_status = 503
    # Every loop of every process fails its passes while the disk is full, often with
    # the logs on that same disk: one line each, not a traceback (db/storage.py logs
    # the first refusal and the recovery).
    log_traceback = False


class IpcError(ApplianceError):
    """Talking to the worker over the Unix socket failed."""

    http_status = 503


class WorkerUnavailable(IpcError):
    """No connection to the worker, or the call timed out."""


class RpcError(IpcError):
    """The worker answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: object | None = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class EngineError(ApplianceError):
    """An engine tells the worker why something did not happen. The subclasses live
    with the engines (``appliance.engines.base``, ``appliance.engines.cloud.graph``);
    the worker maps each to an account state or a message status, never to an answer."""


class ClientError(ApplianceError):
    """A 4xx: the message is safe to show to the caller."""

    http_status = 400

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class InvalidInput(ClientError):
    http_status = 400

    def __init__(self, message: str, issues: list[dict[str, str]] | None = None) -> None:
        super().__init__(message, issues=issues or [])


class Unauthenticated(ClientError):
    http_status = 401


class Forbidden(ClientError):
    http_status = 403


class NotFound(ClientError):
    http_status = 404


class Conflict(ClientError):
    http_status = 409


class Unprocessable(ClientError):
    http_status = 422


class RateLimited(ClientError):
    http_status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))


# The class a worker's refusal (JSON-RPC error REFUSED, ``data.http_status``) becomes in
# an API process; the worker only raises Conflict today. 400 stays the plain ClientError
# (InvalidInput would add an empty ``issues`` list to the body).
_REFUSALS: dict[int, type[ClientError]] = {
    400: ClientError,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
}


def refusal(http_status: object, message: str) -> ClientError:
    """The ClientError for a refusal the worker explained; 409 when the status is unknown."""
    cls = _REFUSALS.get(http_status, Conflict) if isinstance(http_status, int) else Conflict
    return cls(message)
