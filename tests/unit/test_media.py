"""The media store (appliance/messaging/media.py) and the media routes, in process.

Route tests drive the in-process app with Quart's test client against a migrated
database in a temp dir: no server, no worker, no network. The one fetch-by-URL test
talks to a server on 127.0.0.1 that its settings allowlist.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, request

from appliance.api.access import public
from appliance.api.app import create_app
from appliance.api.routes.media import UploadBody, content_disposition
from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.config import Paths, Settings, load_settings
from appliance.db.database import Database
from appliance.db.migrate import migrate
from appliance.errors import InvalidInput, NotFound
from appliance.messaging import media
from appliance.messaging import store as messaging_store
from appliance.messaging.media import TooLarge, UnsupportedMedia, kind_for, sniff
from appliance.net.ssrf import RefusedAddress
from appliance.secrets import Secrets
from tests.unit.conftest import key_owner

# -- samples -----------------------------------------------------------------------------


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


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    box = b"ftyp" + major + b"\x00\x00\x02\x00" + b"".join(compatible)
    return struct.pack(">I", len(box) + 4) + box + b"\x00\x00\x00\x08free"


def office_zip(content_types: str | None, *names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if content_types is not None:
            archive.writestr(
                "[Content_Types].xml",
                '<?xml version="1.0"?><Types><Override PartName="/main.xml" '
                f'ContentType="application/vnd.{content_types}"/></Types>',
            )
        for name in names:
            archive.writestr(name, "<xml/>")
    return buffer.getvalue()


def ole2(stream: str) -> bytes:
    return (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
        + b"\x00" * 504
        + stream.encode("utf-16-le")
        + (b"\x00" * 64)
    )


def ogg(codec_header: bytes) -> bytes:
    return b"OggS\x00\x02" + b"\x00" * 20 + b"\x01\x13" + codec_header + b"\x00" * 32


DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"

SNIFFED = [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 32, "image/jpeg", "image"),
    (tiny_png(), "image/png", "image"),
    (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", "image"),
    (b"GIF87a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", "image"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 24, "image/webp", "image"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "application/pdf", "document"),
    (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "video/mp4", "video"),
    (ftyp(b"mp42", b"mp42", b"isom"), "video/mp4", "video"),
    (ftyp(b"XYZW", b"mp41"), "video/mp4", "video"),
    (ftyp(b"3gp4", b"3gp4", b"isom"), "video/3gpp", "video"),
    (ftyp(b"3gp5"), "video/3gpp", "video"),
    (ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"), "audio/mp4", "audio"),
    (ogg(b"OpusHead\x01\x02"), "audio/ogg", "audio"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 32, "audio/mpeg", "audio"),
    (b"\xff\xfb\x90\x64" + b"\x00" * 32, "audio/mpeg", "audio"),
    (b"\xff\xf3\x48\xc4" + b"\x00" * 32, "audio/mpeg", "audio"),
    (b"\xff\xf1\x50\x80\x02\x1f\xfc" + b"\x00" * 32, "audio/aac", "audio"),
    (b"#!AMR\n\x3c" + b"\x00" * 32, "audio/amr", "audio"),
    (
        office_zip("openxmlformats-officedocument.wordprocessingml.document.main+xml"),
        DOCX,
        "document",
    ),
    (office_zip("openxmlformats-officedocument.spreadsheetml.sheet.main+xml"), XLSX, "document"),
    (
        office_zip("openxmlformats-officedocument.presentationml.presentation.main+xml"),
        PPTX,
        "document",
    ),
    (office_zip(None, "word/document.xml"), DOCX, "document"),
    (ole2("WordDocument"), "application/msword", "document"),
    (ole2("Workbook"), "application/vnd.ms-excel", "document"),
    (ole2("PowerPoint Document"), "application/vnd.ms-powerpoint", "document"),
    ("Merhaba d\u00fcnya, \u00e7al\u0131\u015f\u0131yor mu?\n".encode(), "text/plain", "document"),
    (b"name,phone\r\nAyse,+905551112233\r\n", "text/plain", "document"),
    (b"\xef\xbb\xbfwith a BOM\tand a tab\n", "text/plain", "document"),
]

REFUSED = [
    (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + b"\x00" * 64, "Windows executable"),
    (b"\x7fELF\x02\x01\x01" + b"\x00" * 64, "ELF executable"),
    (random.Random(20240601).randbytes(4096), "not a known format"),
    (bytes(range(256)) * 4, "not a known format"),
    ("UTF-16 text".encode("utf-16"), "not a known format"),
    (b"text with a bell \x07 in it", "not a known format"),
    (b"text with a NUL \x00 in it", "not a known format"),
    (ftyp(b"qt  ", b"qt  "), "QuickTime"),
    (ftyp(b"heic", b"mif1", b"heic"), "HEIF"),
    (ftyp(b"XYZW", b"XYZW"), "ISO media"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 24, "WAV"),
    (ogg(b"\x01vorbis\x00\x00"), "without Opus"),
    (b"#!AMR-WB\n" + b"\x00" * 16, "AMR-WB"),
    (office_zip(None, "readme.txt"), "ZIP archive"),
    (office_zip(None, "mimetype", "META-INF/manifest.xml"), "OpenDocument"),
    (office_zip("ms-word.document.macroEnabled.main+xml"), "macro-enabled"),
    (b"PK\x03\x04 not really a zip", "damaged ZIP"),
    (ole2("__substg1.0_0037001F"), "OLE2"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 32, "gzip"),
    (b"Rar!\x1a\x07\x01\x00" + b"\x00" * 32, "RAR"),
    (b"BM" + b"\x00" * 64, "BMP"),
]


@pytest.mark.parametrize(("data", "content_type", "kind"), SNIFFED)
def test_sniffing(data: bytes, content_type: str, kind: str) -> None:
    assert sniff(data) == content_type
    assert kind_for(content_type) == kind


@pytest.mark.parametrize(("data", "why"), REFUSED)
def test_unsupported_types_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(UnsupportedMedia) as info:
        sniff(data)
    assert why in str(info.value)
    assert info.value.http_status == 415


def test_kind_for() -> None:
    assert kind_for("image/png") == "image"
    assert kind_for("image/jpeg; charset=binary") == "image"
    assert kind_for("video/3gpp") == "video"
    assert kind_for("audio/ogg") == "audio"
    assert kind_for("application/pdf") == "document"
    assert kind_for("text/plain") == "document"
    assert kind_for("application/octet-stream") == "document"


def test_clean_filename() -> None:
    assert media.clean_filename("../../etc/passwd") == "passwd"
    assert media.clean_filename("C:\\Users\\ayse\\rapor.pdf") == "rapor.pdf"
    assert media.clean_filename("a\r\nb\x00c.txt") == "abc.txt"
    assert media.clean_filename("..") is None
    assert media.clean_filename("") is None
    assert media.clean_filename(None) is None
    assert len(media.clean_filename("x" * 1000) or "") == 255


def test_content_disposition() -> None:
    assert content_disposition("image", "a.png") == (
        "inline; filename=\"a.png\"; filename*=UTF-8''a.png"
    )
    value = content_disposition("document", 'rapor "2024" ş.pdf')
    assert value.startswith('attachment; filename="rapor _2024_ s.pdf"; ')
    assert value.endswith("filename*=UTF-8''rapor%20%222024%22%20%C5%9F.pdf")
    value.encode("latin-1")  # a header value must be


# -- the store ---------------------------------------------------------------------------


def make_settings(tmp_path: Path, **env: str) -> Settings:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    settings = load_settings(paths, environ={f"APPLIANCE_{k}": v for k, v in env.items()})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


async def add_account(db: Database, account_id: str) -> None:
    async with db.write() as conn:
        await messaging_store.create_account(
            conn,
            account_id=account_id,
            name=account_id,
            engine="sandbox",
            engine_settings={},
            settings={},
            now=time.time(),
        )


@asynccontextmanager
async def opened(settings: Settings, *accounts: str) -> AsyncIterator[Database]:
    db = await Database.open(settings.database_path)
    try:
        await migrate(db.writer)
        for account in accounts:
            await add_account(db, account)
        yield db
    finally:
        await db.close()


def test_save_writes_the_file_atomically_and_the_row(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    data = tiny_png()

    async def body() -> None:
        async with opened(settings, "acme") as db:
            record = await media.save_media(
                db, settings, "acme", data, filename="../logo.png", source_url=None
            )
            assert record.id.startswith("med_")
            assert record.content_type == "image/png"
            assert record.kind == "image"
            assert record.size == len(data)
            assert record.sha256 == hashlib.sha256(data).hexdigest()
            assert record.filename == "logo.png"
            account_dir = settings.media_dir / "acme"
            path = account_dir / record.id
            assert path.read_bytes() == data
            assert stat.S_IMODE(path.stat().st_mode) == 0o640
            assert stat.S_IMODE(account_dir.stat().st_mode) == 0o750
            assert stat.S_IMODE(settings.media_dir.stat().st_mode) == 0o750
            assert sorted(p.name for p in account_dir.iterdir()) == [record.id]  # no temp files
            row = await db.fetchone("SELECT * FROM media WHERE id = ?", (record.id,))
            assert row is not None
            assert (row["account_id"], row["content_type"], row["size"]) == (
                "acme",
                "image/png",
                len(data),
            )
            assert row["sha256"] == record.sha256
            opened_record, opened_path = await media.open_media(db, settings, "acme", record.id)
            assert opened_record == record
            assert opened_path == path

    asyncio.run(body())


def test_the_declared_type_is_not_trusted(tmp_path: Path) -> None:
    # There is no declared type to pass: only the bytes count. A PNG named .pdf stays a PNG.
    settings = make_settings(tmp_path)

    async def body() -> None:
        async with opened(settings, "acme") as db:
            record = await media.save_media(db, settings, "acme", tiny_png(), filename="x.pdf")
            assert record.content_type == "image/png"

    asyncio.run(body())


def _leftovers(settings: Settings) -> list[str]:
    root = settings.media_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_oversize_is_413_and_stores_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, MEDIA_MAX_BYTES="2048")

    async def body() -> None:
        async with opened(settings, "acme") as db:
            ok = b"%PDF-1.4\n" + b"x" * (2048 - 9)
            await media.save_media(db, settings, "acme", ok)
            with pytest.raises(TooLarge) as info:
                await media.save_media(db, settings, "acme", ok + b"x")
            assert info.value.http_status == 413
            assert "2048" in str(info.value)
            assert await db.scalar("SELECT COUNT(*) FROM media") == 1

    asyncio.run(body())
    assert len(_leftovers(settings)) == 1


def test_unsupported_is_415_and_stores_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def body() -> None:
        async with opened(settings, "acme") as db:
            with pytest.raises(UnsupportedMedia):
                await media.save_media(db, settings, "acme", b"MZ" + b"\x00" * 100)
            with pytest.raises(InvalidInput):
                await media.save_media(db, settings, "acme", b"")
            assert await db.scalar("SELECT COUNT(*) FROM media") == 0

    asyncio.run(body())
    assert not settings.media_dir.exists() or _leftovers(settings) == []


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path)

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    async def body() -> None:
        async with opened(settings, "acme") as db:
            monkeypatch.setattr(media.os, "replace", broken_replace)
            with pytest.raises(OSError, match="disk full"):
                await media.save_media(db, settings, "acme", tiny_png())
            monkeypatch.undo()
            assert await db.scalar("SELECT COUNT(*) FROM media") == 0

    asyncio.run(body())
    assert _leftovers(settings) == []


def test_a_failed_insert_removes_the_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def body() -> None:
        async with opened(settings) as db:  # the account does not exist: foreign key fails
            with pytest.raises(NotFound):
                await media.save_media(db, settings, "ghost", tiny_png())
            assert await db.scalar("SELECT COUNT(*) FROM media") == 0

    asyncio.run(body())
    assert _leftovers(settings) == []


def test_open_media_of_another_account_is_not_found(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def body() -> None:
        async with opened(settings, "acme", "other") as db:
            record = await media.save_media(db, settings, "acme", tiny_png())
            for account, media_id in (
                ("other", record.id),
                ("acme", "med_doesnotexist123"),
                ("acme", "../acme/" + record.id),
                ("acme", record.id + "/.."),
                ("../acme", record.id),
                ("acme", "not-a-media-id"),
            ):
                with pytest.raises(NotFound):
                    await media.open_media(db, settings, account, media_id)
            # A row whose file is gone is not found either.
            (settings.media_dir / "acme" / record.id).unlink()
            with pytest.raises(NotFound):
                await media.open_media(db, settings, "acme", record.id)

    asyncio.run(body())


def test_delete_account_media(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def body() -> None:
        async with opened(settings, "acme", "other") as db:
            await media.save_media(db, settings, "acme", tiny_png())
            kept = await media.save_media(db, settings, "other", tiny_png())
            await media.delete_account_media(settings, "acme")
            await media.delete_account_media(settings, "never-had-media")
            assert not (settings.media_dir / "acme").exists()
            assert [p.name for p in settings.media_dir.iterdir()] == ["other"]
            await media.open_media(db, settings, "other", kept.id)

    asyncio.run(body())


def test_sweep_orphans(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def body() -> None:
        async with opened(settings, "acme") as db:
            kept = await media.save_media(db, settings, "acme", tiny_png())
            account_dir = settings.media_dir / "acme"
            old = time.time() - 7200
            orphan = account_dir / "med_orphanfile12345"
            temp = account_dir / ".upload-abc123"
            fresh = account_dir / "med_freshorphan1234"
            leftover = settings.media_dir / ".deleted-gone-1234"
            leftover.mkdir()
            (leftover / "med_x").write_bytes(b"x")
            for path in (orphan, temp, fresh):
                path.write_bytes(b"x")
            for path in (orphan, temp, leftover, account_dir / kept.id):
                os.utime(path, (old, old))
            assert await media.sweep_orphans(db, settings, older_than_s=3600) == 3
            assert sorted(p.name for p in account_dir.iterdir()) == sorted([kept.id, fresh.name])
            assert not leftover.exists()

    asyncio.run(body())


def test_save_media_from_url_goes_through_the_guard(tmp_path: Path) -> None:
    png = tiny_png()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nConnection: close\r\n"
            + f"Content-Length: {len(png)}\r\n\r\n".encode()
            + png
        )
        await writer.drain()
        writer.close()

    async def body() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/files/logo.png?v=2"
        try:
            allowed = make_settings(tmp_path / "a", WEBHOOK_ALLOW_NETWORKS="127.0.0.1/32")
            async with opened(allowed, "acme") as db:
                record = await media.save_media_from_url(db, allowed, "acme", url)
                assert (record.content_type, record.filename) == ("image/png", "logo.png")
                assert record.source_url == url
            closed = make_settings(tmp_path / "b")
            async with opened(closed, "acme") as db:
                with pytest.raises(RefusedAddress):
                    await media.save_media_from_url(db, closed, "acme", url)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(body())


# -- the upload body ---------------------------------------------------------------------


def test_upload_body_drains_an_oversized_upload_before_failing() -> None:
    async def body() -> None:
        upload = UploadBody(None, limit=10, drain_limit=100)
        upload.append(b"x" * 8)
        upload.append(b"x" * 8)  # over the limit: dropped, not yet an error
        assert upload.over and upload._must_raise is None
        waiting = asyncio.ensure_future(upload)
        await asyncio.sleep(0)
        assert not waiting.done()  # still reading the client's bytes
        upload.append(b"x" * 8)
        upload.set_complete()
        with pytest.raises(TooLarge):
            await waiting

        cut = UploadBody(None, limit=10, drain_limit=20)
        cut.append(b"x" * 25)  # past the drain limit: fails at once
        with pytest.raises(TooLarge):
            await cut

        declared = UploadBody(1000, limit=10, drain_limit=20)
        with pytest.raises(TooLarge):
            await declared

        fine = UploadBody(10, limit=10, drain_limit=20)
        fine.append(b"0123456789")
        fine.set_complete()
        assert await fine == b"0123456789"

    asyncio.run(body())


# -- the routes, in process --------------------------------------------------------------


@dataclass
class Api:
    app: Quart
    db: Database
    settings: Settings
    acme_key: str  # agent granted acme
    other_key: str  # agent granted other only
    reader_key: str  # an agent is allowed to read and send; a "no-send" role does not exist

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def api(tmp_path: Path, **env: str) -> AsyncIterator[Api]:
    settings = make_settings(tmp_path, **env)
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    app = create_app(settings, secrets)

    @app.post("/api/_probe")
    @public
    async def _probe() -> dict[str, int]:
        return {"size": len(await request.get_data())}

    async with opened(settings, "acme", "other") as db:
        state_of(app).db = db
        keys = []
        for name, accounts in (("acme", ["acme"]), ("other", ["other"]), ("reader", ["acme"])):
            async with db.write() as conn:
                _, key, _ = await auth_store.create_api_key(
                    conn,
                    name=name,
                    role=Role.AGENT,
                    all_accounts=False,
                    accounts=accounts,
                    created_by="test",
                    owner_user_id=await key_owner(conn),
                    now=time.time(),
                )
            keys.append(key)
        yield Api(app, db, settings, *keys)


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "----appliance-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_upload_and_download_in_process(tmp_path: Path) -> None:
    png = tiny_png()

    async def body() -> None:
        async with api(tmp_path) as a:
            client = a.app.test_client()
            response = await client.post(
                "/api/accounts/acme/media?filename=logo.png",
                data=png,
                headers={**a.auth(a.acme_key), "Content-Type": "application/pdf"},
            )
            assert response.status_code == 201, await response.get_data()
            out = await response.get_json()
            assert out["content_type"] == "image/png"
            assert out["kind"] == "image"
            assert out["filename"] == "logo.png"
            assert out["size"] == len(png)
            assert out["sha256"] == hashlib.sha256(png).hexdigest()

            got = await client.get(
                f"/api/accounts/acme/media/{out['id']}", headers=a.auth(a.acme_key)
            )
            assert got.status_code == 200
            assert await got.get_data() == png
            assert got.headers["Content-Type"] == "image/png"
            assert got.headers["Content-Disposition"].startswith('inline; filename="logo.png"')
            assert got.headers["X-Content-Type-Options"] == "nosniff"
            assert "no-store" in got.headers["Cache-Control"]

            # multipart, a document: attachment
            text = "name,phone\nAyşe,+905551112233\n".encode()
            data, content_type = multipart("file", "rehber.csv", text)
            response = await client.post(
                "/api/accounts/acme/media",
                data=data,
                headers={**a.auth(a.acme_key), "Content-Type": content_type},
            )
            assert response.status_code == 201, await response.get_data()
            doc = await response.get_json()
            assert (doc["content_type"], doc["kind"], doc["filename"]) == (
                "text/plain",
                "document",
                "rehber.csv",
            )
            got = await client.get(
                f"/api/accounts/acme/media/{doc['id']}", headers=a.auth(a.acme_key)
            )
            assert await got.get_data() == text
            assert got.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert got.headers["Content-Disposition"].startswith(
                'attachment; filename="rehber.csv"'
            )

    asyncio.run(body())


def test_upload_refusals_in_process(tmp_path: Path) -> None:
    async def body() -> None:
        async with api(tmp_path, MEDIA_MAX_BYTES="4096") as a:
            client = a.app.test_client()
            auth = a.auth(a.acme_key)

            async def post(path: str, data: bytes, **headers: str) -> Any:
                return await client.post(path, data=data, headers={**auth, **headers})

            # Over the body limit of the route (MEDIA_MAX_BYTES plus multipart framing).
            response = await post("/api/accounts/acme/media", b"%PDF-" + b"x" * 200_000)
            assert response.status_code == 413
            error = await response.get_json()
            assert set(error) == {"error", "requestId"} and "4096" in error["error"]
            # Over MEDIA_MAX_BYTES but inside the framing allowance: the store refuses.
            response = await post("/api/accounts/acme/media", b"%PDF-" + b"x" * 4092)
            assert response.status_code == 413
            response = await post("/api/accounts/acme/media", b"%PDF-" + b"x" * 4091)
            assert response.status_code == 201
            # Other routes keep the app-wide MAX_BODY_BYTES (1 MiB).
            for size, status in ((1024 * 1024, 200), (1024 * 1024 + 1, 413)):
                response = await client.post("/api/_probe", data=b"x" * size)
                assert response.status_code == status

            response = await post("/api/accounts/acme/media", b"MZ\x90\x00" + b"\x00" * 64)
            assert response.status_code == 415
            assert "Windows executable" in (await response.get_json())["error"]

            data, content_type = multipart("upload", "x.png", tiny_png())
            response = await post(
                "/api/accounts/acme/media", data, **{"Content-Type": content_type}
            )
            assert response.status_code == 400
            assert (await response.get_json())["issues"][0]["path"] == "file"

            # Out of grant and unknown accounts: 404, the same answer.
            for key, account in ((a.other_key, "acme"), (a.acme_key, "nope")):
                response = await client.post(
                    f"/api/accounts/{account}/media", data=tiny_png(), headers=a.auth(key)
                )
                assert response.status_code == 404
                assert (await response.get_json())["error"] == "no such account"

            response = await client.post("/api/accounts/acme/media", data=tiny_png())
            assert response.status_code == 401

    asyncio.run(body())


def test_download_refusals_in_process(tmp_path: Path) -> None:
    async def body() -> None:
        async with api(tmp_path) as a:
            client = a.app.test_client()
            response = await client.post(
                "/api/accounts/acme/media", data=tiny_png(), headers=a.auth(a.acme_key)
            )
            media_id = (await response.get_json())["id"]
            for key, path in (
                (a.other_key, f"/api/accounts/acme/media/{media_id}"),  # out of grant
                (a.other_key, f"/api/accounts/other/media/{media_id}"),  # another account's id
                (a.acme_key, "/api/accounts/acme/media/med_unknown123456"),
                (a.acme_key, "/api/accounts/acme/media/..%2F..%2Fappliance.db"),
            ):
                response = await client.get(path, headers=a.auth(key))
                assert response.status_code == 404, path
                assert set(await response.get_json()) == {"error", "requestId"}

    asyncio.run(body())


def test_idempotent_upload_replays(tmp_path: Path) -> None:
    async def body() -> None:
        async with api(tmp_path) as a:
            client = a.app.test_client()
            headers = {**a.auth(a.acme_key), "Idempotency-Key": "upload-1"}
            first = await client.post("/api/accounts/acme/media", data=tiny_png(), headers=headers)
            again = await client.post("/api/accounts/acme/media", data=tiny_png(), headers=headers)
            assert first.status_code == again.status_code == 201
            assert await first.get_json() == await again.get_json()
            assert again.headers["Idempotent-Replayed"] == "true"
            assert await a.db.scalar("SELECT COUNT(*) FROM media") == 1

    asyncio.run(body())


def test_media_routes_are_in_the_spec(tmp_path: Path) -> None:
    async def body() -> dict[str, Any]:
        async with api(tmp_path) as a:
            response = await a.app.test_client().get("/openapi.json")
            return await response.get_json()  # type: ignore[no-any-return]

    spec = asyncio.run(body())
    upload = spec["paths"]["/api/accounts/{account}/media"]["post"]
    download = spec["paths"]["/api/accounts/{account}/media/{media_id}"]["get"]
    assert upload["x-access"] == "messages.send"
    assert download["x-access"] == "messages.read"
    assert {"201", "400", "404", "413", "415"} <= set(upload["responses"])
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert "404" in download["responses"]


def test_account_deletion_hook_removes_the_files(tmp_path: Path) -> None:
    async def body() -> None:
        async with api(tmp_path) as a:
            client = a.app.test_client()
            response = await client.post(
                "/api/accounts/acme/media", data=tiny_png(), headers=a.auth(a.acme_key)
            )
            assert response.status_code == 201
            assert (a.settings.media_dir / "acme").is_dir()
            async with a.db.write() as conn:
                _, admin_key, _ = await auth_store.create_api_key(
                    conn,
                    name="admin",
                    role=Role.ADMIN,
                    all_accounts=True,
                    accounts=[],
                    created_by="test",
                    owner_user_id=await key_owner(conn),
                    now=time.time(),
                )
            response = await client.delete(
                "/api/accounts/acme",
                query_string={"confirm": "acme"},
                headers=a.auth(admin_key),
            )
            assert response.status_code == 204
            assert not (a.settings.media_dir / "acme").exists()

    asyncio.run(body())
