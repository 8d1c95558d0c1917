"""Settings from `<etc>/appliance.env` and the environment, validated once at start.

Where things live is derived from one installation prefix (``/`` for a system
install, any directory for ``install.sh --prefix DIR``):

    <prefix>/opt/appliance/venv         code
    <prefix>/etc/appliance/appliance.env non-secret settings
    <prefix>/etc/appliance/secrets/     one file per secret
    <prefix>/var/lib/appliance/         database, media, engine sessions
    <prefix>/var/log/appliance/         supervisord's rotated logs
    <prefix>/run/appliance/             sockets, pid file, metrics files

Secrets never go through this module: see ``appliance.secrets``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from appliance.errors import ConfigError

ENV_ETC = "APPLIANCE_ETC"  # set by appliancectl for every supervised process
# A setting KEY in appliance.env is overridden by the environment variable APPLIANCE_KEY;
# the prefix keeps generic names such as PORT in a shell from leaking in.
ENV_PREFIX = "APPLIANCE_"


@dataclass(frozen=True)
class Paths:
    """Every filesystem location of one installation."""

    prefix: Path

    @classmethod
    def discover(cls, prefix: str | os.PathLike[str] | None = None) -> Paths:
        """Find the installation: explicit prefix, then $APPLIANCE_ETC, then our venv."""
        if prefix is not None:
            return cls(Path(prefix).resolve())
        etc = os.environ.get(ENV_ETC)
        if etc:
            return cls(Path(etc).resolve().parents[1])
        # sys.prefix is <prefix>/opt/appliance/venv when run from an installation.
        return cls(Path(sys.prefix).resolve().parents[2])

    @property
    def etc(self) -> Path:
        return self.prefix / "etc" / "appliance"

    @property
    def env_file(self) -> Path:
        return self.etc / "appliance.env"

    @property
    def secrets_dir(self) -> Path:
        return self.etc / "secrets"

    @property
    def opt(self) -> Path:
        return self.prefix / "opt" / "appliance"

    @property
    def venv(self) -> Path:
        return self.opt / "venv"

    @property
    def supervisord_conf(self) -> Path:
        return self.opt / "supervisord.conf"

    @property
    def default_data_dir(self) -> Path:
        return self.prefix / "var" / "lib" / "appliance"

    @property
    def default_log_dir(self) -> Path:
        return self.prefix / "var" / "log" / "appliance"

    @property
    def default_run_dir(self) -> Path:
        return self.prefix / "run" / "appliance"


class Settings(BaseModel):
    """Validated settings. Field names are the lower-cased keys of appliance.env."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bind: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    public_url: str = ""
    api_processes: Annotated[int, Field(ge=0, le=64)] = 0  # 0: CPU count, at least 2
    data_dir: Path
    log_dir: Path
    run_dir: Path
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True
    access_log_file: bool = True  # API processes write it to <log_dir>/api_NN.access.log
    api_graceful_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    worker_drain_timeout_s: Annotated[float, Field(gt=0, le=300)] = 15.0
    ipc_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    ready_worker_timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0
    # /readyz's webhooks check fails when the webhooks process, still connected, has sent
    # nothing for this long (it sends a heartbeat every second while its event loop runs).
    webhooks_silent_after_s: Annotated[float, Field(ge=2, le=600)] = 15.0
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"
    sqlite_busy_timeout_ms: Annotated[int, Field(ge=100, le=120_000)] = 5000
    enable_test_routes: bool = False
    # Tests only: "module:callable" building the web engine's neonize client, so the
    # real worker can run the web engine against a fake WhatsApp on loopback.
    web_client_factory: str = ""
    max_body_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 1024 * 1024
    session_idle_timeout_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 8 * 3600
    session_absolute_timeout_s: Annotated[int, Field(ge=300, le=90 * 86400)] = 24 * 3600
    login_max_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    # Per client address: higher, so one person's typos do not lock out a shared office NAT.
    login_max_failures_per_addr: Annotated[int, Field(ge=1, le=10_000)] = 20
    login_window_s: Annotated[int, Field(ge=10, le=86400)] = 900
    api_rate_limit_per_min: Annotated[int, Field(ge=1, le=1_000_000)] = 1200
    api_rate_limit_per_addr_per_min: Annotated[int, Field(ge=1, le=1_000_000)] = 2400
    # Per client address: public routes (login) and requests without valid credentials.
    anonymous_rate_limit_per_addr_per_min: Annotated[int, Field(ge=1, le=1_000_000)] = 300
    # A request body not received in full within this many seconds answers 408.
    request_body_timeout_s: Annotated[int, Field(ge=1, le=3600)] = 30
    media_max_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 16 * 1024 * 1024
    send_chat_interval_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 1000
    send_account_rate_per_s: Annotated[float, Field(gt=0, le=10_000)] = 20.0
    # CIDRs that outbound HTTP (webhooks, media links, the cloud engine's Graph API and
    # media downloads) may reach although they are not public.
    outbound_allow_networks: str = ""
    webhook_allow_networks: str = ""  # the old name of OUTBOUND_ALLOW_NETWORKS, still read
    # Seconds to wait before each attempt: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 24 h.
    webhook_retry_schedule_s: str = "0,5,300,1800,7200,18000,36000,36000,86400"
    webhook_disable_after_s: Annotated[int, Field(ge=60, le=365 * 86400)] = 5 * 86400
    webhook_retention_days: Annotated[float, Field(gt=0, le=3650)] = 14
    # The retention job (appliance/inbox/retention_job.py): rows deleted per write
    # transaction, the pause between two, and how often the pass runs.
    retention_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    retention_batch_pause_ms: Annotated[int, Field(ge=0, le=60_000)] = 50
    retention_interval_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 86400
    # History sync (web engine): the worker's pause after each imported batch (500
    # messages), so the API and other writers get the CPU and the write lock between two.
    history_batch_pause_ms: Annotated[int, Field(ge=0, le=10_000)] = 20
    # ... and how much lower than the worker's the CPU priority (nice) of the thread that
    # maps history chunks is (engines/web/history.py; 0 = the same).
    history_map_nice: Annotated[int, Field(ge=0, le=19)] = 10
    # Scheduled backups by the worker (runbook/backup.md): a cron expression in UTC
    # ("" = none), the directory the archives go to, how many of them are kept.
    backup_schedule: str = ""
    backup_dir: str = ""
    backup_keep: Annotated[int, Field(ge=1, le=1000)] = 7
    trusted_proxies: str = ""  # comma-separated CIDRs whose X-Forwarded-For is believed
    # Direct TLS (runbook/tls.md): the API serves HTTPS with these PEM files; both or none.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    cors_origins: str = ""  # comma-separated origins allowed to call the API from a browser
    # Scripts: sandbox children of the scripts process (runs at once), and the writable
    # memory each child may use (RLIMIT_DATA: V8 heap, ArrayBuffers); 0: unlimited.
    scripts_sandboxes: Annotated[int, Field(ge=1, le=32)] = 2
    scripts_sandbox_memory_mb: Annotated[int, Field(ge=0, le=65536)] = 768
    # The worker's monitor (appliance/worker/monitor.py): how often it samples queue,
    # account, disk and dead-letter metrics and evaluates the built-in alerts; how long an
    # account that should be connected may stay unconnected; how long a condition must
    # stay good before its alert resolves (runbook/alerts.md, "Built-in alerts").
    monitor_interval_s: Annotated[float, Field(ge=0.2, le=3600)] = 15.0
    alert_account_disconnected_s: Annotated[float, Field(ge=0, le=30 * 86400)] = 600.0
    alert_clear_s: Annotated[float, Field(ge=0, le=86400)] = 120.0

    @field_validator("bind")
    @classmethod
    def _bind_is_ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IP address such as 127.0.0.1 or 0.0.0.0") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("trusted_proxies", "outbound_allow_networks", "webhook_allow_networks")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        for item in _split(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a CIDR such as 10.0.0.0/8") from None
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for item in _split(value):
            if item != "*" and not item.startswith(("http://", "https://")):
                raise ValueError(f"{item!r} is not an origin such as https://panel.example.com")
        return value

    @field_validator("backup_schedule")
    @classmethod
    def _backup_cron(cls, value: str) -> str:
        from croniter import croniter

        if value and not croniter.is_valid(value):
            raise ValueError("must be a cron expression such as '17 3 * * *' (03:17 UTC daily)")
        return value.strip()

    @model_validator(mode="after")
    def _backup_needs_dir(self) -> Settings:
        if self.backup_schedule and not self.backup_dir.startswith("/"):
            raise ValueError("BACKUP_SCHEDULE needs BACKUP_DIR, an absolute directory")
        return self

    @field_validator("web_client_factory")
    @classmethod
    def _factory_path(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError("must be module:callable, such as fake_whatsapp:client_factory")
        return value

    @model_validator(mode="after")
    def _test_factory_needs_test_mode(self) -> Settings:
        if self.web_client_factory and not self.enable_test_routes:
            raise ValueError(
                "WEB_CLIENT_FACTORY is for the test suite only; remove it "
                "(it needs ENABLE_TEST_ROUTES=true)"
            )
        return self

    @model_validator(mode="after")
    def _no_wildcard_cors_in_public(self) -> Settings:
        host = urlsplit(self.effective_public_url).hostname or ""
        # Without PUBLIC_URL a wildcard bind is reachable from anywhere, whatever the
        # derived URL says.
        wildcard_bind = not self.public_url and self.bind in ("0.0.0.0", "::")
        local = host in ("localhost", "127.0.0.1", "::1") and not wildcard_bind
        if "*" in _split(self.cors_origins) and not local:
            raise ValueError(
                "CORS_ORIGINS=* is refused unless PUBLIC_URL is on localhost; list the origins"
            )
        if self.session_idle_timeout_s > self.session_absolute_timeout_s:
            raise ValueError("SESSION_IDLE_TIMEOUT_S must not exceed SESSION_ABSOLUTE_TIMEOUT_S")
        return self

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(c, strict=False) for c in _split(self.trusted_proxies)]

    @model_validator(mode="after")
    def _one_outbound_allowlist(self) -> Settings:
        new, old = _networks(self.outbound_allow_networks), _networks(self.webhook_allow_networks)
        if new and old and set(new) != set(old):
            raise ValueError(
                "OUTBOUND_ALLOW_NETWORKS and its old name WEBHOOK_ALLOW_NETWORKS are both set, "
                "to different networks; keep only OUTBOUND_ALLOW_NETWORKS"
            )
        return self

    @property
    def allowed_private_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """OUTBOUND_ALLOW_NETWORKS, else its old name WEBHOOK_ALLOW_NETWORKS."""
        return _networks(self.outbound_allow_networks) or _networks(self.webhook_allow_networks)

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            steps = [float(v) for v in _split(value)]
        except ValueError:
            raise ValueError("must be comma-separated seconds such as 0,5,300") from None
        if not steps or len(steps) > 50 or any(s < 0 or s > 7 * 86400 for s in steps):
            raise ValueError("needs 1 to 50 waits, each between 0 and 604800 seconds")
        return value

    @property
    def webhook_retry_schedule(self) -> tuple[float, ...]:
        return tuple(float(v) for v in _split(self.webhook_retry_schedule_s))

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def sessions_dir(self) -> Path:
        """The web engine's linked-device sessions, one directory per account
        (``account_session_dir``)."""
        return self.data_dir / "sessions"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.rstrip("/") for o in _split(self.cors_origins)]

    @property
    def https(self) -> bool:
        return self.tls or self.effective_public_url.startswith("https://")

    @property
    def tls(self) -> bool:
        """The API serves HTTPS itself (TLS_CERT_FILE and TLS_KEY_FILE)."""
        return bool(self.tls_cert_file and self.tls_key_file)

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither")
        return self

    @property
    def ratelimit_db_path(self) -> Path:
        return self.run_dir / "ratelimit.db"

    # Derived locations: one place decides each path.
    @property
    def database_path(self) -> Path:
        return self.data_dir / "appliance.db"

    @property
    def worker_socket(self) -> Path:
        return self.run_dir / "worker.sock"

    @property
    def scripts_socket(self) -> Path:
        return self.run_dir / "scripts.sock"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    @property
    def effective_api_processes(self) -> int:
        return self.api_processes or max(2, os.cpu_count() or 1)

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def account_session_dir(sessions_dir: Path, account_id: str) -> Path:
    """The one place that names an account's session directory under ``sessions_dir``
    (``Settings.sessions_dir``): the web engine keeps neonize's files there, the worker
    removes it when the account logs out or is deleted."""
    return sessions_dir / account_id


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _networks(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in _split(value)]


KNOWN_KEYS = {name.upper() for name in Settings.model_fields}


def _describe(error: dict[str, object]) -> str:
    msg = str(error.get("msg", "invalid"))
    ctx = error.get("ctx")
    if isinstance(ctx, dict) and "expected" in ctx:
        return f"{msg} (allowed: {ctx['expected']})"
    return msg


def load_settings(paths: Paths, environ: dict[str, str] | None = None) -> Settings:
    """Read appliance.env, let the environment override known keys, validate.

    Raises ConfigError naming the file, the key and what is allowed.
    """
    environ = dict(os.environ if environ is None else environ)
    raw: dict[str, object] = {}
    source: dict[str, str] = {}
    env_file = paths.env_file
    if env_file.exists():
        for key, value in dotenv_values(env_file).items():
            if key.startswith("OTEL_"):  # OpenTelemetry's (appliance/observability/tracing.py)
                continue
            if key not in KNOWN_KEYS:
                allowed = ", ".join(sorted(KNOWN_KEYS))
                raise ConfigError(
                    f"{env_file}: unknown setting {key!r}. Known settings: {allowed}. "
                    f"Fix the spelling or remove the line."
                )
            raw[key.lower()] = value if value is not None else ""
            source[key.lower()] = str(env_file)
    for key in KNOWN_KEYS:
        env_key = ENV_PREFIX + key
        if env_key in environ:
            raw[key.lower()] = environ[env_key]
            source[key.lower()] = f"environment variable {env_key}"
    raw.setdefault("data_dir", str(paths.default_data_dir))
    raw.setdefault("log_dir", str(paths.default_log_dir))
    raw.setdefault("run_dir", str(paths.default_run_dir))
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across settings
            raise ConfigError(
                f"{env_file}: {_describe(dict(first))}. Edit it and restart."
            ) from None
        key = str(first["loc"][0])
        where = source.get(key, str(env_file))
        shown = raw.get(key, "<unset>")
        raise ConfigError(
            f"{where}: setting {key.upper()}={shown!r} is invalid: {_describe(dict(first))}. "
            f"Edit {env_file} and restart."
        ) from None
