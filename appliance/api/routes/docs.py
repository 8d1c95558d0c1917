"""Interactive API docs (Swagger UI, served from the installed package) for admins."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from quart import Blueprint, Response, send_from_directory
from quart_schema import tag

from appliance.api.access import public, requires
from appliance.api.openapi import responds
from appliance.auth.permissions import Permission
from appliance.errors import NotFound

bp = Blueprint("docs", __name__)

ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
ALLOWED_ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Appliance API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" href="/docs/assets/favicon-32x32.png"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""

INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
  withCredentials: true, persistAuthorization: false});
"""


@bp.get("/docs")
@requires(Permission.DOCS_READ)
@responds(200, "The page", "text/html")
@tag(["docs"])
async def docs() -> Response:
    """Swagger UI over /openapi.json (admins)."""
    return Response(PAGE, content_type="text/html; charset=utf-8")


@bp.get("/docs/init.js")
@public
@responds(200, "The script", "text/javascript")
@tag(["docs"])
async def docs_init() -> Response:
    """Script that starts Swagger UI (no inline script, so the CSP stays strict)."""
    return Response(INIT, content_type="text/javascript; charset=utf-8")


@bp.get("/docs/assets/<name>")
@public
@responds(200, "The file", "text/css", "text/javascript", "image/png")
@tag(["docs"])
async def docs_asset(name: str) -> Response:
    """Swagger UI's static files, shipped inside the appliance (no CDN)."""
    if name not in ALLOWED_ASSETS:
        raise NotFound("no such asset")
    return await send_from_directory(ASSETS, name)
