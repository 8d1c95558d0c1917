"""The served /openapi.json against the third-party tools integrators use with it.

- openapi-spec-validator: 0 errors;
- openapi-python-client: generates a client with 0 warnings (nothing dropped);
- schemathesis, every check, fixed seed, a bounded number of examples per operation:
  0 failures. What is excluded, and why, is listed in EXCLUSIONS below.

One installation of its own (it creates, changes and deletes users, keys, accounts
and webhooks at random), with the rate limits raised so that fuzzing does not trip
them (APPLIANCE_* environment overrides at start; the defaults are tested elsewhere).
Generated requests never leave loopback: see schemathesis_hooks.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key, running_appliance

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

BIN = Path(sys.executable).parent
SEED = 20260301
EXAMPLES_PER_OPERATION = 12
FUZZ_ACCOUNT = "fuzz"  # a sandbox account most account operations act on
DOOMED_ACCOUNT = "doomed"  # the one DELETE /api/accounts/{account} may delete

INSTALL_ENV = {
    # Webhooks and media links are rewritten to a loopback URL (schemathesis_hooks.py),
    # which the SSRF guard refuses unless its network is allowed.
    "APPLIANCE_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
    "APPLIANCE_API_RATE_LIMIT_PER_MIN": "1000000",
    "APPLIANCE_API_RATE_LIMIT_PER_ADDR_PER_MIN": "1000000",
    "APPLIANCE_ANONYMOUS_RATE_LIMIT_PER_ADDR_PER_MIN": "1000000",
}

# (method, path) -> why schemathesis does not call it at all.
EXCLUSIONS = {
    ("GET", "/api/events/ws"): "a websocket handshake; schemathesis speaks plain HTTP "
    "(the stream is tested in test_events.py)",
    ("GET", "/_test/sleep"): "test-only route (ENABLE_TEST_ROUTES), not part of the API",
}
POSITIVE_DEFAULTS = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# check -> statuses added to what it accepts everywhere, and why.
CHECK_ALLOWANCES = {
    "positive_data_acceptance": (
        ["422"],
        "well-formed input naming what does not exist (a message replied to, an uploaded "
        "media id) answers 422; so does a generated Idempotency-Key that schemathesis "
        "repeats with another body (IETF draft)",
    ),
}
# (method, path) -> statuses schema-valid input may also get there, and why.
OPERATION_ALLOWANCES = {
    ("POST", "/api/accounts/{account}/media"): (
        ["400", "415"],
        "the file's type is judged from its bytes: made-up bytes are refused (415), an "
        "empty file too (400); no schema can say which bytes are a JPEG",
    ),
    ("POST", "/api/accounts"): (
        ["400"],
        "engine_settings are checked against the engine's own settings model, which "
        "the spec describes in words only (a oneOf per engine breaks client generators)",
    ),
    ("POST", "/api/accounts/{account}/scripts"): (
        ["400"],
        "filter.regex is compiled with RE2 (a pattern it does not support is a 400 naming "
        "it); no schema can say which strings are valid regular expressions",
    ),
    ("PUT", "/api/accounts/{account}/scripts/{script_id}"): (
        ["400"],
        "filter.regex is compiled with RE2, as on POST",
    ),
    ("POST", "/api/accounts/{account}/contacts.csv"): (
        ["400", "415"],
        "every row of the CSV is checked (E.164 phones, declared attribute columns and "
        "their types): a generated string is not a contacts CSV",
    ),
    ("PATCH", "/api/accounts/{account}/contacts/{contact}"): (
        ["400"],
        "attributes must be declared for the account and of the declared type, which "
        "the spec cannot say per account",
    ),
    ("PUT", "/api/accounts/{account}/contact-attributes"): (
        ["400"],
        "`phone` and `name` are columns of their own, not attribute keys; a key may be "
        "declared once",
    ),
    ("PATCH", "/api/accounts/{account}"): (
        ["400"],
        "engine_settings must be those of the account's engine (sandbox here), which "
        "the PATCH body does not name",
    ),
    ("POST", "/api/accounts/{account}/schedules"): (
        ["400"],
        "a one-time `at` must lie in the future, `cron` must parse and match some date, "
        "`timezone` must name a zone tzdata knows, `to` must not name a chat twice, and "
        "exactly one of `at` and `cron` is given: no schema says the first four",
    ),
    ("PATCH", "/api/accounts/{account}/schedules/{schedule_id}"): (
        ["400"],
        "as for POST .../schedules (a new `at` in the future, a valid `cron` and zone)",
    ),
    ("POST", "/api/accounts/{account}/messages"): (
        ["400"],
        "a quick reply's variables must be the ones its stored body uses, and the "
        "rendered text must make a message; the spec cannot name another object's variables",
    ),
    ("POST", "/api/accounts/{account}/quick-replies/{reply_id}/render"): (
        ["400"],
        "as for a quick-reply send: the variables must be the ones the stored body uses",
    ),
    ("POST", "/api/accounts/{account}/auto-replies"): (
        ["400"],
        "a regex pattern must compile on RE2 and any pattern must keep a letter once "
        "case and diacritics are folded away, which no schema can say",
    ),
    ("PATCH", "/api/accounts/{account}/auto-replies/{rule_id}"): (
        ["400"],
        "the rule the change makes is checked whole (a new match_type re-checks the "
        "stored pattern), which no schema of the PATCH body can say",
    ),
}
# Operations whose path parameters are pinned, so that positive cases act on objects
# that exist and destructive ones cannot cut the run's own access; and why.
PINNED = {
    ("DELETE", "/api/accounts/{account}"): (
        {"account": DOOMED_ACCOUNT, "confirm": DOOMED_ACCOUNT},
        "deleting needs ?confirm= equal to the id, which no schema can say",
    ),
    ("DELETE", "/api/api-keys/{key_id}"): (
        {"key_id": "<spare key>"},
        "revoking keys at random would revoke the key the run authenticates with",
    ),
    ("DELETE", "/api/users/{user_id}"): (
        {"user_id": "<spare user>"},
        "deleting users at random would delete the owner of the run's key",
    ),
    ("PATCH", "/api/users/{user_id}"): (
        {"user_id": "<spare user>"},
        "deactivating users at random would revoke the run's key with its owner",
    ),
}
# Everything else about an account acts on FUZZ_ACCOUNT (pinned for every operation).


@dataclass
class Target:
    app: Appliance
    key: str
    spare_key_id: int
    spare_user_id: int

    def spec(self) -> dict[str, Any]:
        response = httpx.get(f"{self.app.base_url}/openapi.json", timeout=30)
        assert response.status_code == 200
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with running_appliance(tmp_path_factory, "oapi", start_env=INSTALL_ENV) as app:
        key = new_api_key(app, "openapi-tools", "admin")
        with bearer(app, key) as api:
            for account in (FUZZ_ACCOUNT, DOOMED_ACCOUNT):
                made = api.post("/api/accounts", json={"id": account, "name": account})
                assert made.status_code == 201, made.text
            spare_key = api.post("/api/api-keys", json={"name": "spare", "role": "agent"})
            assert spare_key.status_code == 201, spare_key.text
            spare_user = api.post(
                "/api/users",
                json={"username": "spare", "password": "spare-password-1", "role": "agent"},
            )
            assert spare_user.status_code == 201, spare_user.text
        yield Target(app, key, spare_key.json()["id"], spare_user.json()["id"])


def test_spec_validator_finds_no_errors(target: Target) -> None:
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    spec = target.spec()
    errors = [
        f"{'/'.join(str(p) for p in e.path)}: {e.message}"
        for e in OpenAPIV31SpecValidator(spec).iter_errors()
    ]
    assert errors == []


def test_client_generator_keeps_every_response(target: Target, tmp_path: Path) -> None:
    spec = target.spec()
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    result = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(tmp_path / "openapi.json"),
            "--output-path",
            str(tmp_path / "client"),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output
    generated = "\n".join(
        p.read_text() for p in (tmp_path / "client").rglob("*.py") if "api" in p.parts
    )
    # Every documented status is parsed by the client (none dropped).
    documented = sum(len(op["responses"]) for ops in spec["paths"].values() for op in ops.values())
    parsed = generated.count("if response.status_code == ")
    assert parsed == documented, (parsed, documented)


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # TOML basic strings, numbers and arrays read as JSON does


def _schemathesis_config(target: Target) -> str:
    lines = [
        f"seed = {SEED}",
        "workers = 1",
        'hooks = "tests.integration.schemathesis_hooks"',
        # Here, not on the command line, so that GET /metrics can send its own token.
        f"headers = {{ Authorization = {_toml_value(f'Bearer {target.key}')} }}",
        "request-timeout = 60",
        "",
        "[generation]",
        f"max-examples = {EXAMPLES_PER_OPERATION}",
        "",
        "[phases.stateful]",
        "max-steps = 8",
        "",
    ]
    for check, (statuses, _why) in CHECK_ALLOWANCES.items():
        lines += [
            f"[checks.{check}]",
            f"expected-statuses = {_toml_value(POSITIVE_DEFAULTS + statuses)}",
        ]
        lines.append("")
    lines += ["[checks]", "max_response_time = 50", ""]
    lines += ["[parameters]", f'"path.account" = {_toml_value(FUZZ_ACCOUNT)}', ""]
    spare = {"<spare key>": target.spare_key_id, "<spare user>": target.spare_user_id}
    for (method, path), (values, _why) in PINNED.items():
        lines += ["[[operations]]", f"include-name = {_toml_value(f'{method} {path}')}"]
        pins = {}
        for name, value in values.items():
            where = "query" if name == "confirm" else "path"
            pins[f"{where}.{name}"] = spare.get(value, value) if isinstance(value, str) else value
        lines.append(
            "parameters = { "
            + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in pins.items())
            + " }"
        )
        lines.append("")
    # /metrics takes the metrics token, not an API key.
    token = target.app.metrics_token()
    lines += [
        "[[operations]]",
        'include-name = "GET /metrics"',
        f"headers = {{ Authorization = {_toml_value(f'Bearer {token}')} }}",
        "",
    ]
    allowed = POSITIVE_DEFAULTS + CHECK_ALLOWANCES["positive_data_acceptance"][0]
    for (method, path), (statuses, _why) in OPERATION_ALLOWANCES.items():
        lines += [
            "[[operations]]",
            f"include-name = {_toml_value(f'{method} {path}')}",
            "checks = { positive_data_acceptance = { expected-statuses = "
            f"{_toml_value(allowed + statuses)} }} }}",
            "",
        ]
    return "\n".join(lines)


def test_schemathesis_finds_no_failures(target: Target, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_schemathesis_config(target))
    report = tmp_path / "report.json"
    argv = [
        str(BIN / "st"),
        "--config-file",
        str(config),
        "run",
        f"{target.app.base_url}/openapi.json",
        "--checks",
        "all",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--output-truncate",
        "false",
    ]
    for _method, path in EXCLUSIONS:  # each path has this one method
        argv += ["--exclude-path", path]
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    output = result.stdout + result.stderr
    assert report.exists(), output[-5000:]
    summary = json.loads(report.read_text())
    assert summary["complete"], output[-5000:]
    assert summary["operations"]["tested"] >= 50, summary["operations"]
    assert summary["test_cases"]["generated"] >= 10 * summary["operations"]["tested"]
    failures = [(f["code"], f["title"], f["operations"]) for f in summary["failures"]]
    assert failures == [], output[-20000:]
    assert not summary["errors"], output[-20000:]
    assert result.returncode == 0, output[-20000:]
