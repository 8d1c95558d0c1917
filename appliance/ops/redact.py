"""Redaction of text that leaves the installation (support bundles).

Layers, each applied to every line:

1. exact values known to be secret: the secret files' contents, and message bodies,
   contact names and phone numbers read from the database (``Known``);
2. JSON log lines: values of keys that hold content or credentials, whole;
3. patterns: bearer tokens and API keys, ``key=value`` credentials, URL passwords,
   long token-like strings, phone numbers and WhatsApp JIDs.

Over-redaction is accepted: a redacted line still shows time, level, logger, event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

SECRET = "[REDACTED:secret]"
TOKEN = "[REDACTED:token]"
PHONE = "[REDACTED:phone]"
BODY = "[REDACTED:body]"

# JSON keys whose values are message content or credentials.
CONTENT_KEYS = frozenset(
    {
        "body",
        "text",
        "caption",
        "content",
        "message",
        "preview",
        "payload",
        "data",
        "name",
        "push_name",
        "filename",
        "from",
        "to",
        "phone",
        "number",
        "jid",
        "chat",
        "chat_jid",
        "sender",
        "sender_jid",
        "recipient",
    }
)
CREDENTIAL_KEY = re.compile(
    r"(?i)(secret|token|password|passwd|api[_-]?key|authorization|cookie|signature|"
    r"private|credential|session[_-]?key|data[_-]?key)"
)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + TOKEN),
    (re.compile(r"\bapk_[A-Za-z0-9_-]+"), TOKEN),
    (
        re.compile(
            r"(?i)\b([A-Za-z_-]*(?:secret|token|password|passwd|api[_-]?key|authorization|"
            r"cookie|signature)[A-Za-z_-]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&\"'}]+)"
        ),
        r"\1\2" + SECRET,
    ),
    (re.compile(r"(?i)(https?://)[^/\s:@]+:[^/\s@]+@"), r"\1" + SECRET + "@"),
    (re.compile(r"\b\d{5,20}(?::\d+)?@(?:s\.whatsapp\.net|c\.us|lid|g\.us)\b"), PHONE),
    (re.compile(r"(?<![\w.])\+?\d[\d ()-]{5,18}\d(?![\w.])"), PHONE),
    # token-like: 32+ characters of a key alphabet with letters and digits mixed
    (
        re.compile(
            r"(?<![\w/+-])(?=[A-Za-z0-9_+/=-]*\d)(?=[A-Za-z0-9_+/=-]*[A-Za-z])[A-Za-z0-9_+/=-]{32,}"
        ),
        TOKEN,
    ),
]


@dataclass
class Known:
    """Exact strings never to show: secrets, and content found in the database."""

    secrets: list[str] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)

    def prepared(self) -> list[tuple[str, str]]:
        pairs = [(s, SECRET) for s in self.secrets if len(s) >= 6]
        pairs += [(c, BODY) for c in self.contents if len(c.strip()) >= 4]
        # Longest first, so a body containing another body is replaced whole.
        return sorted(set(pairs), key=lambda pair: -len(pair[0]))


def _redact_json(value: Any, key: str = "") -> Any:
    if key and CREDENTIAL_KEY.search(key):
        return SECRET
    if key.lower() in CONTENT_KEYS and value not in (None, "", [], {}):
        return BODY
    if isinstance(value, dict):
        return {k: _redact_json(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    if isinstance(value, str):
        return redact_patterns(value)
    return value


def redact_patterns(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    def __init__(self, known: Known | None = None) -> None:
        self._known = (known or Known()).prepared()

    def exact(self, text: str) -> str:
        for value, replacement in self._known:
            if value in text:
                text = text.replace(value, replacement)
        return text

    def line(self, line: str) -> str:
        text = self.exact(line)
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                parsed = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                return orjson.dumps(_redact_json(parsed)).decode()
        return redact_patterns(text)

    def text(self, text: str) -> str:
        return "\n".join(self.line(line) for line in text.splitlines())
