"""ApplianceQuart's dispatch (api/quart_app.py): the same steps in the same order as
Quart's own, the access check and the finish step as direct calls, a view's Response
used as it is, and what it caches bounded by the routes and hooks, not the requests."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import pytest
from quart import Blueprint, Quart, Response, after_this_request, request
from quart.signals import request_finished
from quart.wrappers import Request

from appliance.api.app import create_app
from appliance.api.errors import install_error_handlers
from appliance.api.quart_app import ApplianceQuart
from appliance.config import Paths, load_settings
from appliance.errors import Forbidden
from appliance.runtime import freeze_startup_heap
from appliance.secrets import Secrets

SECRETS = Secrets(
    session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
)


def _build(cls: type[Quart], events: list[str], *, refuse: str = "") -> Quart:
    """An app with a hook of every kind; ``events`` records what ran, in order. On
    ApplianceQuart the access check and the finish step are its direct steps; on plain
    Quart the same functions are the first app-level before and after hooks (as the
    appliance had them)."""
    app = cls(__name__)
    install_error_handlers(app)

    async def authorize(req: Request | None = None) -> None:
        req = req if req is not None else request
        events.append(f"authorize {req.endpoint}")
        if refuse and req.path == refuse:
            raise Forbidden("refused by the access check")

    async def finish(req: Request, response: Any) -> None:
        events.append(f"finish {req.endpoint} {response.status_code}")

    async def finish_hook(response: Any) -> Any:
        await finish(request, response)
        return response

    if isinstance(app, ApplianceQuart):
        app.authorize_step = authorize
        app.finish_step = finish
    else:
        app.before_request(authorize)
        app.after_request(finish_hook)

    @app.url_value_preprocessor
    def _values(endpoint: str | None, values: dict[str, Any] | None) -> None:
        events.append(f"url values {endpoint}")

    @app.before_request
    async def _app_before() -> None:
        events.append("app before")

    @app.after_request
    async def _app_after(response: Response) -> Response:
        events.append("app after")
        return response

    @app.teardown_request
    async def _app_teardown(exc: BaseException | None) -> None:
        events.append("app teardown")

    outer = Blueprint("outer", __name__)
    inner = Blueprint("inner", __name__)

    @outer.teardown_request
    def _outer_teardown(exc: BaseException | None) -> None:
        events.append("outer teardown")

    @inner.teardown_request
    async def _inner_teardown(exc: BaseException | None) -> None:
        events.append("inner teardown")

    @outer.before_request
    async def _outer_before() -> None:
        events.append("outer before")

    @outer.after_request
    async def _outer_after(response: Response) -> Response:
        events.append("outer after")
        return response

    @inner.before_request
    async def _inner_before() -> Response | None:
        events.append("inner before")
        if request.args.get("stop"):
            return Response("stopped by a hook", status=409)
        return None

    @inner.after_request
    def _inner_after(response: Response) -> Response:  # a sync hook: run as Quart runs it
        events.append("inner after")
        response.headers["X-Inner"] = "yes"
        return response

    @inner.get("/x/<int:n>")
    async def view(n: int) -> Response:
        events.append(f"view {n}")

        @after_this_request
        async def _once(response: Response) -> Response:
            events.append("after this request")
            return response

        return Response(f"n={n}", status=201)

    @inner.get("/dict")
    async def as_dict() -> Any:
        events.append("view dict")
        return {"ok": True}, 202, {"X-From": "tuple"}

    @inner.get("/sync")
    def sync_view() -> str:
        events.append("view sync")
        return "sync"

    outer.register_blueprint(inner, url_prefix="/in")
    app.register_blueprint(outer, url_prefix="/out")
    return app


def _call(app: Quart, path: str, method: str = "GET") -> tuple[int, bytes, Any]:
    async def go() -> tuple[int, bytes, Any]:
        response = await app.test_client().open(path, method=method)
        return response.status_code, await response.get_data(), response.headers

    return asyncio.run(go())


PATHS = (
    "/out/in/x/3",
    "/out/in/x/3?stop=1",
    "/out/in/dict",
    "/out/in/sync",
    "/nowhere",
    "/refused",
)


@pytest.mark.parametrize("path", PATHS)
def test_the_same_steps_in_the_same_order_as_quart(path: str) -> None:
    plain: list[str] = []
    ours: list[str] = []
    quart_app = _build(Quart, plain, refuse="/out/in/x/3")
    appliance_app = _build(ApplianceQuart, ours, refuse="/out/in/x/3")
    for app, events in ((quart_app, plain), (appliance_app, ours)):
        events.append(str(_call(app, path)[:2]))
    assert ours == plain
    assert len(ours) > 2


def test_hooks_and_views_run_with_their_results() -> None:
    events: list[str] = []
    app = _build(ApplianceQuart, events)
    assert _call(app, "/out/in/x/3")[:2] == (201, b"n=3")
    assert events == [
        "url values outer.inner.view",
        "authorize outer.inner.view",
        "app before",
        "outer before",
        "inner before",
        "view 3",
        "after this request",
        "inner after",
        "outer after",
        "app after",
        "finish outer.inner.view 201",
        "inner teardown",
        "outer teardown",
        "app teardown",
    ]
    events.clear()
    status, body, headers = _call(app, "/out/in/x/4?stop=1")  # a hook answers: no view
    assert (status, body, headers["X-Inner"]) == (409, b"stopped by a hook", "yes")
    assert "view 4" not in events and events[-4] == "finish outer.inner.view 409"


def test_a_refusal_of_the_access_check_skips_every_hook_and_the_view() -> None:
    events: list[str] = []
    app = _build(ApplianceQuart, events, refuse="/out/in/x/5")
    status, body, _ = _call(app, "/out/in/x/5")
    assert status == 403 and b"refused by the access check" in body
    assert events == [
        "url values outer.inner.view",
        "authorize outer.inner.view",
        "inner after",
        "outer after",
        "app after",
        "finish outer.inner.view 403",
        "inner teardown",
        "outer teardown",
        "app teardown",
    ]


def test_unmatched_and_automatic_options_answers_still_pass_both_steps() -> None:
    events: list[str] = []
    app = _build(ApplianceQuart, events)
    assert _call(app, "/nowhere")[0] == 404
    assert events == [
        "url values None",
        "authorize None",
        "app before",
        "app after",
        "finish None 404",
        "app teardown",
    ]
    events.clear()
    status, _, headers = _call(app, "/out/in/x/1", method="OPTIONS")
    assert status == 200 and "GET" in headers["Allow"]
    assert "view 1" not in events and events[-4] == "finish outer.inner.view 200"


def test_a_views_response_skips_make_response_and_anything_else_goes_through_it() -> None:
    events: list[str] = []
    app = _build(ApplianceQuart, events)
    made: list[Any] = []
    original = app.make_response

    async def counting(result: Any) -> Any:
        made.append(result)
        return await original(result)

    app.make_response = counting  # type: ignore[method-assign]
    assert _call(app, "/out/in/x/2")[:2] == (201, b"n=2")
    assert made == []
    status, body, headers = _call(app, "/out/in/dict")
    assert (status, headers["X-From"]) == (202, "tuple") and b'"ok"' in body
    assert _call(app, "/out/in/sync")[:2] == (200, b"sync")
    assert len(made) == 2


def test_what_is_cached_grows_with_the_routes_not_the_requests() -> None:
    events: list[str] = []
    app = _build(ApplianceQuart, events)
    assert isinstance(app, ApplianceQuart)
    for _ in range(3):
        for path in ("/out/in/x/1", "/out/in/dict", "/nowhere"):
            _call(app, path)
    assert set(app._before_names) == {"outer.inner.view", "outer.inner.as_dict", None}
    assert app._before_names["outer.inner.view"] == (None, "outer", "outer.inner")
    assert app._after_names["outer.inner.view"] == ("outer.inner", "outer", None)
    # views and registered hooks: the after_this_request closures (one per request) are not kept
    assert len(app._async) == 2 + 3 + 3 + 3  # views, before, after, teardown
    assert events.count("after this request") == 3


def test_a_hook_registered_after_the_first_request_runs() -> None:
    events: list[str] = []
    app = _build(ApplianceQuart, events)
    _call(app, "/out/in/x/1")

    @app.before_request
    async def _late() -> None:
        events.append("late before")

    events.clear()
    _call(app, "/out/in/x/1")
    assert events.index("app before") < events.index("late before") < events.index("view 1")


def test_request_finished_is_still_sent_to_a_listener() -> None:
    app = _build(ApplianceQuart, [])
    seen: list[int] = []

    async def listener(sender: Any, response: Response, **_: Any) -> None:
        seen.append(response.status_code)

    request_finished.connect(listener, app)
    try:
        _call(app, "/out/in/x/1")
    finally:
        request_finished.disconnect(listener, app)
    assert seen == [201]


def test_the_appliance_app_runs_its_steps_directly_not_as_hooks(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True)
    paths.env_file.write_text("", encoding="utf-8")
    app = create_app(load_settings(paths, environ={}), SECRETS)
    assert isinstance(app, ApplianceQuart)
    assert app.authorize_step is not None and app.finish_step is not None
    # Run twice otherwise: no app-level hook left (the panel's blueprint keeps its own).
    assert not app.before_request_funcs.get(None) and not app.after_request_funcs.get(None)


def test_freezing_the_start_up_heap_leaves_it_out_of_collections() -> None:
    kept = [[n] for n in range(3)]  # lists: tracked by the collector

    def traversed() -> bool:  # in a collected generation (frozen objects are in none)
        return any(o is kept for o in gc.get_objects())

    assert traversed()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
        assert not traversed()
        cycle: list[Any] = []
        cycle.append(cycle)  # garbage made after the freeze is still collected
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
    assert gc.get_freeze_count() == 0 and traversed()
