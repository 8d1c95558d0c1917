"""The operations runbook stays complete: every /readyz check has its section, and
every operator command of appliance/ops has its page."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from appliance import cli

REPO = Path(__file__).resolve().parents[2]


def readyz_check_names() -> set[str]:
    """The keys of the ``checks`` dict /readyz answers with (appliance/api/health.py)."""
    tree = ast.parse((REPO / "appliance/api/health.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "checks" for t in targets):
            value = node.value
            if isinstance(value, ast.Dict):
                names |= {k.value for k in value.keys if isinstance(k, ast.Constant)}
        # checks["disk"] = ... added later
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "checks"
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.slice, ast.Constant)
        ):
            names.add(node.slice.value)
    return names


def test_every_readyz_check_is_documented() -> None:
    names = readyz_check_names()
    assert {"database", "worker", "shutdown"} <= names  # the parse found the checks
    page = (REPO / "runbook/readyz.md").read_text()
    headings = set(re.findall(r"^## `([a-z_]+)`$", page, re.MULTILINE))
    assert names <= headings, f"undocumented /readyz checks: {sorted(names - headings)}"


def test_every_ops_command_has_a_runbook_page() -> None:
    parser = cli.build_parser()
    commands = {
        name
        for action in parser._subparsers._group_actions  # type: ignore[union-attr]
        for name in action.choices  # type: ignore[union-attr]
    }
    pages = {
        "backup": "backup.md",
        "restore": "restore.md",
        "support-bundle": "support-bundle.md",
        "rotate": "secrets.md",
    }
    index = (REPO / "runbook/README.md").read_text()
    for command, page in pages.items():
        assert command in commands
        text = (REPO / "runbook" / page).read_text()
        assert f"appliancectl {command}" in text
        assert f"({page})" in index, page
    database = (REPO / "runbook/database.md").read_text()
    assert 'sqlite3 /var/lib/appliance/appliance.db ".backup' not in database
