"""End to end: the real worker decides, `python -m sinks` writes, the rows equal the published states.

Inputs go to ``position-inputs``; a scripted exchange answers the worker's commands; the
worker publishes on ``position-updates``; the sink runs as its own process, exactly as
deployed, into a fresh database. The expected rows are the newest state of every position
the worker published (read from the topic), compared field by field.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from streams.domain import (
    CancelOrder,
    ClosePosition,
    Command,
    InputEvent,
    PlaceEntry,
    PlaceStopLoss,
    QueryOrder,
    ReportOutcome,
    Side,
    Signal,
    SignalAction,
    Status,
)
from tests.integration.pipeline_harness import (
    PARTITIONS,
    REPO_ROOT,
    InputSender,
    PipelineWorker,
    ScriptedExchange,
    UpdatesTap,
    now_ms,
)
from tests.integration.sink_support import (  # noqa: F401 - fresh_database is a fixture
    assert_events_match,
    assert_rows_match,
    events_by_key,
    fresh_database,
    positions_by_id,
    wait_until,
)

pytestmark = pytest.mark.integration


def exchange_script():
    """Fills entries (APTUSDT short by 0.8), rejects BADUSDT's first entry, accepts every stop."""
    rejected: set[str] = set()

    async def script(command: Command, inputs: InputSender) -> None:
        if isinstance(command, PlaceEntry):
            if command.symbol == "BADUSDT" and not rejected:
                rejected.add(command.client_order_id)
                await inputs.report(command, ReportOutcome.REJECTED, error_code=-2019,
                                    error_message="Margin is insufficient.")
                return
            await inputs.report(command, ReportOutcome.FILLED, filled_quantity=str(command.quantity),
                                average_price="10.00")
        elif isinstance(command, PlaceStopLoss):
            await inputs.report(command, ReportOutcome.ACCEPTED, stop_price=str(round(command.stop_price, 3)))
        elif isinstance(command, ClosePosition):
            await inputs.report(command, ReportOutcome.FILLED, filled_quantity=str(command.quantity),
                                average_price="10.50")
        elif isinstance(command, CancelOrder):
            await inputs.report(command, ReportOutcome.CANCELED)
        elif isinstance(command, QueryOrder):
            await inputs.report(command, ReportOutcome.NOT_FOUND)

    return script


def close_signal(symbol: str, signal_id: str) -> InputEvent:
    ts = now_ms()
    return InputEvent(event_id=f"signal:{signal_id}", key=f"{symbol}@binance", ts=ts, payload=Signal(
        signal_id=signal_id, action=SignalAction.CLOSE, symbol=symbol, exchange="binance", side=None,
        quantity=None, stop_loss_pct=None, ts=ts))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_sink_process(bootstrap: str, database_url: str, app_id: str, log_path: Path,
                       partitions: int = PARTITIONS, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m sinks` with the environment a deployment gives it (``extra_env`` on top)."""
    environment = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": database_url,
        "PIPELINE_APP_ID": app_id,
        "PIPELINE_TOPIC_PREFIX": f"{app_id}.",
        "PIPELINE_TOPIC_PARTITIONS": str(partitions),
        "PIPELINE_SINK_LINGER_S": "0.05",
        "PYTHONPATH": str(REPO_ROOT),
        **(extra_env or {}),
    }
    return subprocess.Popen([sys.executable, "-m", "sinks"], cwd=REPO_ROOT, env=environment,
                            stdin=subprocess.DEVNULL, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


async def test_rows_written_by_the_sink_process_equal_the_worker_final_states(
        kafka_bootstrap, fresh_database, unique_suffix, tmp_path):
    # Arrange: the real worker, the sink as its own process, a scripted exchange.
    app_id = f"sinkpipe-{unique_suffix}"
    # The worker reads histories from the sink's database (its web port is a free one of its own).
    worker = PipelineWorker(kafka_bootstrap, app_id, tmp_path / "data", tmp_path / "worker.log",
                            extra_env={"DATABASE_URL": fresh_database})
    await worker.start()
    sink_log = tmp_path / "sink.log"
    sink = start_sink_process(kafka_bootstrap, fresh_database, app_id, sink_log)
    updates = await UpdatesTap(kafka_bootstrap, worker.topics.updates).start()
    inputs = await InputSender(kafka_bootstrap, worker.topics.inputs).start()
    exchange = await ScriptedExchange(kafka_bootstrap, worker.topics.commands, inputs, exchange_script()).start()

    def status_of(key: str) -> Status | None:
        latest = updates.latest(key)
        return None if latest is None else latest.status

    async def wait_status(key: str, status: Status) -> None:
        await updates.wait_for(lambda: status_of(key) == status, 60,
                               f"{key} {status.value}; worker log:\n{worker.log_tail(2000)}")

    try:
        # Act
        # APTUSDT: opened, filled, protected; a second open refused; the exchange reports 61.0.
        await inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="e2e-apt-1")
        await wait_status("APTUSDT@binance", Status.ACTIVE)
        await inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="e2e-apt-2")
        await inputs.snapshot("APTUSDT", Side.BUY, "61.0", "10.00")
        await updates.wait_for(lambda: updates.latest("APTUSDT@binance").quantity == Decimal("61.0"), 60,
                               "the exchange's quantity")
        # BADUSDT: rejected (rolled back), opened again, then closed by a signal.
        await inputs.open("BADUSDT", Side.SELL, "5", signal_id="e2e-bad-1")
        await wait_status("BADUSDT@binance", Status.ROLLED_BACK)
        await inputs.open("BADUSDT", Side.SELL, "5", signal_id="e2e-bad-2", stop_loss_pct=None)
        await wait_status("BADUSDT@binance", Status.ACTIVE)
        await inputs.send(close_signal("BADUSDT", "e2e-bad-3"))
        await wait_status("BADUSDT@binance", Status.CLOSED)
        # ADOPTUSDT: found on the exchange, adopted and protected.
        await inputs.snapshot("ADOPTUSDT", Side.BUY, "3.25", "101.5")
        await wait_status("ADOPTUSDT@binance", Status.ACTIVE)
        await updates.wait_audited(kafka_bootstrap, worker.topics.inputs)

        expected_positions = {p.id: p for p in updates.positions()}.values()
        expected_audits = updates.audits()

        async def sink_caught_up() -> bool:
            try:
                rows, events = await positions_by_id(fresh_database), await events_by_key(fresh_database)
            except asyncpg.UndefinedTableError:
                return False  # the sink has not migrated the new database yet
            return len(events) == len({(a.key, a.offset) for a in expected_audits}) and \
                {i: r["version"] for i, r in rows.items()} == {p.id: p.version for p in expected_positions}

        await wait_until(sink_caught_up, 60, f"the sink to catch up; sink log:\n{sink_log.read_text()[-3000:]}")
        # The histories the worker serves from the sink's tables.
        histories = {key: await worker.get_json(f"/positions/{key}/history/")
                     for key in ("APTUSDT@binance", "BADUSDT@binance")}
        newest_only = await worker.get_json("/positions/BADUSDT@binance/history/?limit=1")
        never = await worker.get_json("/positions/NEVERUSDT@binance/history/")
        bad_limit = await worker.get_json("/positions/BADUSDT@binance/history/?limit=0")
        timeline = await get_text(f"{worker.web_url}/positions/APTUSDT@binance/history.html")
        ended = await worker.get_json("/positions/closed/")
        ended_of_apt = await worker.get_json("/positions/closed/?symbol=APTUSDT")
        ended_bad_window = await worker.get_json("/positions/closed/?hours=0")
        ended_page = await get_text(f"{worker.web_url}/positions/closed.html?symbol=BADUSDT")
    finally:
        await exchange.stop()
        await inputs.stop()
        await updates.stop()
        worker.stop()
        sink.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(sink.wait, 60)

    # Assert: every row is the worker's newest state of its position, field by field.
    rows = await positions_by_id(fresh_database)
    assert_rows_match(rows, expected_positions)
    assert_events_match(await events_by_key(fresh_database), expected_audits)
    by_key: dict[str, list[dict]] = {}
    for row in rows.values():
        by_key.setdefault(row["key"], []).append(row)
    (apt,) = by_key["APTUSDT@binance"]
    assert (apt["status"], apt["quantity"], apt["requested_quantity"], apt["source"], apt["signal_id"]) == \
        ("active", Decimal("61.0"), Decimal("61.8"), "signal", "e2e-apt-1")
    assert apt["stop_loss_price"] is not None and apt["entry_price"] == Decimal("10.00")
    assert sorted(row["status"] for row in by_key["BADUSDT@binance"]) == ["closed", "rolled_back"]
    (adopted,) = by_key["ADOPTUSDT@binance"]
    assert (adopted["source"], adopted["signal_id"], adopted["status"]) == ("exchange", None, "active")
    events = await events_by_key(fresh_database)
    assert any(e["decision"] == "refused" and e["key"] == "APTUSDT@binance" for e in events.values())
    assert exit_code == 0, sink_log.read_text()[-3000:]
    assert "postgres sink stopped" in sink_log.read_text()
    assert_histories_tell_each_position_story(histories, expected_positions, expected_audits)
    assert newest_only[0] == 200 and [p["status"] for p in newest_only[1]["positions"]] == ["closed"]
    assert never[0] == 404 and bad_limit[0] == 400
    page_status, page = timeline
    assert page_status == 200 and by_key["APTUSDT@binance"][0]["id"] in page
    assert page.count('class="event refused"') == 1  # the second open, highlighted
    # The ended positions: BADUSDT's two (closed, rolled back), newest first; none of APTUSDT's.
    assert ended[0] == 200 and [(p["key"], p["status"]) for p in ended[1]] == [
        ("BADUSDT@binance", "closed"), ("BADUSDT@binance", "rolled_back")]
    assert ended_of_apt == (200, []) and ended_bad_window[0] == 400
    assert ended_page[0] == 200 and all(f'data-position-id="{p["id"]}"' in ended_page[1] for p in ended[1])
    assert 'href="BADUSDT@binance/history.html"' in ended_page[1]


async def get_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as reply:
            return reply.status, await reply.text()


def assert_histories_tell_each_position_story(histories: dict, positions, audits) -> None:
    """Each key's history: its positions newest first, each with its audit records in log order."""
    for key, (status, history) in histories.items():
        assert status == 200, history
        own = sorted((p for p in positions if f"{p.symbol}@{p.exchange}" == key), key=lambda p: p.opened_at,
                     reverse=True)
        assert history["key"] == key
        assert [(p["id"], p["status"]) for p in history["positions"]] == [(p.id, p.status.value) for p in own]
        for served in history["positions"]:
            expected = [(a.offset, a.input_kind.value, a.decision.value, a.reason,
                         a.status_after.value if a.status_after else None, a.client_order_id,
                         a.order_role.value if a.order_role else None,
                         a.order_outcome.value if a.order_outcome else None)
                        for a in sorted(audits, key=lambda a: a.offset) if a.position_id == served["id"]]
            assert [(e["offset"], e["kind"], e["decision"], e["reason"], e["status_after"], e["client_order_id"],
                     e["role"], e["outcome"]) for e in served["events"]] == expected
            assert [e["at"] for e in served["events"]] == sorted(e["at"] for e in served["events"])
    (apt,) = histories["APTUSDT@binance"][1]["positions"]
    kinds = [(e["kind"], e["decision"], e["status_after"]) for e in apt["events"]]
    assert kinds[0] == ("signal", "applied", "pending_entry") and apt["events"][0]["role"] == "entry"
    assert ("signal", "refused", "active") in kinds  # the second open, refused while the position lived
    closed, rolled_back = histories["BADUSDT@binance"][1]["positions"]
    assert (closed["status"], rolled_back["status"]) == ("closed", "rolled_back")
    assert rolled_back["events"][-1]["status_after"] == "rolled_back"
