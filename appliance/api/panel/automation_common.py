"""What the automation screens (auto-replies, scheduled messages, scripts) share.

The screens do what the JSON API does by calling the API route's own body: ``api(f)``
is the route function without its HTTP decorators (JSON parsing, OpenAPI, idempotency
keys), so the rules, checks, audit entries, events and worker pokes are the API's,
never a copy. The panel route carries the same ``@requires`` permission as the API
route, and the API body checks the account grant itself (``account_for``: 404).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from appliance.errors import ClientError


def api(route: Callable[..., Any]) -> Callable[..., Any]:
    """The API route's body, without the decorators that read the HTTP request."""
    body: Callable[..., Any] = inspect.unwrap(route)
    return body


def refusal_status(exc: ValidationError | ClientError) -> int:
    """The status a form is shown again with after the API body refused it: 400 for the
    model's own check, else the API's status. A 403 or 404 is raised again instead,
    for the panel's error pages."""
    if isinstance(exc, ClientError):
        if exc.http_status in (403, 404):
            raise exc
        return exc.http_status
    return 400


def lines(text: str) -> list[str]:
    """Non-empty lines (or comma-separated items) of a textarea, stripped."""
    return [p.strip() for line in text.splitlines() for p in line.split(",") if p.strip()]
