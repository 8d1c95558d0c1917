"""The panel's languages: gettext catalogs (babel), locale choice, dates in the user's zone.

Every text a person reads goes through ``gettext``: in templates ``{{ _("Inbox") }}``
or ``{% trans %}...{% endtrans %}``, in Python ``_("...")`` imported from here (babel's
extractor finds both). The catalogs live in ``translations/<lang>/LC_MESSAGES/`` as
``messages.po`` (edited) and ``messages.mo`` (compiled, committed: installs need no
build step). ``runbook/panel.md`` says how to update them; ``tests/unit/test_panel_i18n.py``
fails when a template holds untranslated text, a catalog misses a message, or a
``.mo`` is older than its ``.po``.

The language is the user's preference, else the best match of the browser's
``Accept-Language``, else English. Times are shown in the user's timezone
(preference, else UTC).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from babel import Locale
from babel.dates import format_date, format_datetime, format_skeleton, format_time
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations
from quart import g, has_request_context, request

TRANSLATIONS = Path(__file__).parent / "translations"
LANGUAGES: dict[str, str] = {"en": "English", "tr": "Türkçe"}  # names in their own language
DEFAULT_LANGUAGE = "en"
DEFAULT_TIMEZONE = "UTC"


@cache
def translations(language: str) -> NullTranslations:
    """The compiled catalog of ``language`` (loaded once per process)."""
    if language == DEFAULT_LANGUAGE:
        # English is the source language: its catalog maps each message to itself
        # (msgstr empty), so gettext answers the msgid.
        return NullTranslations()
    return Translations.load(str(TRANSLATIONS), [language], domain="messages")


@cache
def timezones() -> tuple[str, ...]:
    """Every IANA zone name this machine knows (tzdata is a dependency), sorted."""
    return tuple(sorted(available_timezones()))


def valid_timezone(name: str) -> bool:
    if not name or len(name) > 64 or name not in timezones():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def browser_language() -> str:
    """The best of LANGUAGES for this request's Accept-Language, else English."""
    if not has_request_context():
        return DEFAULT_LANGUAGE
    best = request.accept_languages.best_match(list(LANGUAGES))
    return best if best in LANGUAGES else DEFAULT_LANGUAGE


@dataclass(frozen=True, slots=True)
class _Rendering:
    """What one page's rendering asks hundreds of times (every ``_()``, date and
    number), worked out once: the request's language, catalog and zone, and today."""

    language: str
    translations: NullTranslations
    zone: ZoneInfo
    today: dt.date


_RENDERING: ContextVar[_Rendering | None] = ContextVar("panel_rendering", default=None)


@contextmanager
def rendering() -> Iterator[None]:
    """Within it (one template's rendering), language, catalog, zone and today are the
    request's as they were on entry, read without a lookup of the request each time."""
    lang, zone = language(), _zone()
    today = dt.datetime.now(zone).date()
    token = _RENDERING.set(_Rendering(lang, translations(lang), zone, today))
    try:
        yield
    finally:
        _RENDERING.reset(token)


def language() -> str:
    """The language of this request (set by the panel's before-request hook)."""
    now = _RENDERING.get()
    if now is not None:
        return now.language
    found = g.get("panel_language") if has_request_context() else None
    return found if isinstance(found, str) and found in LANGUAGES else browser_language()


def timezone() -> str:
    found = g.get("panel_timezone") if has_request_context() else None
    return found if isinstance(found, str) else DEFAULT_TIMEZONE


def _catalog() -> NullTranslations:
    now = _RENDERING.get()
    return now.translations if now is not None else translations(language())


def gettext(message: str, **variables: Any) -> str:
    text = _catalog().ugettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    """The plural form for ``n``; formatted with ``num`` (= n) and ``variables`` when
    variables are given (Jinja's ``{% trans count=... %}`` formats by itself)."""
    text = _catalog().ungettext(singular, plural, n)
    return text % {"num": n, **variables} if variables else text


_ = gettext


@cache
def _locale(language: str) -> Locale:
    """babel's Locale of a language (parsed once per process: pages format hundreds of
    dates and numbers)."""
    return Locale.parse(language)


def _zone() -> ZoneInfo:
    now = _RENDERING.get()
    if now is not None:
        return now.zone
    try:
        return ZoneInfo(timezone())
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TIMEZONE)


def local(ts: float) -> dt.datetime:
    """A Unix time as an aware datetime in the user's timezone."""
    return dt.datetime.fromtimestamp(ts, tz=_zone())


def fmt_datetime(ts: float | None, fmt: str = "medium") -> str:
    if ts is None:
        return ""
    return format_datetime(local(ts), format=fmt, locale=_locale(language()))


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return ""
    at = local(ts)
    return _short_time(at.hour, at.minute, language())


# A page formats a time or a date for every chat and message it lists, and babel's
# formatting is the dearest part of rendering it: the short forms (no zone, no seconds)
# are kept per language, keyed by what they show.
@lru_cache(maxsize=4096)
def _short_time(hour: int, minute: int, language: str) -> str:
    return format_time(dt.time(hour, minute), format="short", locale=_locale(language))


@lru_cache(maxsize=4096)
def _short_date(day: dt.date, language: str) -> str:
    return format_date(day, format="short", locale=_locale(language))


@lru_cache(maxsize=2048)
def _small_number(n: int, language: str) -> str:
    return format_decimal(n, locale=_locale(language))


def fmt_day(ts: float | None, *, now: float | None = None) -> str:
    """ "Today", "Yesterday", or the date in full (the conversation's day separators)."""
    if ts is None:
        return ""
    day = local(ts).date()
    today = _today(now)
    if day == today:
        return _("Today")
    if day == today - dt.timedelta(days=1):
        return _("Yesterday")
    return _full_date(day, language())


@lru_cache(maxsize=1024)
def _full_date(day: dt.date, language: str) -> str:
    return format_date(day, format="full", locale=_locale(language))


def fmt_month_day(day: dt.date) -> str:
    """A day without its year, as the language writes it ("Nov 4", "4 Kas"): the
    reports' date axis and tooltips."""
    return _month_day(day, language())


@lru_cache(maxsize=1024)
def _month_day(day: dt.date, language: str) -> str:
    return format_skeleton("MMMd", day, locale=_locale(language))


def _today(now: float | None) -> dt.date:
    """The user's today (``now``: at that Unix time instead)."""
    rendering = _RENDERING.get() if now is None else None
    if rendering is not None:
        return rendering.today
    return local(now if now is not None else dt.datetime.now(dt.UTC).timestamp()).date()


def fmt_when(ts: float | None, *, now: float | None = None) -> str:
    """Short: the time when today, else the date (the chat list)."""
    if ts is None:
        return ""
    at = local(ts)
    if at.date() == _today(now):
        return _short_time(at.hour, at.minute, language())
    day = at.date()
    return _short_date(day, language())


def fmt_number(n: int | float) -> str:
    if isinstance(n, int) and 0 <= n < 100_000:  # counts and badges
        return _small_number(n, language())
    return format_decimal(n, locale=_locale(language()))


def day_key(ts: float) -> str:
    """The user's calendar day of a Unix time (groups messages under day separators)."""
    return local(ts).date().isoformat()


def template_globals() -> dict[str, Any]:
    """What every panel template may call."""
    return {
        "fmt_datetime": fmt_datetime,
        "fmt_time": fmt_time,
        "fmt_day": fmt_day,
        "fmt_when": fmt_when,
        "fmt_number": fmt_number,
        "fmt_month_day": fmt_month_day,
        "day_key": day_key,
        "LANGUAGES": LANGUAGES,
    }
