"""The HTML page of positions, as a person sees it: headless Chromium, a screenshot and the DOM.

The desk's test runs the real exchange edge (ccxt) against the emulator: mark price and
unrealized PnL from its positionRisk, the sync's age (and its staleness once the fetches
fail), the feed of refusals and dead letters, the live position against the exchange on
its timeline.

A scripted exchange puts five keys in five different live statuses; Chromium (Debian's
``chromium`` package, never a downloaded browser) loads the worker's page, takes a
1280x800 screenshot and dumps the DOM after the page's script has run.

Chromium is installed with ``apt-get install -y chromium`` when it is missing and the
tests run as root (as in CI); anywhere else a missing browser fails the test with the
command to run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from streams.domain import (
    CancelOrder,
    ClosePosition,
    Command,
    InputEvent,
    PlaceEntry,
    PlaceStopLoss,
    ReportOutcome,
    Side,
    Signal,
    SignalAction,
)
from tests.integration.pipeline_harness import PARTITIONS, InputSender, ScriptedExchange, now_ms
from tests.integration.sink_support import fresh_database  # noqa: F401 - a fixture
from tests.integration.sinks.test_sink_pipeline import start_sink_process
from tests.integration.web.test_web_endpoint import start_web_worker, wait_for_positions, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=3000")

#: symbol -> (side, the status the script leaves it in)
SCENARIO = {
    "APTUSDT": (Side.BUY, "active"),
    "BTCUSDT": (Side.SELL, "pending_sl"),
    "ETHUSDT": (Side.BUY, "pending_entry"),
    "SOLUSDT": (Side.BUY, "entry_placed"),
    "XRPUSDT": (Side.SELL, "closing"),
}


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium, installing the package when missing and allowed to."""
    if not Path(CHROMIUM).exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=900)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get install -y chromium` (Debian's package)")
    return CHROMIUM


def run_chromium(chromium: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    """One headless Chromium run with a throwaway profile; output captured."""
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
                          capture_output=True, timeout=120, check=False)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", header[16:24])


def statuses_script():
    """An exchange that leaves each symbol of ``SCENARIO`` in its status."""

    async def script(command: Command, inputs: InputSender) -> None:
        target = SCENARIO[command.symbol][1]
        if isinstance(command, PlaceEntry):
            if target == "entry_placed":
                await inputs.report(command, ReportOutcome.ACCEPTED)
            elif target != "pending_entry":
                await inputs.report(command, ReportOutcome.FILLED, filled_quantity=str(command.quantity),
                                    average_price="9.8765")
        elif isinstance(command, PlaceStopLoss) and target in ("active", "closing"):
            await inputs.report(command, ReportOutcome.ACCEPTED, stop_price=str(round(command.stop_price, 4)))
        elif isinstance(command, CancelOrder):
            await inputs.report(command, ReportOutcome.CANCELED)
        elif isinstance(command, ClosePosition):
            pass  # the close stays in flight: "closing"

    return script


async def close_signal(inputs: InputSender, symbol: str) -> None:
    ts = now_ms()
    await inputs.send(InputEvent(
        event_id=f"signal:close-{symbol}", key=f"{symbol}@binance", ts=ts,
        payload=Signal(signal_id=f"close-{symbol}", action=SignalAction.CLOSE, symbol=symbol, exchange="binance",
                       side=None, quantity=None, stop_loss_pct=None, ts=ts)))


async def wait_for_statuses(session: aiohttp.ClientSession, url: str, expected: dict[str, str],
                            timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    current: dict[str, str] = {}
    while time.monotonic() < deadline:
        async with session.get(f"{url}/positions/") as response:
            if response.status == 200:
                current = {p["symbol"]: p["status"] for p in await response.json()}
                if current == expected:
                    return
        await asyncio.sleep(0.25)
    raise AssertionError(f"statuses {current} never became {expected}")


async def test_page_shows_open_and_in_flight_positions_in_headless_chromium(
        kafka_bootstrap, unique_suffix, tmp_path, chromium):
    # Arrange: five keys in five live statuses.
    web = await start_web_worker(kafka_bootstrap, f"webpage-{unique_suffix}", tmp_path / "w")
    inputs = await InputSender(kafka_bootstrap, web.worker.topics.inputs).start()
    exchange = await ScriptedExchange(kafka_bootstrap, web.worker.topics.commands, inputs, statuses_script()).start()
    try:
        async with aiohttp.ClientSession() as session:
            for index, (symbol, (side, _)) in enumerate(SCENARIO.items()):
                await inputs.open(symbol, side, str(Decimal("10.5") * (index + 1)), stop_loss_pct="2.5")
            await wait_for_positions(session, web.url, {f"{s}@binance" for s in SCENARIO})
            await wait_for_statuses(session, web.url, {**{s: "active" if t == "closing" else t
                                                          for s, (_, t) in SCENARIO.items()}})
            await close_signal(inputs, "XRPUSDT")
            await wait_for_statuses(session, web.url, {s: t for s, (_, t) in SCENARIO.items()})

        # Act
        screenshot = tmp_path / "positions.png"
        shot = run_chromium(chromium, tmp_path / "profile-shot", f"--screenshot={screenshot}",
                            "--window-size=1280,800", f"{web.url}/")
        dom = run_chromium(chromium, tmp_path / "profile-dom", "--dump-dom", f"{web.url}/")
    finally:
        await exchange.stop()
        await inputs.stop()
        web.worker.stop()

    # Assert: a real picture of the page...
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr.decode(errors="replace")[-2000:]
    assert png_size(screenshot) == (1280, 800)
    assert screenshot.stat().st_size > 20_000  # a blank or error page compresses to far less
    print(f"screenshot: {screenshot}")
    # ... whose DOM, after its script ran, shows every position with its status.
    html = dom.stdout.decode()
    assert dom.returncode == 0 and "<table" in html, dom.stderr.decode(errors="replace")[-2000:]
    for symbol, (side, status) in SCENARIO.items():
        assert f'data-key="{symbol}@binance"' in html
        assert f"st-{status}" in html
    for label in ("pending entry", "entry placed", "pending stop-loss", "active", "closing"):
        assert label in html
    assert 'id="n-total">5<' in html
    assert 'id="banner" class="banner"' in html  # no error banner: the script's refresh worked
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", html)  # nothing loaded from elsewhere


async def test_history_timeline_tells_a_position_story_in_headless_chromium(
        kafka_bootstrap, fresh_database, unique_suffix, tmp_path, chromium):
    # Arrange: a worker reading histories from the sink's database; APTUSDT opened, filled,
    # protected (active), then a second open refused while it lives.
    app_id = f"history-{unique_suffix}"
    web = await start_web_worker(kafka_bootstrap, app_id, tmp_path / "w", DATABASE_URL=fresh_database)
    sink = start_sink_process(kafka_bootstrap, fresh_database, app_id, tmp_path / "sink.log", partitions=PARTITIONS)
    inputs = await InputSender(kafka_bootstrap, web.worker.topics.inputs).start()
    exchange = await ScriptedExchange(kafka_bootstrap, web.worker.topics.commands, inputs, statuses_script()).start()
    history_url = f"{web.url}/positions/APTUSDT@binance/history"
    try:
        async with aiohttp.ClientSession() as session:
            await inputs.open("APTUSDT", Side.BUY, "10.5", stop_loss_pct="2.5")
            await wait_for_statuses(session, web.url, {"APTUSDT": "active"})
            await inputs.open("APTUSDT", Side.BUY, "10.5", stop_loss_pct="2.5")

            async def refusal_recorded() -> bool:
                async with session.get(f"{history_url}/") as response:
                    if response.status != 200:
                        return False
                    events = (await response.json())["positions"][0]["events"]
                    return any(event["decision"] == "refused" for event in events)

            await wait_until(refusal_recorded, 60, "the refused open in the history")
            async with session.get(f"{history_url}/") as response:
                history = await response.json()

        # Act
        screenshot = tmp_path / "history.png"
        shot = run_chromium(chromium, tmp_path / "profile-shot", f"--screenshot={screenshot}",
                            "--window-size=1280,800", f"{history_url}.html")
        dom = run_chromium(chromium, tmp_path / "profile-dom", "--dump-dom", f"{history_url}.html")
        page = run_chromium(chromium, tmp_path / "profile-page", "--dump-dom", f"{web.url}/")
    finally:
        await exchange.stop()
        await inputs.stop()
        web.worker.stop()
        sink.terminate()
        await asyncio.to_thread(sink.wait, 60)

    # Assert: a real picture...
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr.decode(errors="replace")[-2000:]
    assert png_size(screenshot) == (1280, 800) and screenshot.stat().st_size > 20_000
    print(f"screenshot: {screenshot}")
    # ... of the events in log order, one row each, the refusal highlighted, durations between steps.
    html = dom.stdout.decode()
    (position,) = history["positions"]
    offsets = [int(offset) for offset in re.findall(r'class="event[^"]*" data-offset="(\d+)"', html)]
    assert offsets == [event["offset"] for event in position["events"]] == sorted(offsets)
    assert len(re.findall(r'class="event refused"', html)) == 1
    assert [event["status_after"] for event in position["events"]][:1] == ["pending_entry"]
    assert re.search(r">\+\d+(\.\d)? m?s<", html)  # the time since the step before
    assert f'data-position-id="{position["id"]}"' in html
    # The positions page links the position to this timeline.
    assert 'href="positions/APTUSDT@binance/history.html"' in page.stdout.decode()


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, object]:
    async with session.get(url) as response:
        return response.status, await response.json(content_type=None)


async def test_desk_page_shows_mark_pnl_sync_age_turned_away_inputs_and_the_position_against_the_exchange(
        kafka_bootstrap, fresh_database, unique_suffix, tmp_path, chromium):
    # Arrange: a worker with the real exchange edge (ccxt) on the emulator, synced every second,
    # and the sink writing the audit log; APTUSDT opened long 61.8 at the mark, 10.00.
    emulator = BinanceUsdmEmulator()
    base_url = await emulator.start()
    app_id = f"desk-{unique_suffix}"
    web = await start_web_worker(kafka_bootstrap, app_id, tmp_path / "w", DATABASE_URL=fresh_database,
                                 PIPELINE_EXCHANGE_EDGE="on", BINANCE_FUTURES_URL=base_url,
                                 BINANCE_API_KEY=DEFAULT_API_KEY, BINANCE_API_SECRET=DEFAULT_API_SECRET,
                                 SYNC_INTERVAL_S="1")
    sink = start_sink_process(kafka_bootstrap, fresh_database, app_id, tmp_path / "sink.log", partitions=PARTITIONS)
    inputs = await InputSender(kafka_bootstrap, web.worker.topics.inputs).start()
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await raw.start()
    key_url = f"{web.url}/positions/APTUSDT@binance"
    shots: dict[str, Path] = {}
    doms: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession() as session:
            await inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="desk-open", stop_loss_pct="2.5")
            await wait_for_statuses(session, web.url, {"APTUSDT": "active"})
            # The mark moves up (the stop at 9.75 stays untouched); one more open is refused and
            # one undecodable input is dead-lettered.
            emulator.set_mark_price("APTUSDT", "10.2000")

            async def marked() -> bool:
                status, body = await get_json(session, f"{key_url}/")
                return status == 200 and body["mark_price"] is not None and \
                    Decimal(body["mark_price"]) == Decimal("10.2")

            await wait_until(marked, 60, "the new mark price in the position")
            await inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="desk-second-open", stop_loss_pct="2.5")
            await raw.send_and_wait(web.worker.topics.inputs, key=b"APTUSDT@binance", value=b"{not an input}")

            async def fed() -> bool:
                status, body = await get_json(session, f"{web.url}/refusals/")
                return status == 200 and any(r["refusal_code"] == "already_open" for r in body["refusals"]) \
                    and any(d["key"] == "APTUSDT@binance" for d in body["dead_letters"])

            await wait_until(fed, 60, "the refusal and the dead letter in the feed")
            _, position = await get_json(session, f"{key_url}/")
            _, feed = await get_json(session, f"{web.url}/refusals/")

            # Act: the page and the timeline as a browser shows them while the sync runs...
            for name, url in (("desk", f"{web.url}/"), ("timeline", f"{key_url}/history.html")):
                shots[name] = tmp_path / f"{name}.png"
                shot = run_chromium(chromium, tmp_path / f"profile-shot-{name}", f"--screenshot={shots[name]}",
                                    "--window-size=1280,1000", url)
                assert shot.returncode == 0, shot.stderr.decode(errors="replace")[-2000:]
                doms[name] = run_chromium(chromium, tmp_path / f"profile-dom-{name}", "--dump-dom", url).stdout.decode()
            # ... and once every position fetch has failed for longer than the page lets a sync be old.
            emulator.add_fault("http_error", count=None, method="GET", path="/fapi/v3/positionRisk", status=503)

            async def stale() -> bool:
                async with session.get(f"{web.url}/") as response:
                    return 'class="sync stale" data-exchange="binance"' in await response.text()

            await wait_until(stale, 60, "the binance sync to show stale")
            shots["stale"] = tmp_path / "desk-stale.png"
            run_chromium(chromium, tmp_path / "profile-shot-stale", f"--screenshot={shots['stale']}",
                         "--window-size=1280,1000", f"{web.url}/")
            doms["stale"] = run_chromium(chromium, tmp_path / "profile-dom-stale", "--dump-dom",
                                         f"{web.url}/").stdout.decode()
    finally:
        await raw.stop()
        await inputs.stop()
        web.worker.stop()
        sink.terminate()
        await asyncio.to_thread(sink.wait, 60)
        await emulator.stop()

    # Assert: real pictures...
    for name, path in shots.items():
        assert path.exists() and png_size(path) == (1280, 1000) and path.stat().st_size > 20_000, name
        print(f"screenshot ({name}): {path}")
    # ... of the page with the exchange's mark and PnL (61.8 x (10.20 - 10.00)) in the position's row,
    desk = doms["desk"]
    row = re.search(r'<tr data-key="APTUSDT@binance">(.*?)</tr>', desk, re.S)
    assert row, desk[-3000:]
    assert re.search(r'<td class="num mark">10\.20*</td>', row.group(1))
    assert re.search(r'<td class="num pnl pnl-pos">12\.360*</td>', row.group(1))
    assert Decimal(position["unrealized_pnl"]) == Decimal("12.36")
    # the sync fresh then (the age in whole seconds), stale once the fetches failed,
    syncs = re.search(r"<section class=\"syncs\" id=\"syncs\">(.*?)</section>", desk, re.S)
    assert syncs and re.search(r'<div class="sync" data-exchange="binance"><b>binance</b><span class="sync-age">'
                               r"last snapshot \d+s ago</span>", syncs.group(1)), syncs.group(1)
    assert '<div class="sync stale" data-exchange="binance"' in doms["stale"]
    # the refusal with its code and the dead letter with its reason, as the feed answered,
    assert feed["problems"] == []
    refusal = next(r for r in feed["refusals"] if r["refusal_code"] == "already_open")
    letter = next(d for d in feed["dead_letters"] if d["key"] == "APTUSDT@binance")
    refusals = re.search(r'<tbody id="refusals">(.*?)</tbody>', desk, re.S).group(1)
    dead_letters = re.search(r'<tbody id="dead-letters">(.*?)</tbody>', desk, re.S).group(1)
    assert re.search(r'<div id="feed-problems" class="feed problems"></div>', desk)
    assert '<td class="code">already_open</td>' in refusals and refusal["at"] in refusals
    assert f'<td class="code">{letter["error_type"]}</td>' in dead_letters and "APTUSDT@binance" in dead_letters
    # and the timeline with the live position's quantity and stop against the exchange's.
    timeline = doms["timeline"]
    assert 'id="versus"' in timeline
    assert re.search(r'<tr data-check="quantity" class=""><td>quantity</td><td class="num ours">61\.8</td>'
                     r'<td class="num theirs">61\.8</td><td class="verdict">agrees</td>', timeline)
    assert re.search(r'<tr data-check="stop" class="">.*?<td class="num ours">61\.8</td>'
                     r'<td class="num theirs">61\.8</td><td class="verdict">agrees</td>', timeline)
    assert re.search(r'<tr data-check="stop_price" class="">.*?<td class="num ours">9\.75</td>'
                     r'<td class="num theirs">10\.20*</td>', timeline)
    assert re.search(r'<td class="num theirs pnl-pos">12\.360*</td>', timeline)
