"""The table-view web endpoint on real workers and the real broker (contract section 5).

One worker: ``/positions/`` lists every live position with the contract's columns,
``/positions/KEY/`` answers 200/404, Faust's built-in views are gone, ``/health``,
``/ready`` and ``/metrics`` answer, and ``WEB_AUTH_TOKEN`` guards every route. Two workers
of one group: every key is answered correctly from both workers' ports (the non-owner
forwards to the owner) and ``/positions/`` is complete from either.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from streams.domain import Side
from streams.web.render import CONTRACT_COLUMNS
from streams.web.routing import partition_for_key
from tests.integration.pipeline_harness import InputSender, PipelineWorker, free_port

pytestmark = pytest.mark.integration

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")
#: No deadline passes during a test: the positions stay where the test put them.
LONG_DEADLINES = {"PIPELINE_ENTRY_TIMEOUT_S": "600", "PIPELINE_STOP_LOSS_TIMEOUT_S": "600",
                  "PIPELINE_CLOSE_TIMEOUT_S": "600"}


@dataclass
class WebWorker:
    """A pipeline worker and the base URL of its web server."""

    worker: PipelineWorker
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_web_worker(bootstrap: str, app_id: str, folder: Path, **env: str) -> WebWorker:
    """Starts one ``python -m streams worker`` with its web server on a free port."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    worker = PipelineWorker(bootstrap, app_id, folder / "data", folder / "worker.log",
                            extra_env={**LONG_DEADLINES, "WEB_PORT": str(port), **env})
    await worker.start()
    return WebWorker(worker, port)


async def get(session: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, object, aiohttp.ClientResponse]:
    """(status, JSON body or text, response) of a GET."""
    async with session.get(url, **kwargs) as response:
        text = await response.text()
        body: object = text
        if response.content_type == "application/json":
            body = await response.json()
        return response.status, body, response


async def wait_until(predicate, timeout_s: float = 60.0, what: str = "") -> None:
    """Polls the async ``predicate`` until it is true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")


async def wait_for_positions(session: aiohttp.ClientSession, base_url: str, keys: set[str],
                             timeout_s: float = 60.0) -> list[dict]:
    """``/positions/`` once it lists a position for every key in ``keys``."""
    found: list[dict] = []

    async def listed() -> bool:
        nonlocal found
        status, body, _ = await get(session, f"{base_url}/positions/")
        found = body if status == 200 else []
        return keys <= {p["key"] for p in found}

    await wait_until(listed, timeout_s, f"{sorted(keys)} on {base_url}/positions/")
    return found


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


@pytest.fixture
async def one_worker(kafka_bootstrap, unique_suffix, tmp_path) -> AsyncIterator[tuple[WebWorker, InputSender]]:
    web = await start_web_worker(kafka_bootstrap, f"web-{unique_suffix}", tmp_path / "w1")
    inputs = await InputSender(kafka_bootstrap, web.worker.topics.inputs).start()
    try:
        yield web, inputs
    finally:
        await inputs.stop()
        web.worker.stop()


async def test_positions_lists_every_live_position_with_the_contract_columns(one_worker, session):
    # Arrange
    web, inputs = one_worker
    keys = {"APTUSDT@binance", "BTCUSDT@binance", "ETHUSDT@binance"}

    # Act
    await inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-web-1")
    await inputs.open("BTCUSDT", Side.SELL, "0.015", signal_id="sig-web-2")
    await inputs.open("ETHUSDT", Side.BUY, "1.50", signal_id="sig-web-3")
    positions = await wait_for_positions(session, web.url, keys)

    # Assert
    assert len(positions) == 3
    by_key = {p["key"]: p for p in positions}
    for position in positions:
        assert set(CONTRACT_COLUMNS) <= set(position)
        assert position["status"] == "pending_entry" and position["source"] == "signal"
        assert ISO_UTC.match(position["opened_at"]) and ISO_UTC.match(position["updated_at"])
        assert position["closed_at"] is None and position["entry_price"] is None
        assert DECIMAL.match(position["quantity"])
    assert by_key["BTCUSDT@binance"]["side"] == "SELL" and by_key["BTCUSDT@binance"]["quantity"] == "0.015"
    assert by_key["ETHUSDT@binance"]["quantity"] == "1.50"  # the scale as sent, as a string
    assert by_key["APTUSDT@binance"]["signal_id"] == "sig-web-1"
    assert by_key["APTUSDT@binance"]["id"] == "APTUSDT@binance/0"


async def test_position_of_a_key_is_200_with_its_position_and_404_without_one(one_worker, session):
    # Arrange
    web, inputs = one_worker
    await inputs.open("APTUSDT", Side.BUY, "61.8", signal_id="sig-key-1")
    await wait_for_positions(session, web.url, {"APTUSDT@binance"})

    # Act
    found = await get(session, f"{web.url}/positions/APTUSDT@binance/")
    encoded = await get(session, f"{web.url}/positions/APTUSDT%40binance/")
    unknown = await get(session, f"{web.url}/positions/DOGEUSDT@binance/")
    other_exchange = await get(session, f"{web.url}/positions/APTUSDT@bybit/")
    malformed = await get(session, f"{web.url}/positions/not-a-key/")

    # Assert
    assert found[0] == 200 and found[1]["symbol"] == "APTUSDT" and found[1]["signal_id"] == "sig-key-1"
    assert set(CONTRACT_COLUMNS) <= set(found[1])
    assert encoded[0] == 200 and encoded[1]["id"] == found[1]["id"]
    assert (unknown[0], other_exchange[0], malformed[0]) == (404, 404, 404)


async def test_faust_builtin_views_are_off_and_the_server_is_read_only(one_worker, session):
    # Arrange
    web, _ = one_worker

    # Act
    builtins = {path: (await get(session, f"{web.url}{path}"))[0]
                for path in ("/table/", "/table/key_to_state/", "/router/", "/graph/", "/stats/", "/assignment/",
                             "/performance/")}
    async with session.post(f"{web.url}/positions/", data=b"{}") as post:
        post_status = post.status
    async with session.delete(f"{web.url}/positions/APTUSDT@binance/") as delete:
        delete_status = delete.status

    # Assert
    assert set(builtins.values()) == {404}, builtins
    assert (post_status, delete_status) == (405, 405)


async def test_health_ready_and_metrics_answer_with_the_projects_metrics(one_worker, session):
    # Arrange
    web, inputs = one_worker
    await inputs.open("APTUSDT", Side.BUY, "61.8")
    await inputs.open("BTCUSDT", Side.BUY, "0.01")
    await wait_for_positions(session, web.url, {"APTUSDT@binance", "BTCUSDT@binance"})

    # Act
    health = await get(session, f"{web.url}/health")
    ready = await get(session, f"{web.url}/ready")
    metrics_status, metrics_text, metrics_response = await get(session, f"{web.url}/metrics")

    # Assert
    assert health[0] == 200
    assert ready[0] == 200 and ready[1]["ready"] is True and ready[1]["partitions"] == [0, 1, 2]
    assert metrics_status == 200 and metrics_response.content_type == "text/plain"
    assert 'pipeline_positions{status="pending_entry"} 2.0' in metrics_text
    assert 'pipeline_positions{status="active"} 0.0' in metrics_text
    for name in ("pipeline_inputs_total", "pipeline_decisions_total", "pipeline_refusals_total",
                 "pipeline_dead_letters_total", "pipeline_sink_lag_records", "pipeline_exchange_errors_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in metrics_text, name
    # The sink is not running: every update the agent published is lag (measured from Kafka).
    lag = re.search(r"^pipeline_sink_lag_records (\S+)$", metrics_text, re.MULTILINE)
    assert lag and float(lag.group(1)) >= 2, metrics_text[-3000:]
    # Faust's own sensor, on the same page.
    assert re.search(r"^faust_messages_received_total [1-9]", metrics_text, re.MULTILINE)


async def test_health_answers_at_once_and_ready_says_503_until_assigned_and_recovered(
        kafka_bootstrap, unique_suffix, tmp_path, session):
    # Arrange: poll both while the worker starts (its server starts before it joins the group).
    port = free_port()
    (tmp_path / "w").mkdir()
    worker = PipelineWorker(kafka_bootstrap, f"webready-{unique_suffix}", tmp_path / "w" / "data",
                            tmp_path / "w" / "worker.log", extra_env={"WEB_PORT": str(port)})
    seen: list[tuple[int, int]] = []

    async def poll() -> None:
        while True:
            try:
                health = (await get(session, f"http://127.0.0.1:{port}/health"))[0]
                ready = (await get(session, f"http://127.0.0.1:{port}/ready"))[0]
                seen.append((health, ready))
            except aiohttp.ClientConnectionError:
                pass  # not listening yet
            await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    try:
        # Act
        await worker.start()
        await wait_until(lambda: asyncio.sleep(0, result=bool(seen) and seen[-1][1] == 200), 30, "ready")
    finally:
        poller.cancel()
        worker.stop()

    # Assert: healthy throughout; not ready first, then ready for good.
    assert {health for health, _ in seen} == {200}
    readiness = [ready for _, ready in seen]
    assert readiness[0] == 503 and readiness[-1] == 200
    assert readiness == sorted(readiness, reverse=True)  # 503s, then only 200s


async def test_json_log_option_writes_one_json_object_per_log_line(kafka_bootstrap, unique_suffix, tmp_path):
    # Act
    web = await start_web_worker(kafka_bootstrap, f"weblog-{unique_suffix}", tmp_path / "w", LOG_FORMAT="json")
    web.worker.stop()

    # Assert: apart from Faust's start-up banner (a table printed before logging starts), JSON lines.
    lines = [line for line in web.worker.log_path.read_text().splitlines() if line.strip()]
    banner = [line for line in lines if line[:1] in "+|"]
    records = [json.loads(line) for line in lines if line[:1] not in "+|"]
    assert len(banner) < 25 and len(records) > 20
    assert all({"ts", "level", "logger", "message"} <= set(record) for record in records)
    assert any(record["message"] == "[^Worker]: Ready" for record in records)


async def test_bearer_token_guards_every_position_route_and_leaves_the_probes_open(
        kafka_bootstrap, unique_suffix, tmp_path, session):
    # Arrange
    token = "s3cret-token-for-the-test"
    web = await start_web_worker(kafka_bootstrap, f"webauth-{unique_suffix}", tmp_path / "w", WEB_AUTH_TOKEN=token)
    routes = ("/", "/positions/", "/positions/APTUSDT@binance/", "/metrics", "/_node/positions/")
    probes = ("/health", "/ready")
    try:
        # Act
        anonymous = {r: (await get(session, f"{web.url}{r}"))[0] for r in routes}
        wrong = {r: (await get(session, f"{web.url}{r}", headers={"Authorization": "Bearer nope"}))[0]
                 for r in routes}
        basic = (await get(session, f"{web.url}/positions/", headers={"Authorization": f"Basic {token}"}))[0]
        granted = {r: (await get(session, f"{web.url}{r}", headers={"Authorization": f"Bearer {token}"}))[0]
                   for r in routes}
        open_probes = {r: (await get(session, f"{web.url}{r}"))[0] for r in probes}
        challenge = (await get(session, f"{web.url}/positions/"))[2].headers.get("WWW-Authenticate", "")
    finally:
        web.worker.stop()

    # Assert: Kubernetes probes and load balancers carry no token, and need none
    assert set(anonymous.values()) == {401}, anonymous
    assert set(wrong.values()) == {401}, wrong
    assert basic == 401
    assert challenge.startswith("Bearer")
    assert granted == {**{r: 200 for r in routes}, "/positions/APTUSDT@binance/": 404}
    assert open_probes == {"/health": 200, "/ready": 200}


# --------------------------------------------------------------------------- two workers

TWO_WORKER_PARTITIONS = 4


def keys_on_every_partition(partitions: int, per_partition: int = 2) -> list[str]:
    """Keys of real-looking symbols, ``per_partition`` on each partition."""
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for index in range(10_000):
        key = f"T{index}USDT@binance"
        bucket = chosen[partition_for_key(key.encode(), partitions)]
        if len(bucket) < per_partition:
            bucket.append(key)
        if all(len(b) == per_partition for b in chosen.values()):
            break
    return [key for bucket in chosen.values() for key in bucket]


@pytest.fixture
async def two_workers(kafka_bootstrap, unique_suffix, tmp_path) -> AsyncIterator[tuple[WebWorker, WebWorker]]:
    app_id = f"web2-{unique_suffix}"
    env = {"PIPELINE_TOPIC_PARTITIONS": str(TWO_WORKER_PARTITIONS)}
    first = await start_web_worker(kafka_bootstrap, app_id, tmp_path / "a", **env)
    second = None
    try:
        second = await start_web_worker(kafka_bootstrap, app_id, tmp_path / "b", **env)
        yield first, second
    finally:
        if second is not None:
            second.worker.stop()
        first.worker.stop()


async def wait_until_both_own_partitions(session, first: WebWorker, second: WebWorker) -> dict[str, set[int]]:
    """Waits for a settled assignment: both ready, each with partitions, together all of them."""
    owned: dict[str, set[int]] = {}

    async def settled() -> bool:
        owned.clear()
        for web in (first, second):
            status, body, _ = await get(session, f"{web.url}/ready")
            if status != 200:
                return False
            owned[web.url] = set(body["partitions"])
        a, b = owned.values()
        return bool(a) and bool(b) and not a & b and a | b == set(range(TWO_WORKER_PARTITIONS))

    await wait_until(settled, 90, f"both workers to own partitions; logs:\n{first.worker.log_tail(2000)}"
                                  f"\n{second.worker.log_tail(2000)}")
    return owned


async def test_two_workers_answer_every_key_from_either_port(two_workers, kafka_bootstrap, session):
    # Arrange: a settled group of two, and keys on every partition (so on both workers).
    first, second = two_workers
    owned = await wait_until_both_own_partitions(session, first, second)
    keys = keys_on_every_partition(TWO_WORKER_PARTITIONS)
    inputs = await InputSender(kafka_bootstrap, first.worker.topics.inputs).start()
    try:
        for index, key in enumerate(keys):
            await inputs.open(key.split("@")[0], Side.BUY if index % 2 else Side.SELL, f"{index + 1}.5",
                              signal_id=f"sig-two-{index}")

        # Act
        from_first = await wait_for_positions(session, first.url, set(keys))
        from_second = await wait_for_positions(session, second.url, set(keys))
        answers = {(web.url, key): await get(session, f"{web.url}/positions/{key}/")
                   for web in (first, second) for key in keys}
        unknown = [await get(session, f"{web.url}/positions/NOPE{p}USDT@binance/")
                   for web in (first, second) for p in range(3)]
    finally:
        await inputs.stop()

    # Assert: the same complete list from both, every key 200 from both with its own position.
    assert len(from_first) == len(keys) and from_first == from_second
    for (url, key), (status, body, response) in answers.items():
        assert status == 200, (url, key, body)
        assert body["key"] == key and body["signal_id"] == f"sig-two-{keys.index(key)}"
        partition = partition_for_key(key.encode(), TWO_WORKER_PARTITIONS)
        owner = next(u for u, partitions in owned.items() if partition in partitions)
        if owner == url:
            assert "X-Positions-Served-By" not in response.headers
        else:  # the request went to the wrong worker and was answered by the owner
            assert response.headers["X-Positions-Served-By"] == owner
    assert {status for status, _, _ in unknown} == {404}
    # Each worker's own part holds exactly its partitions' keys.
    for web in (first, second):
        _, part, _ = await get(session, f"{web.url}/_node/positions/")
        assert set(part["partitions"]) == owned[web.url]
        assert {p["key"] for p in part["positions"]} == {
            k for k in keys if partition_for_key(k.encode(), TWO_WORKER_PARTITIONS) in owned[web.url]}
