"""Direct TLS settings and the checks of the certificate and key files
(appliance/ops/tls.py), with a self-signed certificate made here; HSTS and Secure
cookies follow HTTPS. Serving HTTPS for real: tests/integration/test_tls.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.config import Paths, Settings, load_settings
from appliance.errors import ConfigError
from appliance.ops.tls import exposure_warning, tls_problems
from tests.unit.test_access_http import _app


def make_cert(directory: Path, *, days: int = 30, name: str = "tls") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def _settings(tmp_path: Path, env: str) -> Settings:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text(env, encoding="utf-8")
    return load_settings(paths, environ={})


def test_good_files_pass_and_https_follows(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    settings = _settings(tmp_path, f"TLS_CERT_FILE={cert}\nTLS_KEY_FILE={key}\n")
    assert settings.tls and settings.https
    assert settings.effective_public_url.startswith("https://")
    assert tls_problems(settings) == []
    assert exposure_warning(settings) is None


def test_each_bad_file_is_named_with_its_fix(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    other_cert, _ = make_cert(tmp_path, name="other")
    env = f"TLS_CERT_FILE={cert}\nTLS_KEY_FILE={key}\n"
    os.chmod(key, 0o644)
    [problem] = tls_problems(_settings(tmp_path, env))
    assert str(key) in problem and f"chmod 600 {key}" in problem and "0644" in problem
    os.chmod(key, 0o600)
    mismatch = _settings(tmp_path, f"TLS_CERT_FILE={other_cert}\nTLS_KEY_FILE={key}\n")
    assert tls_problems(mismatch) == [f"TLS_KEY_FILE {key} is not the key of {other_cert}"]
    link = tmp_path / "link.key"
    link.symlink_to(key)
    linked = _settings(tmp_path, f"TLS_CERT_FILE={cert}\nTLS_KEY_FILE={link}\n")
    assert "not a regular file" in tls_problems(linked)[0]
    missing = _settings(tmp_path, f"TLS_CERT_FILE={tmp_path / 'no.crt'}\nTLS_KEY_FILE={key}\n")
    assert "does not exist" in tls_problems(missing)[0]
    expired_cert, expired_key = make_cert(tmp_path, days=-1, name="old")
    expired = _settings(tmp_path, f"TLS_CERT_FILE={expired_cert}\nTLS_KEY_FILE={expired_key}\n")
    assert "expired" in tls_problems(expired)[0]
    assert "appliancectl restart api" in tls_problems(expired)[0]


def test_cert_and_key_go_together(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    with pytest.raises(ConfigError, match="TLS_CERT_FILE and TLS_KEY_FILE go together"):
        _settings(tmp_path, f"TLS_CERT_FILE={cert}\n")


def test_plain_http_off_loopback_is_warned_about(tmp_path: Path) -> None:
    warning = exposure_warning(_settings(tmp_path, "BIND=0.0.0.0\n"))
    assert warning is not None and "runbook/tls.md" in warning
    assert exposure_warning(_settings(tmp_path, "BIND=127.0.0.1\n")) is None
    proxied = _settings(tmp_path, "BIND=0.0.0.0\nTRUSTED_PROXIES=10.0.0.5/32\n")
    assert exposure_warning(proxied) is None


def test_hsts_only_when_https(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)

    async def hsts(env: str, where: Path) -> str | None:
        app = _app(where, env)
        response = await app.test_client().get("/healthz")
        return response.headers.get("Strict-Transport-Security")

    assert asyncio.run(hsts("", tmp_path / "plain")) is None
    tls_env = f"TLS_CERT_FILE={cert}\nTLS_KEY_FILE={key}\n"
    assert asyncio.run(hsts(tls_env, tmp_path / "tls")) == "max-age=31536000"
    proxy_env = "PUBLIC_URL=https://wa.example.com\nTRUSTED_PROXIES=127.0.0.1/32\n"
    assert asyncio.run(hsts(proxy_env, tmp_path / "proxy")) == "max-age=31536000"
