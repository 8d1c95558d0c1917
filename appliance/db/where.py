"""A WHERE clause built from optional filters, with its parameters in placeholder order:
the one way the stores turn a list endpoint's filters into SQL, so no store joins
clauses and parameters by hand (where they drift apart)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Param = str | int | float | bytes | None


class Where:
    """``Where("account_id = ?", account).eq_if("state", state).sql`` ->
    ``"account_id = ? AND state = ?"``; ``params`` are in the same order."""

    __slots__ = ("_clauses", "_params")

    def __init__(self, clause: str | None = None, *params: Param) -> None:
        self._clauses: list[str] = []
        self._params: list[Param] = []
        if clause is not None:
            self.add(clause, *params)

    def add(self, clause: str, *params: Param) -> Where:
        """A condition that always applies; ``clause`` has one ``?`` per param."""
        assert clause.count("?") == len(params), f"{clause!r} takes {len(params)} params"
        self._clauses.append(clause)
        self._params.extend(params)
        return self

    def add_if(self, clause: str, value: Param) -> Where:
        """``clause`` with ``value`` when the filter is given (not None)."""
        return self if value is None else self.add(clause, value)

    def eq_if(self, column: str, value: Param) -> Where:
        return self.add_if(f"{column} = ?", value)

    def each_if(self, pairs: Iterable[tuple[str, Param]]) -> Where:
        for clause, value in pairs:
            self.add_if(clause, value)
        return self

    def is_in(self, column: str, values: Sequence[Param]) -> Where:
        """``column IN (...)``; an empty ``values`` matches nothing (``0``)."""
        if not values:
            return self.add("0")
        return self.add(f"{column} IN ({','.join('?' * len(values))})", *values)

    @property
    def sql(self) -> str:
        return " AND ".join(self._clauses) if self._clauses else "1"

    @property
    def params(self) -> tuple[Param, ...]:
        return tuple(self._params)


__all__ = ["Param", "Where"]
