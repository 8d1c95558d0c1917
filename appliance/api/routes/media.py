"""(being written)"""

from __future__ import annotations

from quart import Blueprint

bp = Blueprint("media", __name__)
