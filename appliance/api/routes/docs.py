"""The landing page at / and the interactive API docs at /docs (admins).

Both are templates under ``appliance/api/templates``; their CSS and JavaScript are
files under ``appliance/api/static`` (served by Quart at /static), so the strict CSP
(no inline script or style) holds. The docs viewer is Swagger UI 5, vendored from
npm ``swagger-ui-dist`` (see ``static/swagger-ui/VENDORED.md``): it reads OpenAPI 3.1.
"""

from __future__ import annotations

from quart import Blueprint, Response, render_template

from appliance import __version__
from appliance.api.access import public, requires
from appliance.api.openapi import documented, responds
from appliance.auth.permissions import Permission

bp = Blueprint("docs", __name__)

HTML = "text/html; charset=utf-8"


@bp.get("/")
@public
@responds(200, "The landing page", "text/html")
@documented(tag="docs")
async def home() -> Response:
    """What this appliance is, with links to the docs, the spec and the health checks."""
    return Response(await render_template("home.html", version=__version__), content_type=HTML)


@bp.get("/docs")
@requires(Permission.DOCS_READ)
@responds(200, "The page", "text/html")
@documented(tag="docs")
async def docs() -> Response:
    """Swagger UI over /openapi.json (admins)."""
    return Response(await render_template("docs.html"), content_type=HTML)
