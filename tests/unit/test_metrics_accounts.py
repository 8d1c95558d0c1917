"""A deleted account's per-account gauges go away: the worker's monitor removes its label
sets (``forget_account``), and the exposition of every process (multiprocess mode, as
installed: prometheus-client cannot remove label sets there) leaves out those of
accounts that no longer exist."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import REGISTRY
from quart import Quart

from appliance.automations import auto_reply_step
from appliance.config import Settings
from appliance.db.database import Database
from appliance.messaging import store
from appliance.observability.metrics import ACCOUNT_GAUGE_NAMES, SEND_QUEUE_DEPTH, exposition
from appliance.worker.monitor import Monitor
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import A, _run, _sign_in


def _series_of(account: str) -> list[tuple[str, dict[str, str]]]:
    """Every sample of this process's registry labelled with ``account``."""
    return [
        (sample.name, sample.labels)
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.labels.get("account") == account
    ]


def test_the_monitor_removes_a_deleted_accounts_label_sets(tmp_path: Path, open_db: OpenDb) -> None:
    settings = Settings(data_dir=tmp_path, log_dir=tmp_path, run_dir=tmp_path)

    async def events_written() -> None:
        pass

    async def main() -> None:
        async with open_db(tmp_path / "appliance.db") as db:
            async with db.write() as conn:
                for account in ("del1", "stay1"):
                    await conn.execute(
                        "INSERT INTO accounts (id, name, engine, desired, state, created_at,"
                        " updated_at) VALUES (?, 'm', 'sandbox', 'connected', 'connected', 0, 0)",
                        (account,),
                    )
            monitor = Monitor(db, settings, events_written=events_written)
            await monitor.tick()
            names = {name for name, _ in _series_of("del1")}
            assert names == set(ACCOUNT_GAUGE_NAMES), names
            async with db.write() as conn:
                await conn.execute("DELETE FROM accounts WHERE id = 'del1'")
            await monitor.tick()
            assert _series_of("del1") == []  # not left at 0 for ever
            assert {name for name, _ in _series_of("stay1")} == set(ACCOUNT_GAUGE_NAMES)
            body, _ = exposition(accounts=["stay1"])
            assert b'account="stay1"' in body and b'account="del1"' not in body

    asyncio.run(main())


def test_the_multiprocess_exposition_leaves_out_accounts_that_do_not_exist(
    tmp_path: Path,
) -> None:
    """As installed (PROMETHEUS_MULTIPROC_DIR): the worker's values stay in its file after
    ``forget_account`` (prometheus-client cannot remove them there); the exposition the
    API serves leaves them out, given the accounts that exist. A process of its own:
    multiprocess mode is chosen when prometheus-client is imported."""
    script = textwrap.dedent(
        """
        from appliance.automations import auto_reply_step as ar
        from appliance.observability import metrics as m

        for account in ("gone", "kept"):
            m.ACCOUNT_STATE.labels(account=account, state="connected").set(1)
            m.SEND_QUEUE_DEPTH.labels(account=account).set(3)
            ar.FIRED.labels(account=account, rule="r1").inc()
        m.forget_account("gone")
        everything, _ = m.exposition()
        kept, _ = m.exposition(accounts=["kept"])
        print(b'account="gone"' in everything, b'account="gone"' in kept,
              b'account="kept"' in kept,
              b'appliance_auto_reply_fired_total{account="kept",rule="r1"} 1.0' in kept)
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    # Still in the worker's file, left out of what is served, the others kept.
    assert result.stdout.split() == ["True", "False", "True", "True"], result.stdout


def test_metrics_leave_out_every_series_of_a_deleted_account(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    """Deleted in the panel, an account's series are gone from what /metrics serves: the
    monitor's gauges and the auto-replies' counters (kept by the worker until it
    restarts), not only the families the observability package declares."""

    async def test(app: Quart, db: Database) -> None:
        async with db.write() as conn:
            await store.create_account(
                conn,
                account_id="acc_kept",
                name="Kept",
                engine="sandbox",
                engine_settings={},
                settings={},
                now=1.0,
            )
        for account in (A, "acc_kept"):
            SEND_QUEUE_DEPTH.labels(account=account).set(2)
            auto_reply_step.FIRED.labels(account=account, rule="r1").inc()
            auto_reply_step.COOLDOWN.labels(account=account, rule="r1").inc()
            auto_reply_step.SEND_ERRORS.labels(account=account, rule="r1").inc()
        client = app.test_client()
        auth = {"Authorization": "Bearer " + "m" * 32}

        async def scraped() -> str:
            response = await client.get("/metrics", headers=auth)
            assert response.status_code == 200
            return await response.get_data(as_text=True)

        before = await scraped()
        for family in ("fired", "cooldown", "send_errors"):
            assert f'appliance_auto_reply_{family}_total{{account="{A}",rule="r1"}}' in before
        assert f'appliance_send_queue_depth{{account="{A}"}}' in before

        status, _text, csrf = await _sign_in(client, "admin1")
        assert status == 303
        deleted = await client.post(
            f"/panel/accounts/{A}/delete", form={"csrf_token": csrf, "confirm": "Shop"}
        )
        assert deleted.status_code == 303, await deleted.get_data(as_text=True)
        assert await store.account_row(db, A) is None

        after = await scraped()
        assert f'account="{A}"' not in after
        for family in ("fired", "cooldown", "send_errors"):
            assert f'appliance_auto_reply_{family}_total{{account="acc_kept",rule="r1"}}' in after
        assert 'appliance_send_queue_depth{account="acc_kept"} 2.0' in after
        # Series without an account label are untouched.
        assert "appliance_http_requests_total{" in after

    _run(open_db, db_path, tmp_path, test)
