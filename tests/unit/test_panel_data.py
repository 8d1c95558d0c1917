"""The panel's quick replies with media (a file uploaded through the media store with its
limits, shown, replaced, removed; the variables and the preview as ``.../render``; the
composer sending one with its media) and an account's message age (as
``PUT /api/accounts/{id}/retention``, the last retention run for admins), in the
in-process app."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

from quart import Quart
from quart.datastructures import FileStorage

from appliance.auth import store as auth_store
from appliance.db.database import Database
from appliance.inbox import quick_replies_store, retention_store
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import ALICE, A, _run, _sign_in


def png(size: int = 2) -> bytes:
    """A real PNG of ``size`` x ``size`` green pixels (browsers draw it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\x16\xa3\x4a" * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _file(
    data: bytes, name: str, content_type: str = "application/octet-stream"
) -> dict[str, FileStorage]:
    return {"media_file": FileStorage(io.BytesIO(data), filename=name, content_type=content_type)}


async def _reply(db: Database, shortcut: str) -> quick_replies_store.QuickReplyOut:
    replies, _next = await quick_replies_store.list_quick_replies(
        db, A, q=None, cursor=None, limit=50
    )
    return next(r for r in replies if r.shortcut == shortcut)


def test_quick_replies_with_media_variables_and_preview(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        url = f"/panel/accounts/{A}/quick-replies"
        page = await (await admin.get(f"/panel/quick-replies?account={A}")).get_data(as_text=True)
        assert 'enctype="multipart/form-data"' in page and 'name="media_file"' in page
        assert "up to 2 MB" in page  # MEDIA_MAX_BYTES of this app (below)
        # A type WhatsApp cannot carry: the media store's message next to the field.
        refused = await admin.post(
            url,
            form={"csrf_token": csrf, "name": "Bin", "shortcut": "/bin"},
            files=_file(b"\x00\x01\x02\x03 binary", "x.bin"),
        )
        text = await refused.get_data(as_text=True)
        assert refused.status_code == 415 and 'id="f-qr-media-error">unsupported media type' in text
        # Larger than MEDIA_MAX_BYTES: 413, said next to the field.
        large = await admin.post(
            url,
            form={"csrf_token": csrf, "name": "Big", "shortcut": "/big"},
            files=_file(b"%PDF-1.4\n" + b"0" * (2 * 1024 * 1024), "big.pdf"),
        )
        text = await large.get_data(as_text=True)
        assert large.status_code == 413 and "MEDIA_MAX_BYTES" in text, text[:300]
        # An image with a bad shortcut: the form comes back keeping the uploaded file.
        bad = await admin.post(
            url,
            form={"csrf_token": csrf, "name": "Logo", "shortcut": "no slash"},
            files=_file(png(), "logo.png", "image/png"),
        )
        text = await bad.get_data(as_text=True)
        assert bad.status_code == 400 and 'id="f-qr-shortcut-error"' in text
        kept = text.split('name="media_id" value="')[1].split('"')[0]
        assert kept.startswith("med_") and 'id="f-qr-media-kept"' in text
        made = await admin.post(
            url,
            form={"csrf_token": csrf, "name": "Logo", "shortcut": "/logo", "media_id": kept},
        )
        assert made.status_code == 303
        logo = await _reply(db, "/logo")
        assert logo.body is None and logo.media is not None
        assert (logo.media.type, logo.media.id) == ("image", kept)
        audit = await auth_store.list_audit(db, before=None, limit=1)
        assert audit[0].action == "quick_reply.create"
        page = await (await admin.get(f"/panel/quick-replies?account={A}")).get_data(as_text=True)
        assert f'class="qr-thumb" src="/api/accounts/{A}/media/{kept}"' in page
        # A document added to /thanks (text and file), then removed again.
        thanks = await _reply(db, "/thanks")
        edit = f"{url}/{thanks.id}/edit"
        form = {"csrf_token": csrf, "name": "Thanks", "shortcut": "/thanks"}
        changed = await admin.post(
            edit,
            form={**form, "body": "Thank you {{contact.name}}! {{order}}"},
            files=_file(b"%PDF-1.4\n%%EOF\n", "price list.pdf"),
        )
        assert changed.status_code == 303
        thanks = await _reply(db, "/thanks")
        assert thanks.media is not None and thanks.media.type == "document"
        assert thanks.media.filename == "price list.pdf" and thanks.variables == ["order"]
        text = await (await admin.get(edit)).get_data(as_text=True)
        assert 'id="current-media"' in text and "price list.pdf" in text
        assert "<code>{{order}}</code>" in text and "<code>{{agent.name}}</code>" in text
        # The preview: the API's render, the variables' issues next to their fields.
        preview = f"{url}/{thanks.id}/preview"
        missing = await admin.post(preview, form={"csrf_token": csrf, "to": "+905551110001"})
        text = await missing.get_data(as_text=True)
        assert missing.status_code == 400
        assert 'id="f-preview-var-order-error">missing variable &#39;order&#39;' in text
        shown = await admin.post(
            preview,
            form={"to": "+905551110001", "var.order": "#42"},
            headers={"HX-Request": "true", "X-CSRF-Token": csrf},
        )
        text = await shown.get_data(as_text=True)
        assert shown.status_code == 200 and "<html" not in text
        assert 'id="preview-result"' in text and "Thank you Alice! #42" in text
        assert "price list.pdf" in text
        wrong_to = await admin.post(preview, form={"csrf_token": csrf, "to": "nobody"})
        assert wrong_to.status_code == 400
        assert 'id="f-preview-to-error"' in await wrong_to.get_data(as_text=True)
        # Removing the media of a reply without text is refused (it needs one of them).
        lonely = await admin.post(
            f"{url}/{logo.id}/edit",
            form={"csrf_token": csrf, "name": "Logo", "shortcut": "/logo", "remove_media": "1"},
        )
        assert lonely.status_code == 400
        assert 'id="f-qr-body-error"' in await lonely.get_data(as_text=True)
        assert (await _reply(db, "/logo")).media is not None
        removed = await admin.post(
            edit, form={**form, "body": "Thank you {{contact.name}}!", "remove_media": "1"}
        )
        assert removed.status_code == 303
        assert (await _reply(db, "/thanks")).media is None
        # The composer lists the image reply as such, and sends it with its image.
        chat = f"/panel/inbox/{A}/{ALICE}"
        htmx = {"HX-Request": "true", "X-CSRF-Token": csrf}
        text = await (await admin.get(chat, headers=htmx)).get_data(as_text=True)
        assert 'data-shortcut="logo"' in text and 'data-media="with an image"' in text
        sent = await admin.post(
            f"{chat}/send",
            form={"quick_reply_id": str(logo.id), "text": ""},
            headers=htmx,
        )
        assert sent.status_code == 200
        row = await db.fetchone(
            "SELECT type, media_id FROM messages WHERE account_id = ? AND direction = 'out' "
            "ORDER BY rowid DESC LIMIT 1",
            (A,),
        )
        assert (row["type"], row["media_id"]) == ("image", kept)
        # Agents manage no quick replies.
        agent = app.test_client()
        status, _text, agent_csrf = await _sign_in(agent, "agent1")
        denied = await agent.post(
            url,
            form={"csrf_token": agent_csrf, "name": "X", "shortcut": "/x"},
            files=_file(png(), "x.png", "image/png"),
        )
        assert denied.status_code == 403

    _run(open_db, db_path, tmp_path, test, env="MEDIA_MAX_BYTES=2097152\n")


def test_account_message_age(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        page = await (await admin.get(f"/panel/accounts/{A}")).get_data(as_text=True)
        assert 'id="retention-form"' in page and "Now: messages are kept for ever." in page
        assert 'id="last-retention-run"' not in page  # no run yet
        url = f"/panel/accounts/{A}/retention"
        for days in ("0", "abc", "36501"):
            bad = await admin.post(
                url, form={"csrf_token": csrf, "keep": "days", "message_days": days}
            )
            text = await bad.get_data(as_text=True)
            assert bad.status_code == 400 and 'id="f-message-days-error"' in text, days
            assert f'value="{days}"' in text
        assert (await retention_store.account_retention(db, A)).message_days is None
        saved = await admin.post(
            url, form={"csrf_token": csrf, "keep": "days", "message_days": "30"}
        )
        assert saved.status_code == 303
        assert saved.headers["Location"] == f"/panel/accounts/{A}?retention=saved#retention"
        assert (await retention_store.account_retention(db, A)).message_days == 30
        audit = await auth_store.list_audit(db, before=None, limit=1)
        assert audit[0].action == "retention.account_update"
        async with db.write() as conn:
            run = await retention_store.start_run(conn, "manual", time.time())
            await retention_store.finish_run(
                conn,
                run,
                deleted={"messages": 7, "media": 2},
                batches=1,
                error=None,
                now=time.time(),
            )
        page = await (await admin.get(saved.headers["Location"].split("#")[0])).get_data(
            as_text=True
        )
        assert 'id="retention-saved"' in page and "Now: messages are kept 30 days." in page
        assert "messages deleted 7, media files 2" in page
        forever = await admin.post(
            url, form={"csrf_token": csrf, "keep": "forever", "message_days": "30"}
        )
        assert forever.status_code == 303
        assert (await retention_store.account_retention(db, A)).message_days is None
        # Agents see the age, not the form nor the runs; they cannot change it.
        agent = app.test_client()
        status, _text, agent_csrf = await _sign_in(agent, "agent1")
        page = await (await agent.get(f"/panel/accounts/{A}")).get_data(as_text=True)
        assert "Now: messages are kept for ever." in page
        assert 'id="retention-form"' not in page and 'id="last-retention-run"' not in page
        refused = await agent.post(
            url, form={"csrf_token": agent_csrf, "keep": "days", "message_days": "5"}
        )
        assert refused.status_code == 403

    _run(open_db, db_path, tmp_path, test)
