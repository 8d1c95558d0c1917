"""The typed worker client: call(request) answers the method's result model, refusals
become the ClientError of their HTTP status, and the frames on the wire stay JSON-RPC 2.0
with the caller's request id and a child traceparent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.errors import (
    ClientError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RpcError,
    Unprocessable,
    WorkerUnavailable,
    refusal,
)
from appliance.ipc import protocol
from appliance.ipc.client import WorkerClient
from appliance.ipc.server import RpcServer
from appliance.observability.context import request_id_var, traceparent_var

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_every_method_is_a_request_typed_with_its_result() -> None:
    assert set(protocol.METHOD_OF.values()) == set(protocol.METHODS)
    for name, (params, result) in protocol.METHODS.items():
        assert issubclass(params, protocol.Request), name
        assert protocol.result_model_of(params) is result, name
        assert protocol.METHOD_OF[params] == name


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, ClientError), (403, Forbidden), (404, NotFound), (409, Conflict), (422, Unprocessable)],
)
def test_a_refusal_becomes_the_client_error_of_its_status(
    status: int, cls: type[ClientError]
) -> None:
    err = refusal(status, "no")
    assert type(err) is cls and err.http_status == status and err.message == "no"
    assert not isinstance(err, InvalidInput)  # a 400 refusal adds no empty issues list


@pytest.mark.parametrize("status", [None, "409", 418, 500])
def test_an_unknown_refusal_status_answers_409(status: object) -> None:
    err = refusal(status, "no")
    assert type(err) is Conflict and err.http_status == 409


async def _with_server(
    tmp_path: Path,
    handlers: dict[str, Callable[[Any], Awaitable[Any]]],
    body: Callable[[WorkerClient, RpcServer], Awaitable[None]],
) -> None:
    server = RpcServer(tmp_path / "w.sock")
    for method, handler in handlers.items():
        server.register(method, handler)
    await server.start()
    client = WorkerClient(server.socket_path, timeout_s=10.0)
    await client.start(wait_s=10.0)
    try:
        assert client.connected
        await body(client, server)
    finally:
        await client.stop()
        await server.drain(1.0)


def test_call_answers_the_result_model_and_sends_a_json_rpc_frame(tmp_path: Path) -> None:
    seen: list[tuple[protocol.WebQrParams, str | None, str | None]] = []

    async def web_qr(params: protocol.WebQrParams) -> protocol.WebQrResult:
        seen.append((params, request_id_var.get(), traceparent_var.get()))
        return protocol.WebQrResult(qr=f"qr-of-{params.account_id}-{params.format}")

    async def body(client: WorkerClient, server: RpcServer) -> None:
        request_id_var.set("req-123")
        traceparent_var.set(PARENT)
        answer = await client.call(protocol.WebQrParams(account_id="a1", format="svg"))
        assert answer == protocol.WebQrResult(qr="qr-of-a1-svg")
        ((params, request_id, traceparent),) = seen
        assert params == protocol.WebQrParams(account_id="a1", format="svg")
        assert request_id == "req-123"
        assert traceparent is not None and traceparent != PARENT
        assert traceparent.split("-")[1] == PARENT.split("-")[1]  # same trace, new span

    asyncio.run(_with_server(tmp_path, {"web.qr": web_qr}, body))


def test_the_request_frame_on_the_wire(tmp_path: Path) -> None:
    """A fake worker reads the raw line: the JSON-RPC 2.0 frame, params as the model
    dumps them, meta with request id and traceparent."""

    async def body() -> None:
        lines: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            lines.append(line)
            frame = orjson.loads(line)
            writer.write(protocol.result(frame["id"], {"code": "1234-5678"}, frame["meta"]))
            await writer.drain()
            await reader.read()  # until the client goes

        path = tmp_path / "fake.sock"
        server = await asyncio.start_unix_server(serve, path=str(path))
        client = WorkerClient(path, timeout_s=10.0)
        await client.start(wait_s=10.0)
        try:
            request_id_var.set("req-9")
            traceparent_var.set(PARENT)
            answer = await client.call(
                protocol.WebPairParams(account_id="a1", phone="+491701234567")
            )
            assert answer == protocol.WebPairResult(code="1234-5678")
        finally:
            await client.stop()
            server.close()
        frame = orjson.loads(lines[0])
        assert frame["jsonrpc"] == "2.0" and isinstance(frame["id"], int)
        assert frame["method"] == "web.pair"
        assert frame["params"] == {"account_id": "a1", "phone": "+491701234567"}
        assert frame["meta"]["request_id"] == "req-9"
        assert frame["meta"]["traceparent"].split("-")[1] == PARENT.split("-")[1]

    asyncio.run(body())


def test_refusals_raise_client_errors_and_other_errors_rpc_error(tmp_path: Path) -> None:
    async def sandbox_stats(params: protocol.SandboxStatsParams) -> protocol.SandboxStatsResult:
        if params.account_id == "gone":
            raise NotFound("no such account")
        if params.account_id == "busy":
            raise Conflict("no connected sandbox account with that id")
        raise RuntimeError("a bug")

    async def body(client: WorkerClient, server: RpcServer) -> None:
        with pytest.raises(NotFound) as not_found:
            await client.call(protocol.SandboxStatsParams(account_id="gone"))
        assert not_found.value.http_status == 404
        assert not_found.value.message == "no such account"
        with pytest.raises(Conflict) as conflict:
            await client.call(protocol.SandboxStatsParams(account_id="busy"))
        assert conflict.value.http_status == 409
        with pytest.raises(RpcError) as internal:
            await client.call(protocol.SandboxStatsParams(account_id="x"))
        assert internal.value.code == protocol.INTERNAL_ERROR
        with pytest.raises(RpcError) as missing:  # declared, but this worker has no handler
            await client.call(
                protocol.SandboxLoadParams(account_id="x", rate_per_s=1, duration_s=1)
            )
        assert missing.value.code == protocol.METHOD_NOT_FOUND

    asyncio.run(_with_server(tmp_path, {"sandbox.stats": sandbox_stats}, body))


def test_notify_sends_the_poke_and_ping_answers_typed(tmp_path: Path) -> None:
    pokes: list[protocol.PokeParams] = []
    poked = asyncio.Event()

    async def poke(params: protocol.PokeParams) -> protocol.PokeResult:
        pokes.append(params)
        poked.set()
        return protocol.PokeResult(ok=True)

    async def ping(_: protocol.PingParams) -> protocol.PingResult:
        return protocol.PingResult(pong=True, pid=42)

    async def body(client: WorkerClient, server: RpcServer) -> None:
        assert client.notify(protocol.PokeParams(topic="sandbox_inbox", account_id="a1"))
        await asyncio.wait_for(poked.wait(), 10)
        assert pokes == [protocol.PokeParams(topic="sandbox_inbox", account_id="a1")]
        assert await client.ping() == protocol.PingResult(pong=True, pid=42)

    asyncio.run(_with_server(tmp_path, {"poke": poke, "ping": ping}, body))


def test_call_without_a_connection_fails_fast(tmp_path: Path) -> None:
    async def body() -> None:
        client = WorkerClient(tmp_path / "nobody.sock", timeout_s=10.0)
        with pytest.raises(WorkerUnavailable):
            await client.call(protocol.PingParams())

    asyncio.run(body())
