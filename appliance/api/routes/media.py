"""Media: upload a file to send later by id, download a stored file.

Uploads may be larger than the app-wide body limit (MAX_BODY_BYTES, 1 MiB): this
route takes up to MEDIA_MAX_BYTES. The blueprint installs a request class that gives
only ``POST /api/accounts/<account>/media`` (and the panel's quick-reply, auto-reply
and schedule forms, which upload a file the same way: ``UPLOAD_PATH``) the larger
limit, and that keeps reading (and dropping) an oversized body for a while before
answering 413, so the client reads a JSON 413 instead of a connection reset.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import BaseModel, Field, StringConstraints
from quart import Blueprint, Quart, Response, current_app, request
from quart.blueprints import BlueprintSetupState
from quart.wrappers.request import Body, Request
from quart_schema import DataSource, document_request, document_response
from werkzeug.http import parse_options_header

from appliance.api.access import requires
from appliance.api.accounts_access import account_for
from appliance.api.idempotency import idempotent
from appliance.api.openapi import documented, responds
from appliance.api.schemas import Strict, ValidationErrorBody
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.api.validation import query
from appliance.auth.permissions import Permission
from appliance.errors import N_, InvalidInput
from appliance.messaging import media
from appliance.messaging.media import MediaRecord, TooLarge

bp = Blueprint("media", __name__)

# The uploads: the API's, and the web panel's forms that carry a file (quick replies,
# auto-replies' reply actions, scheduled messages), stored through the same media store,
# with the same limit.
UPLOAD_PATH = re.compile(
    r"^/(api/accounts/[^/]+/media|panel/accounts/[^/]+/"
    r"(quick-replies(/[0-9]+/edit)?|auto-replies(/[^/]+)?|schedules))$"
)
# Room for the multipart framing around a file of MEDIA_MAX_BYTES.
MULTIPART_OVERHEAD = 64 * 1024
# An oversized body is read and dropped up to this multiple of the limit, then cut off.
DRAIN_FACTOR = 2


# -- the upload body limit ---------------------------------------------------------------


def _too_large(limit: int, setting: str = "MEDIA_MAX_BYTES") -> TooLarge:
    return TooLarge(f"the body exceeds the limit of {limit} bytes ({setting})", limit=limit)


class UploadBody(Body):
    """A request body with its own limit that drains an oversized upload before failing.

    Quart's body stops at the limit and the handler answers at once; the server then
    closes a connection the client is still writing to, and the client may see a reset
    instead of the answer. Here the excess is read and dropped (up to ``drain_limit``),
    and reading the body raises TooLarge once the client has finished sending.
    """

    def __init__(
        self,
        expected_length: int | None,
        limit: int,
        drain_limit: int,
        *,
        media_limit: int | None = None,
        setting: str = "MEDIA_MAX_BYTES",
    ) -> None:
        super().__init__(None, None)
        self.limit = limit
        self.drain_limit = drain_limit
        self.media_limit = media_limit or limit  # the limit named in the error
        self.setting = setting
        self.received = 0
        self.over = False
        if expected_length is not None and expected_length > drain_limit:
            self._must_raise = _too_large(self.media_limit, self.setting)

    def append(self, data: bytes) -> None:
        if not data or self._must_raise is not None:
            return
        self.received += len(data)
        if self.received <= self.limit:
            super().append(data)
            return
        self.over = True
        self._data.clear()
        if self.received > self.drain_limit:
            self._must_raise = _too_large(self.media_limit, self.setting)
            super().set_complete()

    def set_complete(self) -> None:
        if self.over and self._must_raise is None:
            self._must_raise = _too_large(self.media_limit, self.setting)
        super().set_complete()


def upload_request_class(base: type[Request], limit: int, general_limit: int) -> type[Request]:
    """``base`` with the body of ``POST .../media`` limited to ``limit`` (+ framing), and
    every other body to ``general_limit``; an oversized body is drained, then refused, so
    the client reads the JSON 413 instead of a reset connection."""
    body_limit = limit + MULTIPART_OVERHEAD

    class UploadAwareRequest(base):  # type: ignore[valid-type, misc]
        def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any):
            super().__init__(method, scheme, path, *args, **kwargs)
            if method == "POST" and UPLOAD_PATH.match(path):
                self.body = UploadBody(
                    self.content_length,
                    body_limit,
                    body_limit * DRAIN_FACTOR,
                    media_limit=limit,
                )
                self.max_content_length = body_limit  # the multipart parser's limit
            elif method in ("POST", "PUT", "PATCH", "DELETE"):
                self.body = UploadBody(
                    self.content_length,
                    general_limit,
                    general_limit * DRAIN_FACTOR * 2,
                    setting="MAX_BODY_BYTES",
                )

    UploadAwareRequest.__qualname__ = f"UploadAware{base.__qualname__}"
    return UploadAwareRequest


def install_upload_limit(app: Quart) -> None:
    settings = state_of(app).settings
    app.request_class = upload_request_class(
        app.request_class, settings.media_max_bytes, settings.max_body_bytes
    )


def _on_register(state: BlueprintSetupState) -> None:
    assert isinstance(state.app, Quart)
    install_upload_limit(state.app)


bp.record_once(_on_register)


# -- models ------------------------------------------------------------------------------


class MediaOut(BaseModel):
    """A stored file."""

    id: str = Field(description="Media id: send it as `image.id`, `document.id`, ...")
    account_id: str
    content_type: str = Field(description="Judged from the bytes, not from the upload")
    size: int = Field(description="Bytes")
    sha256: str = Field(description="Hex SHA-256 of the bytes")
    filename: str | None
    kind: str = Field(description="The message type it suits: image, video, audio, document")
    created_at: float


class UploadQuery(Strict):
    filename: Annotated[str, StringConstraints(max_length=255)] | None = Field(
        default=None, description="File name to keep (raw uploads; multipart sends its own)"
    )


class UploadForm(BaseModel):
    file: bytes = Field(description="The file. A raw body with any Content-Type works too.")


def media_out(record: MediaRecord) -> MediaOut:
    return MediaOut.model_validate(record, from_attributes=True)


async def _read_upload(filename: str | None) -> tuple[bytes, str | None]:
    if request.mimetype == "multipart/form-data":
        files = await request.files
        upload = files.get("file")
        if upload is None:
            raise InvalidInput(
                N_("send the file in a multipart field named 'file'"),
                issues=[{"path": "file", "message": "missing file field", "code": "missing"}],
            )
        return upload.stream.read(), filename or upload.filename
    data = await request.get_data(as_text=False)
    assert isinstance(data, bytes)  # as_text=False
    if filename is None:
        disposition = request.headers.get("Content-Disposition")
        if disposition:
            filename = parse_options_header(disposition)[1].get("filename")
    return data, filename


# -- routes ------------------------------------------------------------------------------


@bp.post("/api/accounts/<account>/media")
@requires(Permission.MESSAGES_SEND)
@idempotent
@query(UploadQuery)
@document_request(UploadForm, source=DataSource.FORM_MULTIPART)
@document_response(MediaOut, 201)
@documented(ValidationErrorBody, 400, errors=[404, 413, 415], tag="media")
async def upload_media(account: str, query_args: UploadQuery) -> tuple[MediaOut, int]:
    """Upload a file to send by id.

    Send the bytes as the raw body (any Content-Type; the name in `?filename=` or a
    `Content-Disposition: attachment; filename=...` header), or as
    `multipart/form-data` with the field `file`. The type is judged from the bytes:
    JPEG, PNG, GIF, WebP, MP4, 3GP, Ogg/Opus, MP3, M4A, AAC, AMR, PDF, Word, Excel,
    PowerPoint and plain text are accepted; anything else answers 415. Larger than
    MEDIA_MAX_BYTES answers 413. The answer's `id` goes into a message as
    `{"type": "image", "image": {"id": ...}}` (or document, audio, video, per `kind`).
    """
    await account_for(account)
    data, filename = await _read_upload(query_args.filename)
    record = await media.save_media(
        _db(), state_of().settings, account, data, filename=filename, source_url=None
    )
    return media_out(record), 201


def content_disposition(kind: str, name: str) -> str:
    """``attachment`` (documents) or ``inline``, with an ASCII name and the UTF-8 one."""
    disposition = "inline" if kind in ("image", "audio", "video") else "attachment"
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r"[^A-Za-z0-9._ ()+-]", "_", ascii_name).strip() or "file"
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@bp.get("/api/accounts/<account>/media/<media_id>")
@requires(Permission.MESSAGES_READ)
@responds(
    200,
    "The file, with the type judged from its bytes when it was stored",
    *media.SUPPORTED,
    "application/octet-stream",
)
@documented(errors=[404], tag="media")
async def download_media(account: str, media_id: str) -> Response:
    """Download a stored file.

    Answers the bytes with their content type; `Content-Disposition` is `inline` for
    images, audio and video and `attachment` for documents. Media ids of other
    accounts, and accounts outside the caller's grants, answer 404.
    """
    await account_for(account)
    record, path = await media.open_media(_db(), state_of().settings, account, media_id)
    body = current_app.response_class.file_body_class(path)
    content_type = record.content_type
    if content_type == "text/plain":
        content_type = "text/plain; charset=utf-8"
    response = current_app.response_class(body, content_type=content_type)
    response.content_length = body.size
    response.headers["Content-Disposition"] = content_disposition(record.kind, record.download_name)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["ETag"] = f'"{record.sha256}"'
    return response
