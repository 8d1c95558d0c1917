"""Direct TLS: the certificate and key files checked before the API serves HTTPS.

Each problem names the file and the command that fixes it (runbook/tls.md). The key
is held like a secret file: a regular file, not a link, closed to group and others,
readable by the user running the appliance. The certificate must parse, match the
key, and not be expired.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config import Settings


def tls_problems(settings: Settings, *, uid: int | None = None) -> list[str]:
    if not settings.tls:
        return []
    uid = os.geteuid() if uid is None else uid
    cert_path, key_path = Path(settings.tls_cert_file), Path(settings.tls_key_file)
    problems: list[str] = []
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        return [f"TLS_CERT_FILE {cert_path} does not exist; fix the path in appliance.env"]
    except PermissionError:
        return [f"TLS_CERT_FILE {cert_path} is not readable; fix: chmod 644 {cert_path}"]
    except ValueError:
        return [f"TLS_CERT_FILE {cert_path} is not a PEM certificate"]
    try:
        st = key_path.lstat()
    except FileNotFoundError:
        return [f"TLS_KEY_FILE {key_path} does not exist; fix the path in appliance.env"]
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        return [
            f"TLS_KEY_FILE {key_path} is not a regular file; copy the key itself there: "
            f'cp --remove-destination "$(readlink -f {key_path})" {key_path}'
        ]
    if st.st_mode & 0o077:
        problems.append(
            f"TLS_KEY_FILE {key_path} has mode {stat.S_IMODE(st.st_mode):04o}, open to group "
            f"or others; fix: chmod 600 {key_path}"
        )
    if st.st_uid not in (uid, 0):
        problems.append(
            f"TLS_KEY_FILE {key_path} belongs to uid {st.st_uid}; fix: chown {uid} {key_path}"
        )
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except PermissionError:
        problems.append(
            f"TLS_KEY_FILE {key_path} is not readable by the appliance; fix: "
            f"chown {uid} {key_path} && chmod 600 {key_path}"
        )
        return problems
    except (ValueError, TypeError):
        problems.append(f"TLS_KEY_FILE {key_path} is not an unencrypted PEM private key")
        return problems
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != cert.public_key().public_bytes(der, public):
        problems.append(f"TLS_KEY_FILE {key_path} is not the key of {cert_path}")
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC):
        problems.append(
            f"the certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
            f"put a renewed one there, then: appliancectl restart api"
        )
    return problems


def exposure_warning(settings: Settings) -> str | None:
    """Plain HTTP on a non-loopback address without a trusted proxy in front."""
    if settings.tls or settings.trusted_proxies or settings.https:
        return None
    if settings.bind in ("127.0.0.1", "::1", "localhost"):
        return None
    return (
        f"the API listens on {settings.bind}:{settings.port} in plain HTTP: passwords and "
        f"session cookies cross the network readable. Serve HTTPS directly "
        f"(TLS_CERT_FILE, TLS_KEY_FILE) or put a TLS proxy in front and set "
        f"TRUSTED_PROXIES and PUBLIC_URL=https://... (runbook/tls.md)"
    )
