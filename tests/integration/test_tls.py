"""Direct TLS on a real installation: install.sh --tls-cert/--tls-key with a
self-signed certificate made here, HTTPS on 127.0.0.1 with HSTS and Secure session
cookies, and a renewed certificate picked up by `appliancectl restart api` without a
refused connection."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO, Appliance, admin_password, free_port
from tests.unit.test_tls import make_cert

pytestmark = pytest.mark.integration


def _peer_cert(port: int) -> bytes:
    ctx = ssl._create_unverified_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def _der(cert_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert_path.read_text())


def _probe(port: int, stop: threading.Event, tally: dict[str, int], lock: threading.Lock):
    """Fresh HTTPS connections to /healthz until stopped (bounded: count and time)."""
    ctx = ssl._create_unverified_context()  # the certificate changes under the probe
    deadline = time.monotonic() + 600
    for _ in range(50_000):
        if stop.is_set() or time.monotonic() > deadline:
            return
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
        try:
            conn.request("GET", "/healthz", headers={"Connection": "close"})
            status = conn.getresponse().status
            key = "ok" if status == 200 else f"status_{status}"
        except ConnectionRefusedError:
            key = "refused"
        except OSError as exc:
            key = f"error_{type(exc).__name__}"
        finally:
            conn.close()
        with lock:
            tally[key] = tally.get(key, 0) + 1


@pytest.mark.timeout(3000)
def test_https_directly_with_a_certificate_reload(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    prefix = Path(tmp_path_factory.mktemp("tls"))
    cert, key = make_cert(tmp_path)
    port = free_port()
    app = Appliance(prefix, port)
    try:
        out = _install(
            prefix,
            "--port",
            str(port),
            "--no-start",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        )
        assert "HTTPS: certificate" in out.stdout
        tls_dir = prefix / "etc/appliance/tls"
        assert (tls_dir / "key.pem").stat().st_mode & 0o777 == 0o600
        with (prefix / "etc/appliance/appliance.env").open("a") as fh:
            fh.write("API_PROCESSES=2\nAPI_GRACEFUL_TIMEOUT_S=10\n")
        app.ctl("start", "--wait", "90")
        verify = ssl.create_default_context(cafile=str(cert))
        base = f"https://127.0.0.1:{port}"
        with httpx.Client(base_url=base, verify=verify, timeout=15) as c:
            health = c.get("/healthz")
            assert health.status_code == 200
            assert health.headers["Strict-Transport-Security"] == "max-age=31536000"
            assert c.get("/readyz").status_code == 200
            login = c.post(
                "/auth/login", json={"username": "admin", "password": admin_password(app)}
            )
            assert login.status_code == 200, login.text
            cookie = login.headers["set-cookie"]
            assert "secure" in cookie.lower() and "httponly" in cookie.lower()
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the HTTPS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
        assert "OK TLS: HTTPS" in app.ctl("check").stdout
        assert _peer_cert(port) == _der(cert)

        # Renewal: new files in place, then a rolling restart of the API processes.
        renewed, renewed_key = make_cert(tmp_path, name="renewed")
        shutil.copyfile(renewed, tls_dir / "cert.pem")
        shutil.copyfile(renewed_key, tls_dir / "key.pem.new")
        (tls_dir / "key.pem.new").chmod(0o600)
        (tls_dir / "key.pem.new").replace(tls_dir / "key.pem")
        stop, lock, tally = threading.Event(), threading.Lock(), {}
        probes = [threading.Thread(target=_probe, args=(port, stop, tally, lock)) for _ in range(2)]
        for probe in probes:
            probe.start()
        try:
            time.sleep(1)
            app.ctl("restart", "api", "--wait", "90", timeout=300)
            time.sleep(1)
        finally:
            stop.set()
            for probe in probes:
                probe.join(timeout=60)
        assert tally.get("ok", 0) > 0, tally
        assert set(tally) == {"ok"}, tally  # nothing refused, no error, no 5xx
        assert _peer_cert(port) == _der(renewed)
        assert _peer_cert(port) == _der(renewed)  # both API processes: fresh connections
    finally:
        subprocess.run(
            [str(prefix / "opt/appliance/venv/bin/appliancectl"), "--prefix", str(prefix), "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(prefix, ignore_errors=True)


def _install(prefix: Path, *args: str) -> subprocess.CompletedProcess:
    """install.sh, with more time than conftest's run_install: on this loaded machine
    a first install (a venv, every locked dependency) takes most of ten minutes."""
    result = subprocess.run(
        ["bash", str(REPO / "install.sh"), "--prefix", str(prefix), *args],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if result.returncode != 0:
        raise AssertionError(f"install.sh failed:\n{result.stdout}\n{result.stderr}")
    return result
