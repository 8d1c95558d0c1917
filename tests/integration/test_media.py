"""Media upload and download against the real installation (two API processes behind
supervisord, Hypercorn, SQLite): the per-route body limit, sniffing, grants."""

from __future__ import annotations

import hashlib
import random
import struct
import zlib
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key

pytestmark = pytest.mark.integration

ACCOUNT = "media_a"
OTHER = "media_b"
DEFAULT_MEDIA_MAX_BYTES = 16 * 1024 * 1024


def tiny_png() -> bytes:
    """A valid 1x1 RGB PNG."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _standard_error(response: httpx.Response) -> dict:
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert body.get("requestId") == response.headers["X-Request-ID"], body
    return body


@pytest.fixture(scope="module")
def admin(appliance: Appliance) -> Iterator[httpx.Client]:
    with bearer(appliance, new_api_key(appliance, "media-admin", "admin")) as c:
        for account in (ACCOUNT, OTHER):
            response = c.post(
                "/api/accounts", json={"id": account, "name": account, "engine": "sandbox"}
            )
            assert response.status_code == 201, response.text
        yield c


@pytest.fixture(scope="module")
def outsider(appliance: Appliance, admin: httpx.Client) -> Iterator[httpx.Client]:
    """An agent granted only the other account."""
    with bearer(appliance, new_api_key(appliance, "media-outsider", "agent", OTHER)) as c:
        yield c


def test_upload_and_download_a_png(admin: httpx.Client) -> None:
    png = tiny_png()
    response = admin.post(
        f"/api/accounts/{ACCOUNT}/media",
        content=png,
        headers={"Content-Type": "application/octet-stream"},
        params={"filename": "pixel.png"},
    )
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["id"].startswith("med_")
    assert out["content_type"] == "image/png"
    assert (out["kind"], out["filename"]) == ("image", "pixel.png")
    assert out["size"] == len(png)
    assert out["sha256"] == hashlib.sha256(png).hexdigest()

    got = admin.get(f"/api/accounts/{ACCOUNT}/media/{out['id']}")
    assert got.status_code == 200
    assert got.content == png
    assert got.headers["Content-Type"] == "image/png"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert got.headers["Content-Disposition"].startswith("inline;")
    assert "no-store" in got.headers["Cache-Control"]


def test_multipart_upload_of_a_document(admin: httpx.Client) -> None:
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
    response = admin.post(
        f"/api/accounts/{ACCOUNT}/media",
        files={"file": ("teklif.pdf", pdf, "image/png")},  # the declared type is ignored
    )
    assert response.status_code == 201, response.text
    out = response.json()
    assert (out["content_type"], out["kind"], out["filename"]) == (
        "application/pdf",
        "document",
        "teklif.pdf",
    )
    got = admin.get(f"/api/accounts/{ACCOUNT}/media/{out['id']}")
    assert got.content == pdf
    assert got.headers["Content-Type"] == "application/pdf"
    assert got.headers["Content-Disposition"].startswith('attachment; filename="teklif.pdf"')


def test_uploads_above_the_app_wide_body_limit_are_taken(admin: httpx.Client) -> None:
    # MAX_BODY_BYTES (1 MiB) applies elsewhere; this route takes up to MEDIA_MAX_BYTES.
    pdf = b"%PDF-1.4\n" + b"x" * (3 * 1024 * 1024)
    response = admin.post(f"/api/accounts/{ACCOUNT}/media", content=pdf)
    assert response.status_code == 201, response.text
    got = admin.get(f"/api/accounts/{ACCOUNT}/media/{response.json()['id']}")
    assert got.content == pdf


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversize_upload_is_a_json_413(admin: httpx.Client, chunked: bool) -> None:
    size = DEFAULT_MEDIA_MAX_BYTES + 1
    data = b"%PDF-1.4\n" + b"x" * (size - 9)
    assert len(data) == size
    if chunked:

        def stream() -> Iterator[bytes]:
            for start in range(0, size, 256 * 1024):
                yield data[start : start + 256 * 1024]

        response = admin.post(f"/api/accounts/{ACCOUNT}/media", content=stream(), timeout=60)
    else:
        response = admin.post(f"/api/accounts/{ACCOUNT}/media", content=data, timeout=60)
    assert response.status_code == 413, response.text
    assert str(DEFAULT_MEDIA_MAX_BYTES) in _standard_error(response)["error"]


def test_far_too_large_declared_upload_is_refused(admin: httpx.Client) -> None:
    # Far past the limit the body is not drained: a client may then see the connection
    # close instead of the 413; either is a refusal.
    size = 3 * DEFAULT_MEDIA_MAX_BYTES
    try:
        response = admin.post(
            f"/api/accounts/{ACCOUNT}/media", content=b"%PDF-" + b"x" * (size - 5), timeout=60
        )
    except httpx.TransportError:
        return
    assert response.status_code == 413
    _standard_error(response)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 512, "executable"),
        (random.Random(7).randbytes(8192), "not a known format"),
    ],
    ids=["exe", "random"],
)
def test_unsupported_upload_is_415(admin: httpx.Client, data: bytes, why: str) -> None:
    response = admin.post(
        f"/api/accounts/{ACCOUNT}/media",
        content=data,
        headers={"Content-Type": "image/png"},
        params={"filename": "photo.png"},
    )
    assert response.status_code == 415, response.text
    assert why in _standard_error(response)["error"]


def test_account_outside_the_grant_is_404(admin: httpx.Client, outsider: httpx.Client) -> None:
    response = admin.post(f"/api/accounts/{ACCOUNT}/media", content=tiny_png())
    assert response.status_code == 201, response.text
    media_id = response.json()["id"]

    upload = outsider.post(f"/api/accounts/{ACCOUNT}/media", content=tiny_png())
    assert upload.status_code == 404
    download = outsider.get(f"/api/accounts/{ACCOUNT}/media/{media_id}")
    assert download.status_code == 404
    unknown = outsider.get(f"/api/accounts/no_such_account/media/{media_id}")
    assert unknown.status_code == 404
    assert _standard_error(download)["error"] == _standard_error(unknown)["error"]
    # Granted account, but the id belongs to another account: 404 too.
    assert outsider.get(f"/api/accounts/{OTHER}/media/{media_id}").status_code == 404
    assert admin.get(f"/api/accounts/{OTHER}/media/{media_id}").status_code == 404
    # And the outsider may use its own account.
    own = outsider.post(f"/api/accounts/{OTHER}/media", content=tiny_png())
    assert own.status_code == 201, own.text


def test_media_routes_are_in_the_spec(appliance: Appliance) -> None:
    with appliance.client() as c:
        spec = c.get("/openapi.json").json()
    assert spec["paths"]["/api/accounts/{account}/media"]["post"]["x-access"] == "messages.send"
    download = spec["paths"]["/api/accounts/{account}/media/{media_id}"]["get"]
    assert download["x-access"] == "messages.read"
