"""(being written)"""

from __future__ import annotations

from quart import Blueprint

bp = Blueprint("chats", __name__)
