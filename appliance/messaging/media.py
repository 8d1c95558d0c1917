"""The media store: uploaded and fetched files, one per media id, per account.

Layout: ``<media_dir>/<account id>/<media id>`` (files 0640, directories 0750), with
a row in table ``media`` holding the type, size, SHA-256 and original file name.

- **The type comes from the bytes.** The declared Content-Type and the file name are
  not trusted; ``sniff`` reads magic numbers (and, for ZIP and OLE2 containers, which
  Office document is inside). What WhatsApp cannot carry is refused (415).
- **Writes are atomic.** A temporary file in the account's directory, fsynced,
  renamed into place; then the row, in one write transaction. A crash between the
  two leaves an orphan file and never a row without its file; ``sweep_orphans``
  removes orphans and temporary files later.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import time
import unicodedata
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from appliance.config import Settings
from appliance.db.database import Database
from appliance.db.storage import storage_full
from appliance.errors import N_, ClientError, InvalidInput, NotFound
from appliance.messaging.store import new_media_id
from appliance.net import ssrf
from appliance.net.ssrf import TooLarge

log = logging.getLogger(__name__)

__all__ = [
    "MediaRecord",
    "TooLarge",
    "UnsupportedMedia",
    "delete_account_media",
    "extension_for",
    "kind_for",
    "open_media",
    "save_media",
    "save_media_from_url",
    "sniff",
    "sweep_orphans",
]

FILE_MODE = 0o640
DIR_MODE = 0o750
TEMP_PREFIX = ".upload-"
FETCH_TIMEOUT_S = 30.0
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MEDIA_ID = re.compile(r"^med_[A-Za-z0-9_-]{8,64}$")


class UnsupportedMedia(ClientError):
    """The bytes are not a type WhatsApp can carry."""

    http_status = 415


# -- types -------------------------------------------------------------------------------

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"

# content type -> (WhatsApp message kind, file extension). What sniff() can answer.
SUPPORTED: dict[str, tuple[str, str]] = {
    "image/jpeg": ("image", "jpg"),
    "image/png": ("image", "png"),
    "image/gif": ("image", "gif"),
    "image/webp": ("image", "webp"),
    "video/mp4": ("video", "mp4"),
    "video/3gpp": ("video", "3gp"),
    "audio/ogg": ("audio", "ogg"),
    "audio/mpeg": ("audio", "mp3"),
    "audio/mp4": ("audio", "m4a"),
    "audio/aac": ("audio", "aac"),
    "audio/amr": ("audio", "amr"),
    "application/pdf": ("document", "pdf"),
    "application/msword": ("document", "doc"),
    "application/vnd.ms-excel": ("document", "xls"),
    "application/vnd.ms-powerpoint": ("document", "ppt"),
    DOCX: ("document", "docx"),
    XLSX: ("document", "xlsx"),
    PPTX: ("document", "pptx"),
    "text/plain": ("document", "txt"),
}
SUPPORTED_NAMES = (
    "JPEG, PNG, GIF, WebP, MP4, 3GP, Ogg/Opus, MP3, M4A, AAC, AMR, PDF, "
    "Word, Excel, PowerPoint (doc/docx, xls/xlsx, ppt/pptx), plain text"
)


def kind_for(content_type: str) -> str:
    """The WhatsApp message kind for a type: image, video, audio or document."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base in SUPPORTED:
        return SUPPORTED[base][0]
    major = base.split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "document"


def extension_for(content_type: str) -> str:
    return SUPPORTED.get(content_type, ("document", "bin"))[1]


_MP4_VIDEO_BRANDS = {
    b"isom",
    b"iso2",
    b"iso3",
    b"iso4",
    b"iso5",
    b"iso6",
    b"mp41",
    b"mp42",
    b"avc1",
    b"dash",
    b"mmp4",
    b"MSNV",
    b"NDAS",
    b"M4V ",
    b"M4VH",
    b"M4VP",
    b"f4v ",
}
_MP4_AUDIO_BRANDS = {b"M4A ", b"M4B "}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


def _ftyp(data: bytes) -> str:
    size = int.from_bytes(data[0:4], "big")
    if size < 16 or size > 4096:
        size = min(len(data), 64)
    major = data[8:12]
    brands = {major} | {data[i : i + 4] for i in range(16, min(size, len(data)) - 3, 4)}
    if major in _MP4_AUDIO_BRANDS:
        return "audio/mp4"
    if major[:3] in (b"3gp", b"3g2", b"3ge", b"3gg", b"3gs", b"3gr"):
        return "video/3gpp"
    if major == b"qt  ":
        raise UnsupportedMedia(N_("unsupported media type: QuickTime video (convert it to MP4)"))
    if major in _HEIF_BRANDS:
        raise UnsupportedMedia(N_("unsupported media type: a HEIF/AVIF image (convert it to JPEG)"))
    if brands & _MP4_VIDEO_BRANDS:
        return "video/mp4"
    raise UnsupportedMedia(
        N_(
            "unsupported media type: an ISO media file of brand {brand}",
            brand=repr(major.decode("latin-1")),
        )
    )


def _office_zip(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            types = b""
            if "[Content_Types].xml" in names:
                # Only the small manifest is decompressed, and only its first MiB.
                with archive.open("[Content_Types].xml") as fh:
                    types = fh.read(1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise UnsupportedMedia(N_("unsupported media type: a damaged ZIP archive")) from None
    except NotImplementedError:  # an unknown compression method
        raise UnsupportedMedia(N_("unsupported media type: a ZIP archive")) from None
    mains = (
        (b"wordprocessingml.document.main+xml", "word/document.xml", DOCX),
        (b"spreadsheetml.sheet.main+xml", "xl/workbook.xml", XLSX),
        (b"presentationml.presentation.main+xml", "ppt/presentation.xml", PPTX),
    )
    if types:
        for marker, _, content_type in mains:
            if marker in types:
                return content_type
    else:
        for _, part, content_type in mains:
            if part in names:
                return content_type
    if "mimetype" in names and any(n.startswith("META-INF/") for n in names):
        raise UnsupportedMedia(
            N_("unsupported media type: an OpenDocument or EPUB file (save it as PDF or Office)")
        )
    if types:
        raise UnsupportedMedia(
            N_(
                "unsupported media type: an Office file that is not a document, workbook or "
                "presentation (macro-enabled and template files are refused)"
            )
        )
    raise UnsupportedMedia(N_("unsupported media type: a ZIP archive"))


def _ole2(data: bytes) -> str:
    # Stream names of the compound file's directory, UTF-16LE.
    for stream, content_type in (
        ("WordDocument", "application/msword"),
        ("PowerPoint Document", "application/vnd.ms-powerpoint"),
        ("Workbook", "application/vnd.ms-excel"),
    ):
        if stream.encode("utf-16-le") in data:
            return content_type
    raise UnsupportedMedia(
        N_(
            "unsupported media type: an OLE2 compound file that is not a Word, Excel or "
            "PowerPoint document (e.g. an installer or an Outlook message)"
        )
    )


def _mp3_frame(data: bytes) -> bool:
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return False
    version = (data[1] >> 3) & 0b11
    layer = (data[1] >> 1) & 0b11
    bitrate = data[2] >> 4
    rate = (data[2] >> 2) & 0b11
    return version != 0b01 and layer == 0b01 and bitrate not in (0, 0b1111) and rate != 0b11


def _adts(data: bytes) -> bool:
    return (
        len(data) >= 7
        and data[0] == 0xFF
        and data[1] & 0xF6 == 0xF0
        and ((data[2] >> 2) & 0xF) < 13
    )


_TEXT_CONTROLS = {"\t", "\n", "\r", "\f"}


def _is_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(unicodedata.category(c) == "Cc" and c not in _TEXT_CONTROLS for c in set(text))


# magic prefix -> what it is, for a precise refusal.
_KNOWN_UNSUPPORTED = (
    (b"MZ", "a Windows executable"),
    (b"\x7fELF", "an ELF executable"),
    (b"\xca\xfe\xba\xbe", "a Mach-O or Java class file"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"BZh", "a bzip2 file"),
    (b"\xfd7zXZ\x00", "an xz file"),
    (b"BM", "a BMP image (convert it to PNG or JPEG)"),
    (b"II*\x00", "a TIFF image (convert it to PNG or JPEG)"),
    (b"MM\x00*", "a TIFF image (convert it to PNG or JPEG)"),
    (b"fLaC", "FLAC audio (convert it to MP3 or Ogg/Opus)"),
    (b"#!AMR-WB\n", "AMR-WB audio (use AMR-NB, MP3 or Ogg/Opus)"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM file (convert it to MP4)"),
    (b"SQLite format 3\x00", "an SQLite database"),
)


def sniff(data: bytes) -> str:
    """The content type of ``data`` judged from its bytes; UnsupportedMedia if WhatsApp
    cannot carry it."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        raise UnsupportedMedia(
            N_("unsupported media type: WAV audio (convert it to MP3 or Ogg/Opus)")
        )
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head[4:8] == b"ftyp":
        return _ftyp(data[:4096])
    if head.startswith(b"OggS"):
        if b"OpusHead" in data[:512]:
            return "audio/ogg"
        raise UnsupportedMedia(
            N_("unsupported media type: an Ogg file without Opus audio (WhatsApp takes Ogg/Opus)")
        )
    if head.startswith(b"#!AMR\n"):
        return "audio/amr"
    if head.startswith(b"ID3") or _mp3_frame(head):
        return "audio/mpeg"
    if _adts(head):
        return "audio/aac"
    if head.startswith(b"PK\x03\x04"):
        return _office_zip(data)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return _ole2(data)
    for magic, what in _KNOWN_UNSUPPORTED:
        if head.startswith(magic):
            raise UnsupportedMedia(N_("unsupported media type: {what}", what=what))
    if _is_text(data):
        return "text/plain"
    raise UnsupportedMedia(
        N_(
            "unsupported media type: the content is not a known format; supported are {supported}",
            supported=SUPPORTED_NAMES,
        )
    )


# -- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRecord:
    id: str
    account_id: str
    content_type: str
    size: int
    sha256: str
    filename: str | None
    source_url: str | None
    created_at: float

    @property
    def kind(self) -> str:
        return kind_for(self.content_type)

    @property
    def download_name(self) -> str:
        """The file name to offer: the original one, else the id with an extension."""
        return self.filename or f"{self.id}.{extension_for(self.content_type)}"


def _record(row: Any) -> MediaRecord:
    return MediaRecord(
        id=row["id"],
        account_id=row["account_id"],
        content_type=row["content_type"],
        size=row["size"],
        sha256=row["sha256"],
        filename=row["filename"],
        source_url=row["source_url"],
        created_at=row["created_at"],
    )


def clean_filename(name: str | None) -> str | None:
    """The last path component, without control characters, at most 255 characters."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip().strip(".")
    return name[:255] or None


def _account_dir(settings: Settings, account_id: str) -> Path:
    if not _ACCOUNT_ID.match(account_id):
        raise NotFound("no such account")
    return settings.media_dir / account_id


def _ensure_dir(path: Path) -> None:
    for directory in (path.parent, path):
        if not directory.is_dir():
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(directory: Path, name: str, data: bytes) -> Path:
    _ensure_dir(directory)
    final = directory / name
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, FILE_MODE)
        os.replace(temp, final)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return final


def check_size(settings: Settings, data: bytes) -> None:
    """TooLarge (413) over MEDIA_MAX_BYTES, InvalidInput for an empty file."""
    limit = settings.media_max_bytes
    if len(data) > limit:
        raise TooLarge(
            N_(
                "the file is {size} bytes; the limit is {limit} bytes (MEDIA_MAX_BYTES)",
                size=len(data),
                limit=limit,
            ),
            limit=limit,
        )
    if not data:
        raise InvalidInput(
            N_("the file is empty"),
            issues=[{"path": "(body)", "message": "empty file", "code": "empty"}],
        )


async def write_media_file(
    settings: Settings,
    account_id: str,
    data: bytes,
    *,
    content_type: str,
    filename: str | None = None,
    source_url: str | None = None,
) -> tuple[MediaRecord, Path]:
    """Write ``data`` under a new media id (atomically); the row is the caller's to insert
    (``insert_media_row``) in its own transaction, or the file is an orphan to unlink."""
    directory = _account_dir(settings, account_id)
    media_id = new_media_id()
    try:
        path = await asyncio.to_thread(_write_atomic, directory, media_id, data)
    except OSError as exc:
        full = storage_full(exc, "the media store")
        if full is not None:
            raise full from exc
        raise
    record = MediaRecord(
        id=media_id,
        account_id=account_id,
        content_type=content_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        filename=clean_filename(filename),
        source_url=source_url,
        created_at=time.time(),
    )
    return record, path


async def insert_media_row(conn: aiosqlite.Connection, record: MediaRecord) -> None:
    await conn.execute(
        "INSERT INTO media (account_id, id, content_type, size, sha256, filename, "
        "source_url, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.account_id,
            record.id,
            record.content_type,
            record.size,
            record.sha256,
            record.filename,
            record.source_url,
            record.created_at,
        ),
    )


async def save_media(
    db: Database,
    settings: Settings,
    account_id: str,
    data: bytes,
    *,
    filename: str | None = None,
    source_url: str | None = None,
) -> MediaRecord:
    """Store ``data`` for the account: sniff, write atomically, insert the row.

    Raises TooLarge (413) over MEDIA_MAX_BYTES, UnsupportedMedia (415), InvalidInput
    for an empty file, NotFound when the account does not exist.
    """
    check_size(settings, data)
    content_type = sniff(data)
    record, path = await write_media_file(
        settings,
        account_id,
        data,
        content_type=content_type,
        filename=filename,
        source_url=source_url,
    )
    try:
        async with db.write() as conn:
            await insert_media_row(conn, record)
    except BaseException as exc:
        await asyncio.to_thread(path.unlink, True)
        if isinstance(exc, sqlite3.IntegrityError):  # the account does not exist (any more)
            raise NotFound("no such account") from None
        raise
    return record


def received_content_type(data: bytes) -> str:
    """The type of received media: sniffed; what we would refuse to send is still kept,
    as an opaque download (never a type a browser would render from our origin)."""
    try:
        return sniff(data)
    except UnsupportedMedia:
        return "application/octet-stream"


async def save_media_from_url(
    db: Database,
    settings: Settings,
    account_id: str,
    url: str,
    *,
    filename: str | None = None,
    timeout_s: float = FETCH_TIMEOUT_S,
    resolver: ssrf.Resolver | None = None,
) -> MediaRecord:
    """Fetch ``url`` through the SSRF guard and store it (media sent by link).

    Raises what ``ssrf.fetch`` raises (RefusedUrl/RefusedAddress, RedirectRefused,
    FetchFailed with ``retryable``, TooLarge) and what ``save_media`` raises.
    """
    _, data = await ssrf.fetch(
        url,
        settings.allowed_private_networks,
        max_bytes=settings.media_max_bytes,
        timeout_s=timeout_s,
        resolver=resolver,
    )
    if filename is None:
        path = url.split("?", 1)[0].split("#", 1)[0]
        filename = path.rsplit("/", 1)[-1] if path.count("/") > 2 else None
    return await save_media(db, settings, account_id, data, filename=filename, source_url=url)


async def get_media(db: Database, account_id: str, media_id: str) -> MediaRecord:
    """The record of one media id of the account; NotFound otherwise."""
    if not _MEDIA_ID.match(media_id) or not _ACCOUNT_ID.match(account_id):
        raise NotFound("no such media")
    row = await db.fetchone(
        "SELECT account_id, id, content_type, size, sha256, filename, source_url, created_at "
        "FROM media WHERE account_id = ? AND id = ?",
        (account_id, media_id),
    )
    if row is None:
        raise NotFound("no such media")
    return _record(row)


async def open_media(
    db: Database, settings: Settings, account_id: str, media_id: str
) -> tuple[MediaRecord, Path]:
    """The record and file path of one media id of the account; NotFound otherwise."""
    record = await get_media(db, account_id, media_id)
    path = _account_dir(settings, account_id) / record.id
    if not path.is_file():
        log.warning("media file missing", extra={"account_id": account_id, "media_id": media_id})
        raise NotFound("no such media")
    return record, path


def _remove_tree(directory: Path) -> None:
    if not directory.exists():
        return
    # Renamed first (atomic), so a new account with the same id starts empty at once.
    doomed = directory.with_name(f".deleted-{directory.name}-{secrets.token_hex(4)}")
    try:
        directory.rename(doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


async def delete_account_media(settings: Settings, account_id: str) -> None:
    """Remove every media file of the account (its rows go with the account's ON DELETE
    CASCADE). Call after the account's row is deleted."""
    await asyncio.to_thread(_remove_tree, _account_dir(settings, account_id))


def _media_files(settings: Settings) -> Iterable[tuple[str, Path]]:
    root = settings.media_dir
    if not root.is_dir():
        return
    for account in root.iterdir():
        if account.name.startswith(".deleted-") and account.is_dir():
            yield "", account
        elif account.is_dir() and _ACCOUNT_ID.match(account.name):
            for path in account.iterdir():
                yield account.name, path


async def sweep_orphans(db: Database, settings: Settings, *, older_than_s: float = 3600) -> int:
    """Delete temporary files, files without a row, and leftovers of deleted accounts,
    older than ``older_than_s``. Answers how many entries were removed."""
    cutoff = time.time() - older_than_s

    def old_enough() -> list[tuple[str, Path]]:
        found = []
        for account, path in _media_files(settings):
            try:
                if path.lstat().st_mtime < cutoff and (account == "" or path.is_file()):
                    found.append((account, path))
            except FileNotFoundError:
                continue
        return found

    candidates = await asyncio.to_thread(old_enough)
    removed = 0
    for account, path in candidates:
        if account == "":
            await asyncio.to_thread(shutil.rmtree, path, True)
            removed += 1
            continue
        if not path.name.startswith(TEMP_PREFIX):
            row = await db.fetchone(
                "SELECT 1 FROM media WHERE account_id = ? AND id = ?", (account, path.name)
            )
            if row is not None:
                continue
        await asyncio.to_thread(path.unlink, True)
        removed += 1
    return removed
