"""Unit tests for appliance/config.py: appliance.env, environment overrides, validation."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.config import KNOWN_KEYS, Paths, Settings, load_settings
from appliance.errors import ConfigError, StartupError


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(tmp_path)
    p.etc.mkdir(parents=True)
    return p


def _write_env(paths: Paths, text: str) -> Path:
    paths.env_file.write_text(text, encoding="utf-8")
    return paths.env_file


def _load(paths: Paths, env: str | None = None, **environ: str) -> Settings:
    if env is not None:
        _write_env(paths, env)
    return load_settings(paths, environ=dict(environ))


def _error(paths: Paths, env: str | None = None, **environ: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(paths, env, **environ)
    assert isinstance(info.value, StartupError)
    return str(info.value)


def test_paths_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = Paths(tmp_path)
    assert p.env_file == tmp_path / "etc/appliance/appliance.env"
    assert p.secrets_dir == tmp_path / "etc/appliance/secrets"
    assert p.venv == tmp_path / "opt/appliance/venv"
    assert p.default_data_dir == tmp_path / "var/lib/appliance"
    assert p.default_log_dir == tmp_path / "var/log/appliance"
    assert p.default_run_dir == tmp_path / "run/appliance"
    assert Paths.discover(tmp_path) == Paths(tmp_path.resolve())
    monkeypatch.setenv("APPLIANCE_ETC", str(tmp_path / "etc" / "appliance"))
    assert Paths.discover() == Paths(tmp_path.resolve())


def test_defaults_without_an_env_file(paths: Paths) -> None:
    s = _load(paths)
    assert s.bind == "127.0.0.1" and s.port == 8080
    assert s.public_url == ""
    assert s.effective_public_url == "http://127.0.0.1:8080"
    assert s.https is False
    assert s.data_dir == paths.default_data_dir
    assert s.log_dir == paths.default_log_dir
    assert s.run_dir == paths.default_run_dir
    assert s.database_path == paths.default_data_dir / "appliance.db"
    assert s.ratelimit_db_path == paths.default_run_dir / "ratelimit.db"
    assert s.session_idle_timeout_s == 8 * 3600
    assert s.session_absolute_timeout_s == 24 * 3600
    assert s.login_max_failures == 5 and s.login_window_s == 900
    assert s.login_max_failures_per_addr == 20
    assert s.api_rate_limit_per_min == 1200 and s.api_rate_limit_per_addr_per_min == 2400
    assert s.trusted_proxy_networks == [] and s.cors_origin_list == []
    assert s.enable_test_routes is False
    assert s.effective_api_processes >= 2


def test_defaults_with_an_empty_or_commented_env_file(paths: Paths) -> None:
    s = _load(paths, "# nothing set\n\n")
    assert s.port == 8080 and s.bind == "127.0.0.1"


def test_env_file_values_are_used(paths: Paths) -> None:
    s = _load(
        paths,
        "BIND=0.0.0.0\nPORT=9000\nPUBLIC_URL=https://gw.example.com/\nLOG_LEVEL=DEBUG\n"
        "ACCESS_LOG=false\nTRUSTED_PROXIES=10.0.0.0/8, 192.0.2.1\n"
        "CORS_ORIGINS=https://crm.example.com/,http://localhost:3000\n",
    )
    assert s.bind == "0.0.0.0" and s.port == 9000
    assert s.public_url == "https://gw.example.com"  # trailing slash removed
    assert s.https is True
    assert s.log_level == "DEBUG" and s.access_log is False
    assert s.trusted_proxy_networks == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
    ]
    assert s.cors_origin_list == ["https://crm.example.com", "http://localhost:3000"]


def test_effective_public_url_follows_bind_and_port(paths: Paths) -> None:
    assert _load(paths, "BIND=0.0.0.0\nPORT=81\n").effective_public_url == "http://127.0.0.1:81"
    assert _load(paths, "BIND=10.1.2.3\n").effective_public_url == "http://10.1.2.3:8080"


def test_unknown_key_names_key_and_file(paths: Paths) -> None:
    msg = _error(paths, "PORT=8080\nPROT=8081\n")
    assert "'PROT'" in msg
    assert str(paths.env_file) in msg
    assert "PORT" in msg  # the known settings are listed


def test_lowercase_key_is_unknown(paths: Paths) -> None:
    msg = _error(paths, "port=8080\n")
    assert "'port'" in msg and str(paths.env_file) in msg


@pytest.mark.parametrize("value", ["abc", "0", "65536", "-1", "80.5", ""])
def test_bad_port_names_port_and_file(paths: Paths, value: str) -> None:
    msg = _error(paths, f"PORT={value}\n")
    assert "PORT" in msg
    assert str(paths.env_file) in msg
    assert repr(value) in msg


def test_environment_override_wins(paths: Paths) -> None:
    s = _load(paths, "PORT=8080\nBIND=127.0.0.1\n", APPLIANCE_PORT="9090")
    assert s.port == 9090 and s.bind == "127.0.0.1"
    # Without an env file, too.
    paths.env_file.unlink()
    assert _load(paths, APPLIANCE_PORT="9091").port == 9091


def test_unprefixed_environment_is_ignored(paths: Paths) -> None:
    assert _load(paths, "PORT=8080\n", PORT="1234", BIND="nonsense").port == 8080


def test_invalid_environment_override_is_named_as_the_source(paths: Paths) -> None:
    msg = _error(paths, "PORT=8080\n", APPLIANCE_PORT="nope")
    assert "environment variable APPLIANCE_PORT" in msg
    assert "PORT='nope'" in msg
    assert str(paths.env_file) in msg  # where to make it permanent


def test_load_settings_reads_os_environ_by_default(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_PORT", "9191")
    assert load_settings(paths).port == 9191


@pytest.mark.parametrize("value", ["localhost", "999.1.1.1", "example.com", "10.0.0.0/8"])
def test_bad_bind(paths: Paths, value: str) -> None:
    msg = _error(paths, f"BIND={value}\n")
    assert "BIND" in msg and str(paths.env_file) in msg
    assert "IP address" in msg


def test_bind_ipv6_ok(paths: Paths) -> None:
    assert _load(paths, "BIND=::1\n").bind == "::1"


def test_trusted_proxies_invalid_cidr(paths: Paths) -> None:
    msg = _error(paths, "TRUSTED_PROXIES=10.0.0.0/8,not-a-net\n")
    assert "TRUSTED_PROXIES" in msg and "'not-a-net'" in msg and str(paths.env_file) in msg
    msg = _error(paths, "TRUSTED_PROXIES=10.0.0.0/33\n")
    assert "TRUSTED_PROXIES" in msg


def test_bad_public_url(paths: Paths) -> None:
    msg = _error(paths, "PUBLIC_URL=gw.example.com\n")
    assert "PUBLIC_URL" in msg and "http://" in msg


def test_bad_cors_origin(paths: Paths) -> None:
    msg = _error(paths, "CORS_ORIGINS=crm.example.com\n")
    assert "CORS_ORIGINS" in msg and "'crm.example.com'" in msg


def test_cors_wildcard_refused_with_public_https_url(paths: Paths) -> None:
    msg = _error(paths, "PUBLIC_URL=https://gw.example.com\nCORS_ORIGINS=*\n")
    assert "CORS_ORIGINS=*" in msg
    assert str(paths.env_file) in msg
    msg = _error(paths, "PUBLIC_URL=http://gw.example.com\nCORS_ORIGINS=https://a.example, *\n")
    assert "CORS_ORIGINS=*" in msg


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1", "http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]"]
)
def test_cors_wildcard_allowed_with_local_public_url(paths: Paths, url: str) -> None:
    s = _load(paths, f"PUBLIC_URL={url}\nCORS_ORIGINS=*\n")
    assert s.cors_origin_list == ["*"]


def test_cors_wildcard_allowed_by_default_local_bind(paths: Paths) -> None:
    assert _load(paths, "CORS_ORIGINS=*\n").cors_origin_list == ["*"]


def test_cors_wildcard_refused_when_bound_to_every_interface(paths: Paths) -> None:
    # No PUBLIC_URL, BIND=0.0.0.0: the API answers on the network, yet the derived
    # effective_public_url is http://127.0.0.1:PORT, which the localhost rule accepts.
    for bind in ("0.0.0.0", "::"):
        try:
            s = _load(paths, f"BIND={bind}\nCORS_ORIGINS=*\n")
        except ConfigError as exc:
            assert "CORS_ORIGINS=*" in str(exc)
            continue
        pytest.fail(
            f"BUG: BIND={bind} without PUBLIC_URL plus CORS_ORIGINS=* is accepted: "
            f"appliance/config.py Settings._no_wildcard_cors_in_public checks "
            f"effective_public_url ({s.effective_public_url}), which falls back to 127.0.0.1 "
            f"for a wildcard bind, so the API listens on every interface with CORS '*'"
        )


def test_cors_wildcard_refused_when_bound_to_a_network_address(paths: Paths) -> None:
    msg = _error(paths, "BIND=10.1.2.3\nCORS_ORIGINS=*\n")
    assert "CORS_ORIGINS=*" in msg


def test_session_idle_longer_than_absolute_refused(paths: Paths) -> None:
    msg = _error(paths, "SESSION_IDLE_TIMEOUT_S=90000\nSESSION_ABSOLUTE_TIMEOUT_S=86400\n")
    assert "SESSION_IDLE_TIMEOUT_S" in msg and "SESSION_ABSOLUTE_TIMEOUT_S" in msg
    assert str(paths.env_file) in msg
    # Equal is fine.
    s = _load(paths, "SESSION_IDLE_TIMEOUT_S=3600\nSESSION_ABSOLUTE_TIMEOUT_S=3600\n")
    assert s.session_idle_timeout_s == s.session_absolute_timeout_s == 3600


def test_literal_setting_names_allowed_values(paths: Paths) -> None:
    msg = _error(paths, "LOG_LEVEL=TRACE\n")
    assert "LOG_LEVEL" in msg and "allowed" in msg and "DEBUG" in msg


def test_known_keys_are_upper_case_field_names() -> None:
    assert set(KNOWN_KEYS) == {name.upper() for name in Settings.model_fields}
    assert {"PORT", "BIND", "CORS_ORIGINS", "TRUSTED_PROXIES"} <= KNOWN_KEYS


def test_settings_are_frozen(paths: Paths) -> None:
    s = _load(paths)
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]


def test_web_client_factory_is_refused_outside_test_mode(paths: Paths) -> None:
    msg = _error(paths, "WEB_CLIENT_FACTORY=fake_whatsapp:client_factory\n")
    assert "ENABLE_TEST_ROUTES" in msg and str(paths.env_file) in msg
    msg = _error(paths, "ENABLE_TEST_ROUTES=true\nWEB_CLIENT_FACTORY=not a path\n")
    assert "WEB_CLIENT_FACTORY" in msg and "module:callable" in msg
    s = _load(paths, "ENABLE_TEST_ROUTES=true\nWEB_CLIENT_FACTORY=fake_whatsapp:client_factory\n")
    assert s.web_client_factory == "fake_whatsapp:client_factory"


def test_outbound_allowlist_and_its_old_name(paths: Paths) -> None:
    net = ipaddress.ip_network
    assert _load(paths, "").allowed_private_networks == []
    new = _load(paths, "OUTBOUND_ALLOW_NETWORKS=127.0.0.1/32, 10.1.0.0/16\n")
    assert new.allowed_private_networks == [net("127.0.0.1/32"), net("10.1.0.0/16")]
    # The old name keeps working, in the file and as an environment override.
    old = _load(paths, "WEBHOOK_ALLOW_NETWORKS=192.168.5.0/24\n")
    assert old.allowed_private_networks == [net("192.168.5.0/24")]
    env = _load(paths, "", APPLIANCE_WEBHOOK_ALLOW_NETWORKS="127.0.0.1/32")
    assert env.allowed_private_networks == [net("127.0.0.1/32")]
    # Both names with the same networks is harmless; different networks are refused.
    same = _load(paths, "OUTBOUND_ALLOW_NETWORKS=127.0.0.1/32\nWEBHOOK_ALLOW_NETWORKS=127.0.0.1\n")
    assert same.allowed_private_networks == [net("127.0.0.1/32")]
    msg = _error(paths, "OUTBOUND_ALLOW_NETWORKS=127.0.0.1/32\nWEBHOOK_ALLOW_NETWORKS=10.0.0.0/8\n")
    assert "OUTBOUND_ALLOW_NETWORKS" in msg and "WEBHOOK_ALLOW_NETWORKS" in msg
    assert "keep only OUTBOUND_ALLOW_NETWORKS" in msg and str(paths.env_file) in msg
    msg = _error(paths, "OUTBOUND_ALLOW_NETWORKS=10.0.0.0/33\n")
    assert "OUTBOUND_ALLOW_NETWORKS" in msg and "CIDR" in msg
