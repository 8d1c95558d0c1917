"""The WHERE builder keeps clauses and parameters in step."""

from __future__ import annotations

import sqlite3

import pytest

from appliance.db.where import Where


def test_optional_filters_are_left_out_and_params_follow_placeholders() -> None:
    where = Where("account_id = ?", "acc").eq_if("state", None).eq_if("chat", "c1")
    where.each_if((("created_at >= ?", 5.0), ("created_at < ?", None)))
    assert where.sql == "account_id = ? AND chat = ? AND created_at >= ?"
    assert where.params == ("acc", "c1", 5.0)


def test_in_lists_and_the_empty_list() -> None:
    assert Where().is_in("id", [1, 2, 3]).sql == "id IN (?,?,?)"
    assert Where().is_in("id", []).sql == "0"  # matches nothing
    assert Where().sql == "1"  # no filter: everything


def test_a_clause_with_the_wrong_number_of_params_is_refused() -> None:
    with pytest.raises(AssertionError):
        Where("a = ? AND b = ?", 1)


def test_it_runs_in_sqlite() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER, state TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "a")])
    where = Where().eq_if("state", "a").is_in("id", [1, 2])
    rows = conn.execute(f"SELECT id FROM t WHERE {where.sql}", where.params).fetchall()
    assert rows == [(1,)]
