"""Quart with the appliance's per-request steps called directly (issue 18).

Quart's dispatch is general: on every request it rebuilds the request's blueprint
names from its endpoint (three times: url value preprocessors, before and after
hooks), asks ``inspect`` whether each hook and the view are coroutine functions, and
passes every view result through ``make_response`` (here two of them: quart-schema's
wrapper around Quart's). None of that changes while a process runs, so this subclass
works it out once per blueprint and per function, and runs the two steps every request
has (``access.authorize_request`` and ``finish``: the route template for the metrics
and the access line, the keep-alive drain) as direct calls instead of hooks.

What runs, and in which order, is Quart's: url value preprocessors, then the access
check (it was the first app-level ``before_request``), then the blueprints'
``before_request`` hooks; after the view, ``after_this_request`` functions, the
blueprints' ``after_request`` hooks and the app's, then ``finish`` (it was the only
app-level ``after_request`` hook, so the last to run), then the session; at the end
the ``teardown_request`` hooks, innermost blueprint first. A view's
``Response`` is used as it is (Quart's ``make_response`` returns it unchanged). Hooks
registered later with ``before_request`` / ``after_request`` still run. Websockets keep
Quart's own dispatch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart import Quart, Response
from quart.ctx import RequestContext
from quart.globals import request_ctx
from quart.signals import request_finished, request_tearing_down
from quart.typing import ResponseReturnValue, ResponseTypes
from quart.wrappers import Request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

# What Quart's make_response hands back unchanged (no status, no headers to apply).
_READY = (Response, WerkzeugResponse)

Step = Callable[[Request], Awaitable[None]]
FinishStep = Callable[[Request, ResponseTypes], Awaitable[None]]


class ApplianceQuart(Quart):
    """See the module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set by install_access_control and create_app; None: the step is not run.
        self.authorize_step: Step | None = None
        self.finish_step: FinishStep | None = None
        # endpoint -> Quart's blueprint names in before order (None first) and after order.
        self._before_names: dict[str | None, tuple[str | None, ...]] = {}
        self._after_names: dict[str | None, tuple[str | None, ...]] = {}
        # Registered hooks and views only (a finite set): after_this_request functions
        # are new closures per request and would grow this without bound.
        self._async: dict[Callable[..., Any], Callable[..., Awaitable[Any]]] = {}

    def _as_async(self, func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        found = self._async.get(func)
        if found is None:
            found = self._async[func] = self.ensure_async(func)
        return found

    def _names(self, request: Request) -> tuple[tuple[str | None, ...], tuple[str | None, ...]]:
        rule = request.url_rule
        endpoint = rule.endpoint if rule is not None else None
        before = self._before_names.get(endpoint)
        if before is None:
            names = request.blueprints  # innermost first, as Quart builds them
            before = self._before_names[endpoint] = (None, *reversed(names))
            self._after_names[endpoint] = (*names, None)
        return before, self._after_names[endpoint]

    async def preprocess_request(
        self, request_context: RequestContext | None = None
    ) -> ResponseReturnValue | None:
        request = (request_context or request_ctx).request
        before, _ = self._names(request)
        preprocessors = self.url_value_preprocessors
        for name in before:
            for processor in preprocessors.get(name, ()):
                processor(request.endpoint, request.view_args)
        if self.authorize_step is not None:
            await self.authorize_step(request)
        funcs = self.before_request_funcs
        for name in before:
            for function in funcs.get(name, ()):
                result = await self._as_async(function)()
                if result is not None:
                    return result  # type: ignore[no-any-return]
        return None

    async def dispatch_request(
        self, request_context: RequestContext | None = None
    ) -> ResponseReturnValue:
        request = (request_context or request_ctx).request
        if request.routing_exception is not None:
            self.raise_routing_exception(request)
        rule = request.url_rule
        assert rule is not None  # matched: no routing exception
        if request.method == "OPTIONS" and rule.provide_automatic_options:
            return await self.make_default_options_response()
        handler = self.view_functions[rule.endpoint]
        view_args = request.view_args
        assert view_args is not None  # set with the matched rule
        return await self._as_async(handler)(**view_args)  # type: ignore[no-any-return]

    async def finalize_request(
        self,
        result: ResponseReturnValue | HTTPException,
        request_context: RequestContext | None = None,
        from_error_handler: bool = False,
    ) -> ResponseTypes:
        if isinstance(result, _READY):
            response: ResponseTypes = result
        else:
            response = await self.make_response(result)
        try:
            response = await self.process_response(response, request_context)
            if request_finished.receivers:  # nobody listens in the appliance
                await request_finished.send_async(
                    self,
                    _sync_wrapper=self.ensure_async,  # type: ignore[arg-type]
                    response=response,
                )
        except Exception:
            if not from_error_handler:
                raise
            self.logger.exception("Request finalizing errored")
        return response

    async def process_response(
        self, response: ResponseTypes, request_context: RequestContext | None = None
    ) -> ResponseTypes:
        context = request_context or request_ctx
        request = context.request
        for function in context._after_request_functions:
            # Quart's AfterRequestCallable is typed sync-or-async: as in Quart itself.
            response = await self.ensure_async(function)(response)  # type: ignore[assignment]
        _, after = self._names(request)
        funcs = self.after_request_funcs
        for name in after:
            for function in reversed(funcs.get(name, ())):
                response = await self._as_async(function)(response)
        if self.finish_step is not None:
            await self.finish_step(request, response)
        session = context.session
        if session is not None and not self.session_interface.is_null_session(session):
            await self.ensure_async(self.session_interface.save_session)(self, session, response)
        return response

    async def do_teardown_request(
        self, exc: BaseException | None, request_context: RequestContext | None = None
    ) -> None:
        request = (request_context or request_ctx).request
        _, after = self._names(request)
        funcs = self.teardown_request_funcs
        for name in after:
            for function in reversed(funcs.get(name, ())):
                await self._as_async(function)(exc)
        await request_tearing_down.send_async(
            self,
            _sync_wrapper=self.ensure_async,  # type: ignore[arg-type]
            exc=exc,
        )
