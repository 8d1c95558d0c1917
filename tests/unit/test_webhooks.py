"""Webhooks without processes: signing (checked against the ``standardwebhooks``
library's own verification, not our code), secrets, the retry schedule, Retry-After,
which endpoints want which events, the API's input models, and the dispatcher's
handling of each kind of answer with a fake poster (nothing is sent anywhere)."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from appliance.api.routes.webhooks import EndpointIn, EndpointPatch
from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.db.queue import release_all_leases
from appliance.messaging import store as messaging_store
from appliance.webhooks import signing, store
from appliance.webhooks.contracts import WEBHOOK_QUEUE
from appliance.webhooks.delivery import MAX_UNRECORDED, AttemptResult
from appliance.webhooks.dispatcher import (
    CLAIM_BATCH,
    MAX_RETRY_AFTER_S,
    RESERVED_HEADERS,
    USER_AGENT,
    Dispatcher,
    parse_retry_after,
    repeats_at_a_kill,
    retry_delay,
)
from appliance.webhooks.outcomes import OutcomeLog
from appliance.webhooks.signing import new_secret, sign, signature_header

BODY = orjson.dumps(
    {
        "id": 42,
        "type": "message.received",
        "account_id": "acc",
        "created_at": 1700000000.123,
        "data": {"text": "héllo ✓ 👍", "n": [1, 2, 3]},
    }
)


def _headers(msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


# -- signing -----------------------------------------------------------------------------


def test_one_signature_verifies_with_the_standardwebhooks_library() -> None:
    secret = new_secret()
    now = int(time.time())
    header = signature_header([secret], "42", now, BODY)
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", header)
    parsed = Webhook(secret).verify(BODY, _headers("42", now, header))
    assert parsed == orjson.loads(BODY)
    # Header names are case-insensitive for the library (as in HTTP).
    upper = {k.title(): v for k, v in _headers("42", now, header).items()}
    assert Webhook(secret).verify(BODY, upper) == orjson.loads(BODY)
    # The library's own signer produces the same string.
    theirs = Webhook(secret).sign("42", datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    assert theirs == sign(secret, "42", now, BODY)


@pytest.mark.parametrize(
    "tamper",
    ["body", "id", "timestamp", "secret"],
)
def test_a_changed_message_does_not_verify(tamper: str) -> None:
    secret = new_secret()
    now = int(time.time())
    header = signature_header([secret], "42", now, BODY)
    body, headers, verifier = BODY, _headers("42", now, header), Webhook(secret)
    if tamper == "body":
        body = BODY.replace(b"42", b"43")
    elif tamper == "id":
        headers["webhook-id"] = "43"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    else:
        verifier = Webhook(new_secret())
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body, headers)


def test_two_signatures_during_rotation_verify_with_either_secret() -> None:
    old, new = new_secret(), new_secret()
    now = int(time.time())
    header = signature_header([new, old], "7", now, BODY)
    parts = header.split(" ")
    assert len(parts) == 2 and all(p.startswith("v1,") for p in parts)
    assert parts == [sign(new, "7", now, BODY), sign(old, "7", now, BODY)]
    headers = _headers("7", now, header)
    assert Webhook(old).verify(BODY, headers) == orjson.loads(BODY)  # receiver not yet updated
    assert Webhook(new).verify(BODY, headers) == orjson.loads(BODY)  # receiver already updated
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_a_stale_timestamp_is_refused_by_receivers() -> None:
    """Why each retry is signed afresh: the library refuses timestamps over 5 minutes old."""
    secret = new_secret()
    then = int(time.time()) - 600
    headers = _headers("42", then, signature_header([secret], "42", then, BODY))
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, headers)


def test_new_secret_format() -> None:
    secrets_ = {new_secret() for _ in range(50)}
    assert len(secrets_) == 50
    for secret in secrets_:
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret), secret
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        assert len(raw) == 32
        assert signing.secret_bytes(secret) == raw
        Webhook(secret)  # the library accepts it as is


def test_secret_bytes_wants_the_prefix() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        signing.secret_bytes(base64.b64encode(b"x" * 32).decode())


# -- the retry schedule ------------------------------------------------------------------

SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0)


@pytest.mark.parametrize("attempts", range(len(SCHEDULE)))
def test_retry_delay_follows_the_schedule_with_ten_percent_jitter(attempts: int) -> None:
    base = SCHEDULE[attempts]
    assert retry_delay(SCHEDULE, attempts, lambda: 0.5) == pytest.approx(base)
    assert retry_delay(SCHEDULE, attempts, lambda: 0.0) == pytest.approx(0.9 * base)
    assert retry_delay(SCHEDULE, attempts, lambda: 1.0) == pytest.approx(1.1 * base)
    import random

    rng = random.Random(attempts)
    for _ in range(500):
        delay = retry_delay(SCHEDULE, attempts, rng.random)
        assert delay is not None and 0.9 * base <= delay <= 1.1 * base


def test_retry_delay_is_none_after_the_last_step() -> None:
    assert retry_delay(SCHEDULE, len(SCHEDULE), lambda: 0.5) is None
    assert retry_delay(SCHEDULE, len(SCHEDULE) + 3, lambda: 0.5) is None
    assert retry_delay((0.0,), 1, lambda: 0.5) is None


def test_the_default_schedule_and_the_compressed_one_parse(tmp_path: Path) -> None:
    default = _settings(tmp_path)
    assert default.webhook_retry_schedule == (0, 5, 300, 1800, 7200, 18000, 36000, 36000, 86400)
    fast = _settings(tmp_path, webhook_retry_schedule_s="0,0.2,0.5,1,1,1,1,1,2")
    assert fast.webhook_retry_schedule == (0, 0.2, 0.5, 1, 1, 1, 1, 1, 2)
    with pytest.raises(ValidationError):
        _settings(tmp_path, webhook_retry_schedule_s="0,-1")


# -- Retry-After ---------------------------------------------------------------------------

NOW = 1_700_000_000.0


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (str(MAX_RETRY_AFTER_S), float(MAX_RETRY_AFTER_S)),
        (str(MAX_RETRY_AFTER_S + 1), float(MAX_RETRY_AFTER_S)),  # capped
        ("9" * 400, float(MAX_RETRY_AFTER_S)),  # capped, no overflow
        (None, None),
        ("", None),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("Thu, 99 Foo 2023 99:99:99 GMT", None),
    ],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_http_dates() -> None:
    assert parse_retry_after(_http_date(NOW + 30), NOW) == pytest.approx(30.0)
    assert parse_retry_after(_http_date(NOW - 30), NOW) == 0.0  # in the past: at once
    assert parse_retry_after(_http_date(NOW + 10 * 86400), NOW) == MAX_RETRY_AFTER_S  # capped
    # NOW is Tue, 14 Nov 2023 22:13:20 GMT. The obsolete RFC 850 form is an HTTP date too.
    assert parse_retry_after("Tuesday, 14-Nov-23 22:14:20 GMT", NOW) == pytest.approx(60.0)


def test_parse_retry_after_asctime_dates_are_gmt_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RFC 9110 5.6.7: the asctime form (``Tue Nov 14 22:13:50 2023``) is GMT, like the others."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        got = parse_retry_after("Tue Nov 14 22:13:50 2023", NOW)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert got == pytest.approx(30.0), (
        f"regression (fixed in bb21a4b): parse_retry_after reads an asctime-form "
        f"Retry-After as local time (email.utils.parsedate_to_datetime answers a naive "
        f"datetime; .timestamp() applies the local zone): 30 s ahead became {got} s on an "
        f"appliance with TZ=America/New_York"
    )


def test_parse_retry_after_never_raises_on_digit_like_characters() -> None:
    """httpx decodes header bytes that are not UTF-8 as Latin-1, so a receiver answering
    ``Retry-After: \\xb2`` hands "²" to the parser: str.isdigit() is True (also for
    "¹²³" or "①"), and float() raises."""
    value = "\u00b2"
    try:
        result = parse_retry_after(value, NOW)
    except ValueError as exc:
        pytest.fail(
            f"regression (fixed in 1c48a2b): parse_retry_after uses str.isdigit(), which "
            f"accepts {value!r}, then float() raises {exc!r}; in Dispatcher._record this escapes "
            f"the delivery task (attempt not recorded, job left leased until the lease expires)"
        )
    assert result is None


# -- which endpoints want which events ------------------------------------------------------


def _endpoint(**overrides: Any) -> store.Endpoint:
    fields: dict[str, Any] = {
        "id": "wh_0123456789abcdef",
        "url": "https://example.invalid/hook",
        "description": "",
        "event_types": ["*"],
        "accounts": None,
        "headers": {},
        "timeout_s": 15.0,
        "max_concurrency": 4,
        "enabled": True,
        "disabled_reason": None,
        "secret": b"",
        "previous_secret": None,
        "previous_expires_at": None,
        "failing_since": None,
        "created_by": None,
        "created_at": NOW,
        "updated_at": NOW,
    }
    fields.update(overrides)
    return store.Endpoint(**fields)


def test_wants_by_type() -> None:
    some = _endpoint(event_types=["message.received", "message.sent"])
    assert some.wants("message.received", "a", {})
    assert some.wants("message.sent", "a", {})
    assert not some.wants("message.read", "a", {})
    assert not some.wants("account.status", "a", {})
    every = _endpoint(event_types=["*"])
    for event_type in ("message.received", "message.failed", "account.status"):
        assert every.wants(event_type, "a", {})
    assert every.wants("webhook.endpoint_disabled", None, {"endpoint_id": "wh_other"})


def test_wants_by_account() -> None:
    limited = _endpoint(accounts=["a", "b"])
    assert limited.wants("message.received", "a", {})
    assert limited.wants("message.received", "b", {})
    assert not limited.wants("message.received", "c", {})
    none = _endpoint(accounts=[])
    assert not none.wants("message.received", "a", {})
    assert _endpoint(accounts=None).wants("message.received", "zzz", {})
    typed = _endpoint(accounts=["a"], event_types=["message.sent"])
    assert not typed.wants("message.received", "a", {})


def test_events_without_an_account_go_to_every_account_endpoints_only() -> None:
    """``webhook.endpoint_disabled`` names another endpoint and its URL: an endpoint limited
    to accounts (a manager's, say) must not get it, as GET /api/events hides it from them."""
    data = {"endpoint_id": "wh_other", "url": "https://x.example/?token=t", "reason": "410"}
    assert not _endpoint(accounts=["a"]).wants("webhook.endpoint_disabled", None, data)
    assert not _endpoint(accounts=[]).wants("webhook.endpoint_disabled", None, data)
    assert _endpoint(accounts=None).wants("webhook.endpoint_disabled", None, data)
    assert not _endpoint(accounts=None, event_types=["message.received"]).wants(
        "webhook.endpoint_disabled", None, data
    )


def test_a_disabled_endpoint_wants_nothing() -> None:
    off = _endpoint(enabled=False)
    assert not off.wants("message.received", "a", {})
    assert not off.wants("webhook.test", None, {"endpoint_id": off.id})


def test_webhook_test_goes_to_its_endpoint_only() -> None:
    mine = _endpoint(id="wh_mine", event_types=["message.received"], accounts=["a"])
    other = _endpoint(id="wh_other", event_types=["*"])
    data = {"endpoint_id": "wh_mine", "requested_by": "key"}
    assert mine.wants("webhook.test", None, data)  # whatever its types and accounts
    assert not other.wants("webhook.test", None, data)  # not even a '*' endpoint
    assert not other.wants("webhook.test", None, {})


def test_signing_secrets_during_and_after_the_grace_period() -> None:
    cipher = DataCipher(b"k" * 32)
    old, new = new_secret(), new_secret()
    ep = _endpoint(
        secret=store.encrypt_secret(cipher, "wh_0123456789abcdef", new),
        previous_secret=store.encrypt_secret(cipher, "wh_0123456789abcdef", old),
        previous_expires_at=NOW + 10,
    )
    assert ep.signing_secrets(cipher, NOW) == [new, old]
    assert ep.signing_secrets(cipher, NOW + 10) == [new]
    # Secrets are bound to their endpoint: a blob copied to another endpoint does not open.
    moved = _endpoint(id="wh_fedcba9876543210", secret=ep.secret)
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        moved.signing_secrets(cipher, NOW)


def test_signing_secrets_cache_follows_rotation_and_endpoint() -> None:
    cipher = DataCipher(b"k" * 32)
    first, second = new_secret(), new_secret()
    ep = _endpoint(secret=store.encrypt_secret(cipher, "wh_0123456789abcdef", first))
    cache: dict[tuple[str, bytes], str] = {}
    assert ep.signing_secrets(cipher, NOW, cache=cache) == [first]
    assert ep.signing_secrets(cipher, NOW, cache=cache) == [first]
    assert len(cache) == 1
    rotated = _endpoint(
        secret=store.encrypt_secret(cipher, "wh_0123456789abcdef", second),
        previous_secret=ep.secret,
        previous_expires_at=NOW + 10,
    )
    assert rotated.signing_secrets(cipher, NOW, cache=cache) == [second, first]
    # The cache never lets a blob open for another endpoint.
    moved = _endpoint(id="wh_fedcba9876543210", secret=ep.secret)
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        moved.signing_secrets(cipher, NOW, cache=cache)


# -- the API's input models --------------------------------------------------------------

URL = "https://hooks.example.com/in"


@pytest.mark.parametrize(
    "name",
    [
        "webhook-id",
        "Webhook-Id",
        "WEBHOOK-SIGNATURE",
        "webhook-Signature",
        "Webhook-Timestamp",
        "Content-Type",
        "content-length",
        "HOST",
        "User-Agent",
        "TraceParent",
        "tracestate",
        "Transfer-Encoding",
        "Connection",
    ],
)
@pytest.mark.parametrize("model", [EndpointIn, EndpointPatch])
def test_reserved_headers_are_refused_in_any_case(model: type, name: str) -> None:
    assert name.lower() in RESERVED_HEADERS
    with pytest.raises(ValidationError) as info:
        model.model_validate({"url": URL, "headers": {name: "x"}})
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [("headers",)]
    assert "cannot be overridden" in errors[0]["msg"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("bad header", "x"),
        ("x:y", "x"),
        ("", "x"),
        ("X-" + "a" * 63, "x"),
        ("X-Ok", "line\r\nInjected: yes"),
        ("X-Ok", "tab\there"),
        ("X-Ok", "del\x7f"),
        ("X-Ok", "v" * 1025),
    ],
)
def test_invalid_header_names_and_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        EndpointIn.model_validate({"url": URL, "headers": {name: value}})
    assert info.value.errors()[0]["loc"] == ("headers",)


def test_custom_headers_are_accepted() -> None:
    headers = {"Authorization": "Bearer abc", "X-Tenant": "t1", "x-a_b.c~d": "v" * 1024}
    model = EndpointIn.model_validate({"url": URL, "headers": headers})
    assert model.headers == headers
    too_many = {f"X-H{i}": "v" for i in range(21)}
    with pytest.raises(ValidationError):
        EndpointIn.model_validate({"url": URL, "headers": too_many})


def test_events_are_checked() -> None:
    assert EndpointIn.model_validate({"url": URL}).events == ["*"]
    assert EndpointIn.model_validate({"url": URL, "events": ["*"]}).events == ["*"]
    picked = EndpointIn.model_validate(
        {"url": URL, "events": ["message.sent", "message.received", "message.sent"]}
    )
    assert picked.events == ["message.received", "message.sent"]  # sorted, once each
    for bad in (["message.nope"], [], ["*", "message.sent"], ["MESSAGE.SENT"], ["message.*"]):
        with pytest.raises(ValidationError) as info:
            EndpointIn.model_validate({"url": URL, "events": bad})
        assert info.value.errors()[0]["loc"] == ("events",), bad
    assert EndpointPatch.model_validate({}).events is None
    with pytest.raises(ValidationError):
        EndpointPatch.model_validate({"events": ["nope"]})


@pytest.mark.parametrize(
    "extra",
    [
        {"timeout_s": 0.5},
        {"timeout_s": 61},
        {"max_concurrency": 0},
        {"max_concurrency": 65},
        {"accounts": ["bad id!"]},
        {"secret": "whsec_mine"},  # secrets are made by the appliance, never chosen
        {"unknown": 1},
    ],
)
def test_other_fields_are_checked(extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EndpointIn.model_validate({"url": URL, **extra})


# -- the dispatcher, with a fake poster ----------------------------------------------------


class FakePoster:
    """Answers from a script; records what would have been sent. Sends nothing."""

    def __init__(self, answers: list[AttemptResult]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    async def post(self, url: str, body: bytes, headers: dict[str, str], **_: Any) -> AttemptResult:
        self.sent.append((url, body, dict(headers)))
        return self.answers.pop(0) if self.answers else AttemptResult(200, None, "ok", None, 1.0)

    async def close(self) -> None:
        pass


class SlowPoster(FakePoster):
    """A FakePoster whose answers take 10 ms."""

    async def post(self, url: str, body: bytes, headers: dict[str, str], **_: Any) -> AttemptResult:
        await asyncio.sleep(0.01)
        return await super().post(url, body, headers)


def _answer(status: int | None, retry_after: str | None = None, error: str | None = None):
    return AttemptResult(status, retry_after, None, error, 2.0)


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(data_dir=tmp_path, log_dir=tmp_path, run_dir=tmp_path, **extra)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def _setup(
    db: Database, tmp_path: Path, poster: FakePoster, clock: Clock, *, schedule: str
) -> tuple[Dispatcher, str, list[int]]:
    cipher = DataCipher(b"d" * 32)
    secret = new_secret()
    events_seen: list[int] = []

    async def on_events() -> None:
        events_seen.append(1)

    dispatcher = Dispatcher(
        db,
        _settings(tmp_path, webhook_retry_schedule_s=schedule),
        cipher,
        on_events=on_events,
        poster=poster,  # type: ignore[arg-type]
        clock=clock,
        rand=lambda: 0.5,
    )
    async with db.write() as conn:
        await store.create_endpoint(
            conn,
            cipher,
            endpoint_id="wh_unit",
            url="https://hooks.example.com/in",
            description="",
            event_types=["message.received"],
            accounts=None,
            headers={"X-Tenant": "t1"},
            timeout_s=5,
            max_concurrency=2,
            secret=secret,
            created_by="test",
            now=clock(),
        )
        await messaging_store.append_event(
            conn, "message.received", "acc", {"text": "hi ✓"}, clock()
        )
        await messaging_store.append_event(conn, "message.sent", "acc", {}, clock())
    await dispatcher.reload_endpoints()
    assert await dispatcher.fan_out_once() == 2
    return dispatcher, secret, events_seen


async def _run_due(dispatcher: Dispatcher) -> int:
    jobs = await dispatcher.queue.claim(limit=10)
    for job in jobs:
        await dispatcher._deliver(job)
    return len(jobs)


async def _delivery(db: Database) -> Any:
    return await db.fetchone("SELECT * FROM webhook_deliveries WHERE endpoint_id = 'wh_unit'")


def _with_db(open_db: Callable[..., Any], path: Path, body: Callable[[Database], Any]) -> None:
    async def main() -> None:
        async with open_db(path) as db:
            await body(db)

    asyncio.run(main())


def test_dispatcher_signs_what_the_library_verifies(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    poster, clock = FakePoster([]), Clock()

    async def body(db: Database) -> None:
        dispatcher, secret, _ = await _setup(db, tmp_path, poster, clock, schedule="0,1")
        assert await _run_due(dispatcher) == 1  # message.sent was not subscribed
        url, sent, headers = poster.sent[0]
        assert url == "https://hooks.example.com/in"
        envelope = Webhook(secret).verify(sent, headers)
        assert set(envelope) == {"id", "type", "account_id", "created_at", "data"}
        assert envelope["type"] == "message.received" and envelope["data"] == {"text": "hi ✓"}
        assert headers["webhook-id"] == str(envelope["id"])
        assert headers["webhook-timestamp"] == str(int(clock.now))
        assert headers["User-Agent"] == USER_AGENT and headers["X-Tenant"] == "t1"
        assert headers["Content-Type"] == "application/json"
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", headers["traceparent"])
        row = await _delivery(db)
        assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)

    _with_db(open_db, db_path, body)


def test_dispatcher_retries_on_schedule_then_gives_up(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    poster = FakePoster([_answer(500), _answer(None, error="ConnectError: refused"), _answer(502)])
    clock = Clock()

    async def body(db: Database) -> None:
        dispatcher, _, _ = await _setup(db, tmp_path, poster, clock, schedule="0,10,20")
        start = clock.now
        assert await _run_due(dispatcher) == 1
        row = await _delivery(db)
        assert (row["state"], row["attempts"], row["last_status"]) == ("pending", 1, 500)
        assert row["next_attempt_at"] == pytest.approx(start + 10)
        clock.now += 9.9
        assert await _run_due(dispatcher) == 0  # not yet due
        clock.now += 0.2
        assert await _run_due(dispatcher) == 1
        row = await _delivery(db)
        assert row["attempts"] == 2 and "ConnectError" in row["last_error"]
        assert row["next_attempt_at"] == pytest.approx(clock.now + 20)
        clock.now += 20.1
        assert await _run_due(dispatcher) == 1
        row = await _delivery(db)
        assert (row["state"], row["attempts"], row["last_status"]) == ("dead", 3, 502)
        assert "retries exhausted" in row["last_error"]
        attempts = await db.fetchall(
            "SELECT status, error FROM webhook_attempts WHERE delivery_id = ? ORDER BY id",
            (row["id"],),
        )
        assert [(a["status"], a["error"]) for a in attempts] == [
            (500, None),
            (None, "ConnectError: refused"),
            (502, None),
        ]
        ids = {headers["webhook-id"] for _, _, headers in poster.sent}
        assert len(poster.sent) == 3 and len(ids) == 1  # one id across retries

    _with_db(open_db, db_path, body)


@pytest.mark.parametrize("status", [429, 503])
def test_dispatcher_honours_retry_after(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path, status: int
) -> None:
    poster, clock = FakePoster([_answer(status, retry_after="42")]), Clock()

    async def body(db: Database) -> None:
        dispatcher, _, _ = await _setup(db, tmp_path, poster, clock, schedule="0,1,1")
        await _run_due(dispatcher)
        row = await _delivery(db)
        assert row["next_attempt_at"] == pytest.approx(clock.now + 42)
        clock.now += 41
        assert await _run_due(dispatcher) == 0
        clock.now += 1.5
        assert await _run_due(dispatcher) == 1
        assert (await _delivery(db))["state"] == "delivered"

    _with_db(open_db, db_path, body)


def test_dispatcher_ignores_retry_after_on_other_statuses(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    poster, clock = FakePoster([_answer(500, retry_after="3600")]), Clock()

    async def body(db: Database) -> None:
        dispatcher, _, _ = await _setup(db, tmp_path, poster, clock, schedule="0,1,1")
        await _run_due(dispatcher)
        assert (await _delivery(db))["next_attempt_at"] == pytest.approx(clock.now + 1)

    _with_db(open_db, db_path, body)


def test_dispatcher_gone_disables_the_endpoint_with_an_event(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    poster, clock = FakePoster([_answer(410)]), Clock()

    async def body(db: Database) -> None:
        dispatcher, _, events_seen = await _setup(db, tmp_path, poster, clock, schedule="0,1")
        await _run_due(dispatcher)
        row = await _delivery(db)
        assert (row["state"], row["last_status"]) == ("dead", 410)
        endpoint = await store.get_endpoint(db, "wh_unit")
        assert not endpoint.enabled and "410" in (endpoint.disabled_reason or "")
        event = await db.fetchone(
            "SELECT account_id, data FROM events WHERE type = 'webhook.endpoint_disabled'"
        )
        assert event is not None and event["account_id"] is None
        assert orjson.loads(event["data"])["endpoint_id"] == "wh_unit"
        assert events_seen  # subscribers were told about the new event

    _with_db(open_db, db_path, body)


def test_dispatcher_survives_a_digit_like_retry_after(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    poster, clock = FakePoster([_answer(503, retry_after="\u00b2")]), Clock()

    async def body(db: Database) -> None:
        dispatcher, _, _ = await _setup(db, tmp_path, poster, clock, schedule="0,1,1")
        jobs = await dispatcher.queue.claim(limit=10)
        try:
            await dispatcher._deliver(jobs[0])
        except ValueError as exc:
            pytest.fail(
                "regression (fixed in 1c48a2b): Dispatcher._record -> parse_retry_after "
                f"raised {exc!r} for a receiver's 'Retry-After: \\xb2'; the attempt is not "
                "recorded and the job stays leased (lease_s 120 s), and once its attempts are "
                "used up by lease expiry the delivery row stays 'pending' for ever"
            )
        row = await _delivery(db)
        assert (row["attempts"], row["last_status"]) == (1, 503)

    _with_db(open_db, db_path, body)


def test_a_delivery_whose_job_died_by_lease_expiry_ends_dead_and_replayable(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    """A worker that dies during every attempt never records one: the queue kills the job
    when its last lease expires, and housekeeping marks the delivery dead (fe0d883), so
    the delivery log does not show it pending for ever and it can be replayed."""
    poster, clock = FakePoster([]), Clock()

    async def body(db: Database) -> None:
        dispatcher, _, _ = await _setup(db, tmp_path, poster, clock, schedule="0,1,1")
        for _ in range(3):  # each claim is an attempt whose worker "dies"
            assert len(await dispatcher.queue.claim(limit=10)) == 1
            clock.now += dispatcher.queue.lease_s + 1
        assert await dispatcher.queue.claim(limit=10) == []  # the expired lease killed it
        assert (await _delivery(db))["state"] == "pending"
        await dispatcher.housekeeping()
        row = await _delivery(db)
        assert row["state"] == "dead" and "lease expired" in row["last_error"]
        assert poster.sent == []

    _with_db(open_db, db_path, body)


async def _twenty_due(db: Database, tmp_path: Path, poster: FakePoster, clock: Clock) -> Dispatcher:
    """A dispatcher (max_concurrency 2) with 20 deliveries to one endpoint fanned out."""
    dispatcher, _, _ = await _setup(db, tmp_path, poster, clock, schedule="0,1")
    async with db.write() as conn:
        for n in range(19):
            await messaging_store.append_event(conn, "message.received", "acc", {"n": n}, 1)
    await dispatcher.fan_out_once()
    assert dispatcher._endpoints["wh_unit"].max_concurrency == 2
    return dispatcher


def _lag_the_writer(db: Database) -> tuple[asyncio.Event, list[Any]]:
    """Writes wait at the returned gate until it is set; the list holds the waiting ones."""
    gate, waiting = asyncio.Event(), []
    write_batched = db.write_batched

    async def lagging_writer(work: Any, **options: Any) -> Any:
        waiting.append(work)
        await gate.wait()
        return await write_batched(work, **options)

    db.write_batched = lagging_writer  # type: ignore[method-assign]
    return gate, waiting


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(600):  # bounded: 30 s
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _states(db: Database) -> list[tuple[Any, ...]]:
    rows = await db.fetchall("SELECT state, COUNT(*) AS n FROM webhook_deliveries GROUP BY state")
    return [tuple(r) for r in rows]


def test_an_answered_post_frees_its_slot_and_waiting_outcomes_are_bounded(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    """While the writer lags, an endpoint's slots keep POSTing (the slot is held for the
    POST only), until ``unrecorded`` answered outcomes wait for their commit: then no
    more. A kill -9 at that moment repeats at most repeats_at_a_kill(max_concurrency)
    deliveries (POSTed, outcome not committed): the slots' POSTs plus the waiting ones."""
    poster, clock = FakePoster([]), Clock()

    async def body(db: Database) -> None:
        dispatcher = await _twenty_due(db, tmp_path, poster, clock)
        dispatcher.delivery.unrecorded = 5  # of 64 by default: smaller than the 20 jobs
        bound = repeats_at_a_kill(2, 5)
        assert bound == 7 and repeats_at_a_kill(4) == 4 + MAX_UNRECORDED
        jobs = await dispatcher.queue.claim(limit=CLAIM_BATCH)  # (a write_batched too)
        assert len(jobs) == 20
        gate, _ = _lag_the_writer(db)
        tasks = [asyncio.create_task(dispatcher._deliver(job)) for job in jobs]
        await _until(lambda: len(poster.sent) >= bound, "the slots to POST past max_concurrency")
        await asyncio.sleep(0.5)  # time enough for more POSTs, were they not bounded
        assert len(poster.sent) == bound  # POSTed, outcome not committed
        assert await _states(db) == [("pending", 20)]
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert len(poster.sent) == 20
        assert await _states(db) == [("delivered", 20)]

    _with_db(open_db, db_path, body)


def test_outcomes_of_many_deliveries_commit_in_one_transaction(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    """Outcomes answered while a commit is under way are committed together: 20
    deliveries (answered 10 ms apart, two at a time), each with its attempt row, its
    delivery state and its job's ack, in two transactions (the first outcomes' and
    everybody else's), counted by SQLite."""
    poster, clock = SlowPoster([]), Clock()

    async def body(db: Database) -> None:
        dispatcher = await _twenty_due(db, tmp_path, poster, clock)
        jobs = await dispatcher.queue.claim(limit=CLAIM_BATCH)
        commits: list[str] = []
        raw = db.writer._conn  # the sqlite3 connection: its trace shows every statement
        await db.writer._execute(  # type: ignore[no-untyped-call]
            raw.set_trace_callback, lambda sql: commits.append(sql) if sql == "COMMIT" else None
        )
        gate, waiting = _lag_the_writer(db)
        tasks = [asyncio.create_task(dispatcher._deliver(job)) for job in jobs]
        await _until(lambda: len(poster.sent) == 20 and waiting, "every delivery POSTed")
        await asyncio.sleep(0.1)
        assert len(waiting) == 1  # the first batch is at the writer, the rest waits for it
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await db.writer._execute(raw.set_trace_callback, None)  # type: ignore[no-untyped-call]
        assert len(commits) == 2, commits
        assert await _states(db) == [("delivered", 20)]
        attempts = await db.scalar("SELECT COUNT(*) FROM webhook_attempts WHERE status = 200")
        assert attempts == 20  # exactly one attempt row per POST
        assert (await dispatcher.queue.counts())["done"] == 20

    _with_db(open_db, db_path, body)


def test_outcomes_lost_in_a_crash_leave_their_jobs_leased_and_they_are_delivered_again(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    """Answered, but the process dies before the outcomes' commit: nothing of them is
    written, their jobs stay leased, and the next start (which releases the dead
    process's leases) delivers every one again. At least once, never lost."""
    poster, clock = FakePoster([]), Clock()

    async def body(db: Database) -> None:
        dispatcher = await _twenty_due(db, tmp_path, poster, clock)
        jobs = await dispatcher.queue.claim(limit=CLAIM_BATCH)  # (a write_batched too)
        _lag_the_writer(db)  # never let through: the "crash" comes first
        tasks = [asyncio.create_task(dispatcher._deliver(job)) for job in jobs]
        await _until(lambda: len(poster.sent) == 20, "every delivery POSTed")
        # The crash: this process's tasks end with nothing more written.
        outcome_writer = dispatcher.delivery.outcomes._batcher.task
        assert outcome_writer is not None
        for task in (*tasks, outcome_writer):
            task.cancel()
        await asyncio.gather(*tasks, outcome_writer, return_exceptions=True)
        assert await _states(db) == [("pending", 20)]
        assert (await dispatcher.queue.counts())["leased"] == 20
        assert await db.scalar("SELECT COUNT(*) FROM webhook_attempts") == 0
        # The next start, with a database handle of its own.
        async with open_db(db_path) as again:
            async with again.write() as conn:
                assert await release_all_leases(conn, clock(), queue=WEBHOOK_QUEUE) == 20
            second = FakePoster([])
            restarted = Dispatcher(
                again,
                _settings(tmp_path, webhook_retry_schedule_s="0,1"),
                DataCipher(b"d" * 32),
                on_events=_nothing,
                poster=second,  # type: ignore[arg-type]
                clock=clock,
                rand=lambda: 0.5,
            )
            await restarted.reload_endpoints()
            assert await _run_due(restarted) == 10
            assert await _run_due(restarted) == 10
            assert len(second.sent) == 20
            assert {h["webhook-id"] for _, _, h in second.sent} == {
                h["webhook-id"] for _, _, h in poster.sent
            }
            assert await _states(again) == [("delivered", 20)]
            assert await again.scalar("SELECT COUNT(*) FROM webhook_attempts") == 20

    _with_db(open_db, db_path, body)


async def _nothing() -> None:
    pass


def test_an_outcome_that_cannot_be_written_fails_alone(
    open_db: Callable[..., Any], db_path: Path, tmp_path: Path
) -> None:
    """A batch that fails is written again one outcome at a time: the others commit."""
    poster, clock = FakePoster([]), Clock()

    async def body(db: Database) -> None:
        dispatcher = await _twenty_due(db, tmp_path, poster, clock)
        jobs = await dispatcher.queue.claim(limit=3)
        log = OutcomeLog(db, linger_s=0.05)

        def outcome(job: Any, state: str) -> store.Outcome:
            return store.Outcome(
                delivery_id=job.payload["delivery_id"],
                endpoint_id="wh_unit",
                state=state,
                at=clock(),
                attempted=True,
                status=200,
                duration_ms=1.0,
            )

        results = await asyncio.gather(
            *(
                log.record(outcome(job, state), job.id, job.lease_token or "")
                for job, state in zip(jobs, ["delivered", "bogus", "delivered"], strict=True)
            ),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], Exception) and "CHECK" in str(results[1])
        rows = await db.fetchall("SELECT id, state FROM webhook_deliveries ORDER BY id")
        states = {r["id"]: r["state"] for r in rows}
        assert [states[j.payload["delivery_id"]] for j in jobs] == [
            "delivered",
            "pending",
            "delivered",
        ]
        assert await db.scalar("SELECT COUNT(*) FROM webhook_attempts") == 2
        still = await dispatcher.queue.get(jobs[1].id)
        assert still is not None and still.state == "leased"  # delivered again later

    _with_db(open_db, db_path, body)
