"""``jsonify`` and dict answers encoded by orjson instead of the standard library.

Every error answer and ``/healthz`` go through the app's JSON provider; Flask's encodes
with ``json.dumps`` at about twice the cost of the whole orjson path. The output keeps
what clients could see of the old one: compact, keys sorted, a closing newline, and
the same fallback for what JSON has no type for (quart-schema's provider's: pydantic's
``to_jsonable_python``, so models, dates in ISO 8601, UUIDs, dataclasses). Only the
escaping differs: non-ASCII text is sent as UTF-8 instead of ``\\uXXXX`` escapes, the
same JSON.
"""

from __future__ import annotations

from typing import Any

import orjson
from quart import Quart
from quart.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response

OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME  # the fallback's format for dates, as before
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


class OrjsonProvider(DefaultJSONProvider):
    def __init__(self, app: Quart, fallback: DefaultJSONProvider) -> None:
        super().__init__(app)
        self._fallback = fallback.default

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs.keys() - {"separators"}:  # indent, or a caller's own options: as before
            return self._slow(obj, **kwargs)
        try:
            return orjson.dumps(obj, default=self._fallback, option=OPTIONS).decode()
        except TypeError:  # e.g. an integer beyond 64 bits: the standard library's way
            return self._slow(obj, **kwargs)

    def _slow(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self._fallback)
        return super().dumps(obj, **kwargs)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        if self._app.debug or self.compact is False:
            return super().response(*args, **kwargs)
        obj = self._prepare_response_obj(args, kwargs)
        try:
            body = orjson.dumps(
                obj, default=self._fallback, option=OPTIONS | orjson.OPT_APPEND_NEWLINE
            )
        except TypeError:  # e.g. an integer beyond 64 bits: the standard library's way
            return super().response(*args, **kwargs)
        return self._app.response_class(body, mimetype=self.mimetype)  # type: ignore[arg-type]


def install_json_provider(app: Quart) -> None:
    """After quart-schema installed its provider (whose fallback encodes models)."""
    app.json = OrjsonProvider(app, app.json)  # type: ignore[arg-type]
