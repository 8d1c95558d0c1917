"""Ids issued after a restore are never ones issued before it.

The event log (``events.id``, which is also every webhook's ``webhook-id``) and every
other ``AUTOINCREMENT`` table draw ids from ``sqlite_sequence``. A backup holds the
sequences as they were when it was taken; the installation it came from may have
issued many more ids afterwards, and that database may be lost. So a restore raises
every sequence to a *floor* above anything that can have been issued:

    floor = max(sequence in the archive,
                sequence and largest id in the database being replaced, when readable)
            + RESTORE_MARGIN
            + RATE_BOUND * seconds between the backup and the restore

``RATE_BOUND`` is far above the rate at which one appliance can commit rows, so the
time term covers every id issued after the backup even when nothing of the old
database survives; ``RESTORE_MARGIN`` covers that much again whatever the clocks say.
The floors stay far below 2**53, so JavaScript clients read ids exactly. Each restore
is recorded in ``restore_epochs`` (migration 0025) with the floors it set.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from appliance.ops import offline_store

# Ids a single appliance could at most commit per second (it does a few thousand).
RATE_BOUND = 100_000
# Ids allowed for on top, whatever the clocks of the two machines say.
RESTORE_MARGIN = 1_000_000_000
# JavaScript's Number.MAX_SAFE_INTEGER: ids stay below it.
MAX_SAFE_ID = 2**53 - 1


@dataclass(frozen=True)
class Floors:
    gap: int
    floors: dict[str, int]


def compute_floors(
    archived: dict[str, int],
    replaced: dict[str, int],
    *,
    backup_created_at: float,
    now: float,
) -> Floors:
    """The floor of each sequence after a restore (see the module docstring)."""
    elapsed = max(0.0, now - backup_created_at)
    gap = RESTORE_MARGIN + int(RATE_BOUND * elapsed)
    names = set(archived) | set(replaced)
    floors = {
        name: max(archived.get(name, 0), replaced.get(name, 0)) + gap for name in sorted(names)
    }
    too_big = [name for name, value in floors.items() if value > MAX_SAFE_ID]
    if too_big:
        raise ValueError(f"id floors would pass 2**53 for {', '.join(too_big)}")
    return Floors(gap, floors)


def apply_floors(conn: sqlite3.Connection, floors: dict[str, int]) -> dict[str, int]:
    """Raise sqlite_sequence to the floors, in the caller's transaction; only ever up.
    Returns the sequences afterwards (tables missing from this schema are skipped)."""
    present = set(offline_store.autoincrement_tables(conn))
    for name, floor in floors.items():
        if name in present:
            offline_store.raise_sequence(conn, name, floor)
    return offline_store.sequences(conn)
