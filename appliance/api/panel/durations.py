"""Durations in forms: a number and a unit (seconds, minutes, hours, days) where the API
takes seconds (an auto-reply's cooldown, a first message's idle time, a snooze).

``show`` writes a measured duration for reading (the reports' response times) in the
user's language: "4 min 09 s", "4 dk 09 sn" in Turkish.

``split`` shows a stored number of seconds in the largest unit that divides it, so a
saved value comes back exactly (5400 s is 90 minutes, 90 s stays 90 seconds);
``seconds`` turns what was typed back into the API's seconds. A form posted without a
unit (an older page, a script) is read in seconds, as before the units.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from appliance.api.panel.i18n import _, fmt_number
from appliance.errors import N_

UNITS: dict[str, int] = {"s": 1, "min": 60, "h": 3600, "d": 86400}
UNIT_NAMES: dict[str, str] = {
    "s": N_("seconds"),
    "min": N_("minutes"),
    "h": N_("hours"),
    "d": N_("days"),
}
DEFAULT_UNIT = "min"
UNIT_SUFFIX = "_unit"  # the select's name: the number's name and this
MAX_DIGITS = 24  # longer is no duration (and no huge integer is made of it)
TOO_LONG_S = 10**12  # far beyond every limit of the API's models


def split(seconds: Any, default_unit: str = DEFAULT_UNIT) -> tuple[str, str]:
    """(number, unit) as the form shows a value of seconds: the largest unit dividing
    it; empty (no value) and 0 in ``default_unit``; anything else as given, in seconds."""
    if seconds is None or seconds == "":
        return "", default_unit
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        return str(seconds), "s"
    if seconds == 0:
        return "0", default_unit
    for unit in ("d", "h", "min"):
        if seconds % UNITS[unit] == 0:
            return str(seconds // UNITS[unit]), unit
    return str(seconds), "s"


def seconds(number: str, unit: str | None) -> Any:
    """The API's seconds for a typed number in a unit (``None``: seconds): an int when
    whole (``1,5`` hours is 5400; a comma is a decimal point, as in Turkish), ``None``
    when empty; else a value the API's model refuses with its own message (a fraction
    of a second as a float, a word or an unknown unit as the text)."""
    number = number.strip()
    if not number:
        return None
    factor = UNITS.get(unit or "s")
    if factor is None:
        return f"{number} {unit}"
    if len(number) > MAX_DIGITS:
        return number
    try:
        value = Decimal(number.replace(",", "."))
    except InvalidOperation:
        return number
    if not value.is_finite():
        return number
    total = value * factor
    if abs(total) > TOO_LONG_S or total != total.to_integral_value():
        return float(total)  # refused: beyond every limit, or a fraction of a second
    return int(total)


def show(seconds: float | None) -> str:
    """A duration in its two largest units, the second on two digits ("0 min 09 s",
    "2 h 05 min", "3 d 04 h"); "-" for none (nothing measured)."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    # The smaller unit is worked out before the call: babel's extractor skips a
    # message whose arguments are f-strings.
    if total < 3600:
        secs = str(total % 60).zfill(2)
        return _("%(minutes)s min %(seconds)s s", minutes=total // 60, seconds=secs)
    if total < 86400:
        mins = str(total % 3600 // 60).zfill(2)
        return _("%(hours)s h %(minutes)s min", hours=total // 3600, minutes=mins)
    hours = str(total % 86400 // 3600).zfill(2)
    return _("%(days)s d %(hours)s h", days=fmt_number(total // 86400), hours=hours)
