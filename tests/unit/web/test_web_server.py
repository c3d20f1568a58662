"""The web server's handlers on real sockets, with stand-ins for the Faust app and its table.

Two servers on 127.0.0.1, each a "worker" owning half of four partitions, prove the
routing rules without Kafka: a key asked of the wrong worker is answered by its owner,
``/positions/`` is complete from either and never counts a standby copy, an absent owner
gives 503 (never a false 404), and forwarded requests are signed (the token never leaves).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import pytest
from faust.types import TP
from yarl import URL

from streams.wire import serde
from streams.domain import KeyState
from streams.settings import Settings
from streams.telemetry import health
from streams.web import server as web_server
from streams.web.auth import PEER_SIGNATURE_HEADER, peer_signature_headers
from streams.web.routing import ROUTED_HEADER, partition_for_key
from streams.web.server import PositionsWebServer
from tests.unit.domain.domain_builders import feed_active, feed_closed, feed_pending_entry

PARTITIONS = 4
CHANGELOG = "app-key_to_state-changelog"


class FakeTable(dict):
    """The table as the server uses it: raw key bytes -> KeyState record, plus its changelog topic."""

    changelog_topic = SimpleNamespace(get_topic_name=lambda: CHANGELOG)


class FakeApp:
    """What the server reads of a Faust app: its URL, recovery state, the assignment map."""

    def __init__(self, port: int, owned: set[int], assignment: dict, leader: bool = False) -> None:
        self.leader = leader
        self.conf = SimpleNamespace(canonical_url=URL(f"http://127.0.0.1:{port}"), web_bind="127.0.0.1",
                                    web_port=port)
        self.tables = SimpleNamespace(recovery=SimpleNamespace(completed=asyncio.Event()))
        self.tables.recovery.completed.set()
        self.rebalancing = False
        self.in_recovery = False
        self.router = SimpleNamespace(tables_metadata=lambda: assignment)
        self.assignor = SimpleNamespace(assigned_actives=lambda: {TP(CHANGELOG, p) for p in owned})

    def is_leader(self) -> bool:
        return self.leader


def state_for(key: str, template: KeyState) -> KeyState:
    """``template``'s state moved to ``key`` (same status, its own id)."""
    symbol, exchange = key.split("@")
    position = dataclasses.replace(template.position, id=f"{key}/7", symbol=symbol, exchange=exchange)
    return dataclasses.replace(template, key=key, position=position)


def keys_per_partition() -> dict[int, str]:
    found: dict[int, str] = {}
    index = 0
    while len(found) < PARTITIONS:
        key = f"K{index}USDT@binance"
        found.setdefault(partition_for_key(key.encode(), PARTITIONS), key)
        index += 1
    return found


KEYS = keys_per_partition()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def settings(**overrides) -> Settings:
    return Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d"},
                             topic_partitions=PARTITIONS, app_id="unit", **overrides)


@dataclasses.dataclass
class Cluster:
    a: PositionsWebServer
    b: PositionsWebServer
    ports: tuple[int, int]

    def url(self, which: str) -> str:
        return str((self.a if which == "a" else self.b).app.conf.canonical_url)


async def make_cluster(token: str | None = None, start_b: bool = True) -> Cluster:
    """Worker a owns partitions 0 and 1, b owns 2 and 3; every table also holds standby copies."""
    port_a, port_b = free_port(), free_port()
    assignment = {f"http://127.0.0.1:{port_a}": {CHANGELOG: [0, 1]}, f"http://127.0.0.1:{port_b}": {CHANGELOG: [2, 3]}}
    table = FakeTable()  # a memory store holds actives and standbys alike: one table for both is the worst case
    templates = {0: feed_pending_entry().state, 1: feed_active().state, 2: feed_active().state,
                 3: feed_closed().state}
    for partition, key in KEYS.items():
        table[key.encode()] = serde.key_state_to_record(state_for(key, templates[partition]))
    servers = []
    for port, owned, leader in ((port_a, {0, 1}, True), (port_b, {2, 3}, False)):
        servers.append(PositionsWebServer(FakeApp(port, owned, assignment, leader), settings(web_auth_token=token),
                                          table))
    await servers[0].start()
    if start_b:
        await servers[1].start()
    return Cluster(servers[0], servers[1], (port_a, port_b))


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    running = await make_cluster()
    yield running
    await running.a.stop()
    await running.b.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(http: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, object, dict]:
    async with http.get(url, **kwargs) as response:
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body, dict(response.headers)


async def test_every_key_is_answered_from_either_worker_by_its_owner(cluster, http):
    # Act
    answers = {(which, p): await fetch(http, f"{cluster.url(which)}/positions/{key}/")
               for which in ("a", "b") for p, key in KEYS.items()}

    # Assert: partitions 0-2 hold live positions, 3 a closed one (404), whoever is asked.
    for (which, partition), (status, body, headers) in answers.items():
        owner = "a" if partition in (0, 1) else "b"
        if partition == 3:
            assert status == 404, body
        else:
            assert status == 200 and body["key"] == KEYS[partition], body
        forwarded = headers.get("X-Positions-Served-By")
        assert forwarded == (None if owner == which else cluster.url(owner))


async def test_positions_is_complete_from_either_worker_and_ignores_standby_copies(cluster, http):
    # Act
    from_a = await fetch(http, f"{cluster.url('a')}/positions/")
    from_b = await fetch(http, f"{cluster.url('b')}/positions/")
    part_a = await fetch(http, f"{cluster.url('a')}/_node/positions/")

    # Assert
    assert from_a[0] == from_b[0] == 200
    assert from_a[1] == from_b[1]
    assert sorted(p["key"] for p in from_a[1]) == sorted(KEYS[p] for p in (0, 1, 2))
    assert part_a[1]["partitions"] == [0, 1]
    assert sorted(p["key"] for p in part_a[1]["positions"]) == sorted(KEYS[p] for p in (0, 1))


async def test_an_absent_owner_gives_503_with_what_answered_never_a_short_list(http, monkeypatch):
    # Arrange: b is assigned partitions 2 and 3 but does not answer.
    monkeypatch.setattr(web_server, "FAN_OUT_RETRY_PAUSE_S", 0.0)
    running = await make_cluster(start_b=False)
    try:
        # Act
        listing = await fetch(http, f"{running.url('a')}/positions/")
        key_of_b = await fetch(http, f"{running.url('a')}/positions/{KEYS[3]}/")
        key_of_a = await fetch(http, f"{running.url('a')}/positions/{KEYS[0]}/")
        page = await fetch(http, f"{running.url('a')}/")
    finally:
        await running.a.stop()

    # Assert
    assert listing[0] == 503 and listing[1]["missing_partitions"] == [2, 3]
    assert sorted(p["key"] for p in listing[1]["positions"]) == sorted(KEYS[p] for p in (0, 1))
    assert key_of_b[0] == 503
    assert key_of_a[0] == 200
    assert page[0] == 200 and "no worker answered for partitions [2, 3]" in page[1]
    assert KEYS[0].split("@")[0] in page[1]  # the page shows what it has beside the warning


async def test_a_forwarded_request_is_never_forwarded_again(cluster, http):
    # Act: a request already routed by a peer reaches a worker that does not own the key.
    status, body, _ = await fetch(http, f"{cluster.url('a')}/positions/{KEYS[2]}/",
                                  headers={ROUTED_HEADER: cluster.url("b")})

    # Assert
    assert status == 503 and "no longer owned" in body["error"]


async def test_not_ready_worker_says_503_on_ready_and_table_routes_but_is_healthy(cluster, http):
    # Arrange
    cluster.a.app.rebalancing = True

    # Act
    ready = await fetch(http, f"{cluster.url('a')}/ready")
    key = await fetch(http, f"{cluster.url('a')}/positions/{KEYS[0]}/")
    health = await fetch(http, f"{cluster.url('a')}/health")
    part = await fetch(http, f"{cluster.url('a')}/_node/positions/")

    # Assert
    assert ready[0] == 503 and ready[1] == {"ready": False, "reason": "rebalancing", "failing": {},
                                            "partitions": [], "leader": False}
    assert key[0] == 503 and key[2].get("Retry-After") == "1"
    assert health[0] == 200
    assert part[1]["partitions"] == []  # claims nothing: the fan-out retries or says 503


async def test_a_failing_background_part_makes_ready_say_503_with_why_and_is_ready_again_once_it_works(
        cluster, http):
    # Arrange: the poller's follower of the tracked keys fails and retries.
    health.set_failing("tracked_keys", "following the changelog failed 3 time(s), last: KafkaConnectionError")

    # Act
    failing = await fetch(http, f"{cluster.url('a')}/ready")
    health.set_healthy("tracked_keys")
    recovered = await fetch(http, f"{cluster.url('a')}/ready")

    # Assert: shown, not silent; the table routes are not affected.
    assert failing[0] == 503 and failing[1]["ready"] is False
    assert failing[1]["reason"].startswith("tracked_keys: following the changelog failed 3 time(s)")
    assert failing[1]["failing"] == {"tracked_keys": "following the changelog failed 3 time(s), last: "
                                                     "KafkaConnectionError"}
    assert recovered[0] == 200 and recovered[1]["failing"] == {}


async def test_token_guards_every_position_view_but_probes_stay_open_and_peers_get_signatures(http):
    # Arrange
    running = await make_cluster(token="t0ken")
    auth = {"Authorization": "Bearer t0ken"}
    try:
        # Act
        refused = [await fetch(http, f"{running.url('a')}{path}")
                   for path in ("/", "/positions/", f"/positions/{KEYS[0]}/", "/metrics", "/_node/positions/")]
        probes = [await fetch(http, f"{running.url('a')}{path}") for path in ("/health", "/ready")]
        forwarded = await fetch(http, f"{running.url('a')}/positions/{KEYS[2]}/", headers=auth)
        listing = await fetch(http, f"{running.url('b')}/positions/", headers=auth)
        peer_headers = running.a._peer_headers(URL(running.url("b")).with_path("/_node/positions/"))
    finally:
        await running.a.stop()
        await running.b.stop()

    # Assert: positions need the token; probes answer without; peers never see the token
    assert {status for status, _, _ in refused} == {401}
    assert [status for status, _, _ in probes] == [200, 200]
    assert forwarded[0] == 200 and forwarded[2]["X-Positions-Served-By"] == running.url("b")
    assert listing[0] == 200 and len(listing[1]) == 3
    assert "Authorization" not in peer_headers and "t0ken" not in str(peer_headers)
    assert PEER_SIGNATURE_HEADER in peer_headers


async def test_a_peer_signature_opens_only_the_request_it_signs_on_the_worker_it_names_while_fresh(http):
    # Arrange
    running = await make_cluster(token="t0ken")
    b_host = f"127.0.0.1:{running.ports[1]}"
    path = "/_node/positions/"
    now = time.time()
    try:
        # Act
        good = await fetch(http, f"{running.url('b')}{path}",
                           headers=peer_signature_headers("t0ken", "GET", b_host, path, now))
        for_another_path = await fetch(http, f"{running.url('b')}/positions/",
                                       headers=peer_signature_headers("t0ken", "GET", b_host, path, now))
        for_another_worker = await fetch(http, f"{running.url('a')}{path}",
                                         headers=peer_signature_headers("t0ken", "GET", b_host, path, now))
        stale = await fetch(http, f"{running.url('b')}{path}",
                            headers=peer_signature_headers("t0ken", "GET", b_host, path, now - 120))
        wrong_key = await fetch(http, f"{running.url('b')}{path}",
                                headers=peer_signature_headers("guess", "GET", b_host, path, now))
    finally:
        await running.a.stop()
        await running.b.stop()

    # Assert
    assert good[0] == 200
    assert [for_another_path[0], for_another_worker[0], stale[0], wrong_key[0]] == [401, 401, 401, 401]


async def test_metrics_report_this_workers_positions_by_status(cluster, http):
    # Act
    status, text, headers = await fetch(http, f"{cluster.url('a')}/metrics")

    # Assert: a owns partition 0 (pending_entry) and 1 (active).
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'pipeline_positions{status="pending_entry"} 1.0' in text
    assert 'pipeline_positions{status="active"} 1.0' in text
    assert 'pipeline_positions{status="closing"} 0.0' in text


async def test_unknown_paths_and_every_write_method_are_refused(cluster, http):
    # Act
    table = await fetch(http, f"{cluster.url('a')}/table/key_to_state/")
    refused = {}
    for path in ("/", "/positions/", f"/positions/{KEYS[0]}/", "/_node/positions/", "/metrics", "/health", "/ready"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            async with http.request(method, f"{cluster.url('a')}{path}", data=b"{}") as answer:
                refused[(method, path)] = answer.status

    # Assert: the web server is read-only
    assert table[0] == 404
    assert set(refused.values()) == {405}, refused


async def test_ready_names_the_partitions_and_whether_the_worker_leads_the_group(cluster, http):
    # Act
    ready_a = await fetch(http, f"{cluster.url('a')}/ready")
    ready_b = await fetch(http, f"{cluster.url('b')}/ready")
    metrics_a = await fetch(http, f"{cluster.url('a')}/metrics")

    # Assert
    assert ready_a[0] == ready_b[0] == 200
    assert ready_a[1] == {"ready": True, "reason": "ready", "failing": {}, "partitions": [0, 1], "leader": True}
    assert ready_b[1]["leader"] is False and ready_b[1]["partitions"] == [2, 3]
    assert "pipeline_group_leader 1.0" in metrics_a[1]
