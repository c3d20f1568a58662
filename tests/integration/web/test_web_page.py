"""The HTML page of positions, as a person sees it: headless Chromium, a screenshot and the DOM.

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
