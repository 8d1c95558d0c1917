"""appliancectl without an installation: its help text, and how `reload` decides."""

from __future__ import annotations

import argparse
import re
import sqlite3
from pathlib import Path

import pytest

from appliance import cli
from appliance.config import Paths, load_settings
from appliance.db.migrate import latest_version

# reStructuredText a terminal shows as noise: ``literals``, `interpreted text`,
# :roles:`x`, and directives.
RST = re.compile(r"``|`[^`\n]+`|:[a-z]+:`|^\s*\.\. [a-z-]+::", re.MULTILINE)


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.extend(_parsers(child))
    return found


def test_help_shows_no_rst_markup() -> None:
    parsers = _parsers(cli.build_parser())
    assert len(parsers) > 15  # every command and sub-command, not just the top
    for prog, parser in parsers:
        text = parser.format_help()
        assert not RST.search(text), f"{prog} --help shows markup: {RST.search(text)}"
    top = cli.build_parser().format_help()
    assert "<prefix>/opt/appliance/venv" in top and "reload" in top and "supervisorctl" in top


def test_help_through_the_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: appliancectl") and not RST.search(out)


@pytest.fixture
def installation(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True)
    paths.opt.mkdir(parents=True)
    paths.env_file.write_text("PORT=18080\nAPI_PROCESSES=2\n")
    paths.supervisord_conf.write_text("[supervisord]\n")
    for directory in (paths.default_run_dir, paths.default_data_dir):
        directory.mkdir(parents=True)
    return paths


def _schema(paths: Paths, version: int) -> None:
    conn = sqlite3.connect(paths.default_data_dir / "appliance.db")
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER)")
        conn.execute("INSERT INTO schema_migrations VALUES (?)", (version,))
    conn.close()


def _started(paths: Paths) -> None:
    settings = load_settings(paths, environ={})
    cli._record_start(paths, cli.supervisord_environment(paths, settings))


def _plan(paths: Paths) -> tuple[str, str]:
    return cli.reload_plan(paths, load_settings(paths, environ={}))


def test_reload_is_rolling_only_when_nothing_supervisord_uses_changed(
    installation: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in cli.SUPERVISORD_SETTINGS:  # the test run's own environment stays out
        monkeypatch.delenv(key, raising=False)
    paths = installation
    assert _plan(paths) == ("full", "no record of how the running supervisord was started")
    _started(paths)
    assert _plan(paths) == ("full", "no database yet")
    _schema(paths, latest_version())
    assert _plan(paths)[0] == "rolling"

    # A new listening socket or process count needs a new supervisord.
    paths.env_file.write_text("PORT=18081\nAPI_PROCESSES=3\n")
    plan, why = _plan(paths)
    assert plan == "full" and "PORT" in why and "API_PROCESSES" in why, why
    paths.env_file.write_text("PORT=18080\nAPI_PROCESSES=2\n")
    # Settings only the processes read (not supervisord) are applied by a rolling restart.
    paths.env_file.write_text("PORT=18080\nAPI_PROCESSES=2\nLOG_LEVEL=DEBUG\n")
    assert _plan(paths)[0] == "rolling"

    paths.supervisord_conf.write_text("[supervisord]\nminfds=8192\n")
    assert _plan(paths) == ("full", f"{paths.supervisord_conf} changed")
    _started(paths)
    assert _plan(paths)[0] == "rolling"


def test_reload_stops_and_starts_for_a_schema_change(installation: Paths) -> None:
    _started(installation)
    _schema(installation, latest_version() - 1)
    assert _plan(installation) == (
        "full",
        f"database schema {latest_version() - 1} -> {latest_version()}",
    )


class _FakeSupervisor:
    def getAllProcessInfo(self) -> list[dict[str, str]]:
        return [
            {"group": "worker", "name": "worker"},
            {"group": "api", "name": "api_00"},
            {"group": "api", "name": "api_01"},
        ]


@pytest.mark.parametrize(
    ("given", "namespec"),
    [("worker", "worker"), ("api", "api:*"), ("api:api_01", "api:api_01"), ("nope", "nope")],
)
def test_process_names(given: str, namespec: str) -> None:
    assert cli._namespec(_FakeSupervisor(), given) == namespec


def test_a_prefix_install_is_checked_against_its_own_user_even_when_a_service_user_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A system install elsewhere on the machine (its `appliance` user) must not make
    a --prefix install's secret files look like they belong to the wrong user."""
    import pwd

    real = pwd.getpwnam

    def getpwnam(name: str) -> pwd.struct_passwd:
        if name == cli.SERVICE_USER:
            return pwd.struct_passwd(("appliance", "x", 4242, 4242, "", "/", "/bin/false"))
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    assert cli._service_uid(Paths(tmp_path)) == 0  # the installing user runs it
    assert cli._service_uid(Paths(Path("/"))) == 4242  # the system install's service user
