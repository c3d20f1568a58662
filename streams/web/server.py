"""The worker's web server: the positions views, the HTML page, metrics, health and readiness.

One aiohttp application per worker, run as a ``mode.Service`` registered with
``app.web_server(...)``, the framework-neutral hook of faust-streaming 0.15.3. Registering
it retires Faust's legacy aiohttp stack entirely, so none of its built-in routes
(``/table/``, ``/router/``, ``/graph/``, ``/stats/``, the index at ``/``) exist: a path not
listed below is a 404, and every route is GET/HEAD only (read-only).

| route | answer |
|---|---|
| ``GET /`` (also ``/positions.html``) | the HTML page of open and in-flight positions |
| ``GET /positions/`` | JSON array of every live position, from every worker, each with its key's latest exchange snapshot (mark price, unrealized PnL) |
| ``GET /positions/{SYMBOL}@{exchange}/`` | the key's live position (200) or 404; from its owner |
| ``GET /positions/{SYMBOL}@{exchange}/history/`` | the key's positions newest first (closed ones too), each with its events; from PostgreSQL (``?limit=N``, default 50); 404 if the key never had one |
| ``GET /positions/closed/`` (``.html``) | positions that ended in the last ``?hours=`` (24), newest first, ``?symbol=`` narrows; from PostgreSQL |
| ``GET /positions/{SYMBOL}@{exchange}/history.html`` | the same as an HTML timeline (linked from the page), the live position set against the exchange's latest snapshot |
| ``GET /refusals/`` | the latest refusals (PostgreSQL) and dead letters (the dead-letter topic), newest first (``streams.web.feed``) |
| ``GET /metrics`` | Prometheus: the project's metrics, the sink's lag, Faust's sensor (``faust_*``) |
| ``GET /health`` | 200 while the process serves |
| ``GET /ready`` | 200 once the worker has its assignment and its table recovered, and no background part (poller, order ledger) is failing; else 503 with the reasons; says if it leads the group |
| ``GET /_node/positions/`` | this worker's own part (the fan-out's building block) |

**Where a key is answered.** The table is partitioned: a key's state lives only on the
worker owning the key's changelog partition. A worker that does not own the key forwards
the request, unchanged and signed as a peer request (never with the token, see
``streams.web.auth``), to the owner's canonical URL
taken from Faust's assignment metadata (``app.router.tables_metadata()``, what
``app.table_route`` uses) and relays the answer. The forwarded request carries
``X-Positions-Routed-By``: its receiver answers from its own table or, if it no longer owns
the partition (a rebalance in between), says 503; never forwards again, so a request
cannot loop.

**Why ``/positions/`` fans out.** No worker holds all keys, and no map of keys exists
outside the table. The receiving worker asks every owner in the assignment for its part
(``/_node/positions/``, answered from the local table only) and merges. Each part says which
partitions it covers (owned and recovered), so the merge knows whether every partition of
the topic was answered for. An incomplete picture (a worker away, a rebalance under way)
is retried briefly and then answered with 503 naming the missing partitions, never with
a list silently short of positions.

**Started early.** Faust starts a registered web server only after table recovery; this
one is put in the boot strategy's web slot (where the legacy server started: after the
producer, before the consumer) so ``/health`` answers and ``/ready`` says 503 while the
worker joins its group and recovers. The table-backed routes answer 503 until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from yarl import URL

from streams.wire import serde
from streams.settings import Settings
from streams.web.feed import DeadLetterTail, read_feed
from streams.web.history import PositionHistory
from streams.web.stored_views import StoredViews, json_response
from streams.topics import TopicNames, sink_group
from streams.telemetry import health, metrics
from streams.web.auth import OPEN_PATHS, bearer_token_matches, peer_signature_headers, peer_signature_valid
from streams.web.page import render_page
from streams.web.render import state_to_json
from streams.web.sinklag import SinkLagProbe
from streams.web.routing import (
    ROUTED_HEADER,
    LocalAnswer,
    is_valid_key,
    merge_local_answers,
    owner_of,
    partition_for_key,
    partitions_by_owner,
    same_node,
)
from streams.web.errors import WebError

__all__ = ["IncompleteAnswer", "PositionsWebServer", "advertised_url"]

logger = logging.getLogger(__name__)

#: How long a worker waits for a peer's answer (forwarded key or its part of the list).
PEER_TIMEOUT_S = 5.0
#: Attempts at a complete ``/positions/`` before answering 503, and the pause between them.
FAN_OUT_ATTEMPTS = 3
FAN_OUT_RETRY_PAUSE_S = 0.5

_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class IncompleteAnswer(WebError, RuntimeError):
    """Some partitions of the table had no worker answering for them.

    ``positions`` holds what the partitions that did answer have (a rebalance under way, a
    worker away): shown beside the missing partitions, never passed off as the whole list.
    """

    def __init__(self, missing: frozenset[int], errors: list[str], positions: list[dict] | None = None) -> None:
        self.missing = missing
        self.errors = errors
        self.positions = positions or []
        details = f"; {'; '.join(errors)}" if errors else ""
        super().__init__(f"no worker answered for partitions {sorted(missing)}{details}")


def advertised_url(settings: Settings) -> URL:
    """The URL other workers reach this worker's web server by (Faust's ``canonical_url``).

    ``WEB_HOST`` when set; else ``WEB_BIND`` when it names one address (the default
    127.0.0.1: workers on one machine); else the machine's host name, as Faust would.
    """
    host = settings.web_host
    if not host:
        host = settings.web_bind if settings.web_bind not in _WILDCARD_BINDS else socket.gethostname()
    return URL.build(scheme="http", host=host.strip("[]"), port=settings.web_port)


def _host_of(url: URL) -> str:
    """``host:port`` as the receiver reads it from its ``Host`` header."""
    return f"{url.raw_host}:{url.port}" if url.port is not None and not url.is_default_port() else str(url.raw_host)


_json = json_response


class PositionsWebServer(StoredViews, Service):
    """The web server of one worker (see the module's docstring for routes and routing)."""

    driver_version = f"aiohttp={aiohttp.__version__} (streams.web)"

    def __init__(self, app: Any, settings: Settings, table: Any, *, faust_registry: CollectorRegistry | None = None,
                 **kwargs: Any) -> None:
        self.app = app
        self.settings = settings
        self.table = table
        self.faust_registry = faust_registry
        # Histories are read from the sink's tables: every worker answers the same.
        self.position_history = PositionHistory(settings.database_url)
        self._session: aiohttp.ClientSession | None = None
        # What on_start opened, closed in reverse order by on_stop.
        self._opened = contextlib.AsyncExitStack()
        # The sink's consumer group (sinks/postgres.py) on position-updates.
        topics = TopicNames.for_prefix(settings.topic_prefix)
        self.sink_lag = SinkLagProbe(settings.kafka_bootstrap_servers, sink_group(settings), topics.updates)
        # The page's feed of dead letters, followed from the topic by every worker alike.
        self.dead_letter_tail = DeadLetterTail(settings.kafka_bootstrap_servers, topics.dead_letters)
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ service

    @property
    def web_url(self) -> str:
        """The canonical URL of this worker's web server (shown in the worker's banner)."""
        return str(self.app.conf.canonical_url)

    @property
    def label(self) -> str:
        """How the service shows in Faust's logs."""
        return f"{type(self).__name__}: http://{self.app.conf.web_bind}:{self.app.conf.web_port}"

    def build_application(self) -> web.Application:
        """The aiohttp application: middlewares and routes (separate so tests can serve it alone)."""
        application = web.Application(middlewares=[self._auth_middleware])
        routes = {
            "/": self.page, "/positions.html": self.page, "/positions/": self.positions,
            "/positions/closed/": self.closed, "/positions/closed.html": self.closed_page, "/refusals/": self.refusals,
            "/positions/{key}/history/": self.history, "/positions/{key}/history.html": self.history_page,
            "/positions/{key}/": self.position, "/_node/positions/": self.node_positions,
            "/metrics": self.metrics, "/health": self.health, "/ready": self.ready,
        }
        for path, handler in routes.items():
            application.router.add_get(path, handler)
        # The JSON views answer without their trailing slash too (as curl users type them).
        for path in ("/positions/", "/positions/closed/", "/refusals/", "/positions/{key}/history/", "/positions/{key}/"):
            application.router.add_get(path.rstrip("/"), routes[path])
        return application

    async def on_start(self) -> None:
        """Binds ``WEB_BIND``:``WEB_PORT`` and starts serving."""
        self._opened.push_async_callback(self.position_history.close)
        self._opened.push_async_callback(self.sink_lag.close)
        await self.dead_letter_tail.start()
        self._opened.push_async_callback(self.dead_letter_tail.stop)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S))
        self._opened.push_async_callback(self._session.close)
        runner = web.AppRunner(self.build_application(), access_log=None)
        await runner.setup()
        self._opened.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.app.conf.web_bind, self.app.conf.web_port)
        await site.start()
        logger.info("web server on http://%s:%s (advertised as %s)", self.app.conf.web_bind,
                    self.app.conf.web_port, self.web_url)

    async def on_stop(self) -> None:
        """Stops serving, then closes the peers' connections, the sink-lag probe and the history pool."""
        await self._opened.aclose()
        self._session = None

    # ------------------------------------------------------------------ worker state

    @property
    def _changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready once the worker has an assignment and its table is recovered.

        Not ready while a rebalance or a recovery is under way: the assignment may be about
        to change, and a recovering table does not hold every key yet.
        """
        app = self.app
        if not app.tables.recovery.completed.is_set():
            return False, "joining the group and recovering the table"
        if app.rebalancing:
            return False, "rebalancing"
        if app.in_recovery:
            return False, "recovering the table"
        if not self.owners():
            return False, "no partition assignment yet"
        return True, "ready"

    def owners(self) -> dict[str, frozenset[int]]:
        """``{worker URL: changelog partitions it owns}`` from the latest assignment."""
        return partitions_by_owner(self.app.router.tables_metadata(), self._changelog_topic)

    def owned_partitions(self) -> frozenset[int]:
        """The changelog partitions assigned to this worker as active (not standby)."""
        topic = self._changelog_topic
        return frozenset(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic)

    def local_answer(self) -> LocalAnswer:
        """This worker's live positions, of the partitions it owns; none while it is not ready.

        Keys are filtered by partition, not only by what the store iterates: a memory store
        also holds the standby copies of other workers' partitions.
        """
        ready, _ = self.readiness()
        owned = self.owned_partitions() if ready else frozenset()
        return LocalAnswer(node=self.web_url, partitions=owned, positions=tuple(
            state_to_json(state) for state in self._live_states(owned)))

    def _live_states(self, owned: frozenset[int]) -> list:
        """The states of this worker's keys (of ``owned`` partitions) that hold a live position."""
        partitions = self.settings.topic_partitions
        states = []
        for key, record in list(self.table.items()):
            if partition_for_key(key, partitions) not in owned:
                continue
            try:
                state = serde.key_state_from_record(record)
            except Exception:  # noqa: BLE001 - one unreadable row must not hide all the others
                logger.exception("table value of key %r cannot be read", key)
                continue
            if state.live_position is not None:
                states.append(state)
        return states

    async def collect_positions(self) -> list[dict]:
        """Every worker's live positions, merged; raises ``IncompleteAnswer`` when a partition stays unanswered."""
        missing: frozenset[int] = frozenset(range(self.settings.topic_partitions))
        errors: list[str] = []
        partial: list[dict] = []
        for attempt in range(FAN_OUT_ATTEMPTS):
            if attempt:
                await asyncio.sleep(FAN_OUT_RETRY_PAUSE_S)
            answers, errors = await self._ask_every_owner()
            merged = merge_local_answers(answers, self.settings.topic_partitions)
            if not merged.missing:
                return merged.positions
            missing, partial = merged.missing, merged.positions
        raise IncompleteAnswer(missing, errors, partial)

    async def _ask_every_owner(self) -> tuple[list[LocalAnswer], list[str]]:
        owners = self.owners()
        me = self.web_url
        nodes = [url for url in owners if not same_node(url, me)]
        results = await asyncio.gather(*(self._ask_peer(url) for url in nodes), return_exceptions=True)
        answers, errors = [self.local_answer()], []
        for url, result in zip(nodes, results):
            if isinstance(result, LocalAnswer):
                answers.append(result)
            else:
                errors.append(f"{url}: {result}")
        return answers, errors

    async def _ask_peer(self, url: str) -> LocalAnswer:
        assert self._session is not None
        target = URL(url).with_path("/_node/positions/")
        async with self._session.get(target, headers=self._peer_headers(target)) as reply:
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}")
            body = await reply.json()
        return LocalAnswer(node=body["node"], partitions=frozenset(body["partitions"]),
                           positions=tuple(body["positions"]))

    def _peer_headers(self, target: URL) -> dict[str, str]:
        """Headers of a request to a peer: never the token itself, a signature of this request when one is set."""
        headers = {ROUTED_HEADER: self.web_url, "Accept": "application/json"}
        if self.settings.web_auth_token:
            headers.update(peer_signature_headers(self.settings.web_auth_token, "GET", _host_of(target),
                                                  target.raw_path_qs, time.time()))
        return headers

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        token = self.settings.web_auth_token
        if token and request.path not in OPEN_PATHS \
                and not bearer_token_matches(request.headers.get("Authorization"), token) \
                and not peer_signature_valid(token, request.method, request.host, request.rel_url.raw_path_qs,
                                             request.headers, time.time()):
            return _json({"error": "a valid 'Authorization: Bearer <token>' header is required"}, status=401,
                         headers={"WWW-Authenticate": 'Bearer realm="position-pipeline"'})
        return await handler(request)

    # ------------------------------------------------------------------ handlers

    async def health(self, request: web.Request) -> web.Response:
        """200 while the process runs and serves."""
        return _json({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        """200 once assigned and recovered, 503 (with the reason) before and during rebalances.

        Also 503 while a background part of the worker fails and retries (the exchange
        poller, the order-attempt ledger: ``streams.telemetry.health``), naming it in ``failing``:
        such a failure must be seen, not leave the worker quietly doing nothing.
        """
        ready, reason = self.readiness()
        leader = ready and self.app.is_leader()  # leadership follows the assignment, whatever else fails
        failing = health.problems()
        if ready and failing:
            ready, reason = False, "; ".join(f"{name}: {why}" for name, why in sorted(failing.items()))
        return _json({"ready": ready, "reason": reason, "failing": failing,
                      "partitions": sorted(self.owned_partitions()) if ready else [], "leader": leader},
                     status=200 if ready else 503)

    async def node_positions(self, request: web.Request) -> web.Response:
        """This worker's part of ``/positions/``: its partitions and their live positions."""
        answer = self.local_answer()
        return _json({"node": answer.node, "partitions": sorted(answer.partitions),
                      "positions": list(answer.positions)})

    async def positions(self, request: web.Request) -> web.Response:
        """Every live position of every worker, newest first; 503 with what answered and what is missing."""
        try:
            return _json(await self.collect_positions())
        except IncompleteAnswer as error:
            logger.warning("GET /positions/ incomplete: %s", error)
            return _json({"error": str(error), "missing_partitions": sorted(error.missing),
                          "positions": error.positions}, status=503, headers={"Retry-After": "1"})

    async def position(self, request: web.Request) -> web.StreamResponse:
        """The live position of one key, answered by the worker owning the key's partition."""
        key = request.match_info["key"]
        if not is_valid_key(key):
            return _json({"error": f"{key!r} is not a SYMBOL@exchange key"}, status=404)
        ready, reason = self.readiness()
        if not ready:
            return _json({"error": f"not ready: {reason}"}, status=503, headers={"Retry-After": "1"})
        partition = partition_for_key(key.encode("utf-8"), self.settings.topic_partitions)
        if partition in self.owned_partitions():
            return self._local_position(key)
        if ROUTED_HEADER in request.headers:
            return _json({"error": f"partition {partition} is no longer owned here (rebalancing)"}, status=503,
                         headers={"Retry-After": "1"})
        owner = owner_of(partition, self.owners())
        if owner is None or same_node(owner, self.web_url):
            return _json({"error": f"no worker owns partition {partition} yet"}, status=503,
                         headers={"Retry-After": "1"})
        return await self._forward(owner, request)

    def _local_position(self, key: str) -> web.Response:
        record = self.table.get(key.encode("utf-8"))
        state = serde.key_state_from_record(record) if record is not None else None
        if state is None or state.live_position is None:
            return _json({"error": f"no open or in-flight position for {key}"}, status=404)
        return _json(state_to_json(state))

    async def _forward(self, owner: str, request: web.Request) -> web.Response:
        """Relays ``request`` to ``owner`` (path and query unchanged) and returns its answer."""
        assert self._session is not None
        target = URL(owner).join(request.rel_url)
        try:
            async with self._session.get(target, headers=self._peer_headers(target)) as reply:
                body = await reply.read()
                return web.Response(body=body, status=reply.status, content_type=reply.content_type,
                                    headers={"X-Positions-Served-By": owner})
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            logger.warning("forwarding %s to %s failed: %r", request.rel_url, owner, error)
            return _json({"error": f"the owner of this key ({owner}) did not answer: {error!r}"}, status=503,
                         headers={"Retry-After": "1"})

    async def current_position(self, key: str) -> tuple[dict | None, str | None]:
        """The key's live position as ``GET /positions/{key}/`` answers it (None: none live), or why it cannot be had.

        Asked of the key's owner like that route (answered here when this worker owns it).
        """
        ready, reason = self.readiness()
        if not ready:
            return None, f"not ready: {reason}"
        partition = partition_for_key(key.encode("utf-8"), self.settings.topic_partitions)
        if partition in self.owned_partitions():
            record = self.table.get(key.encode("utf-8"))
            state = serde.key_state_from_record(record) if record is not None else None
            return (state_to_json(state) if state is not None and state.live_position is not None else None), None
        owner = owner_of(partition, self.owners())
        if owner is None or same_node(owner, self.web_url):
            return None, f"no worker owns partition {partition} yet"
        assert self._session is not None
        target = URL(owner).with_path(f"/positions/{key}/")
        try:
            async with self._session.get(target, headers=self._peer_headers(target)) as reply:
                if reply.status == 404:
                    return None, None
                if reply.status != 200:
                    return None, f"{owner} answered HTTP {reply.status}"
                return await reply.json(), None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            return None, f"the owner of this key ({owner}) did not answer: {error!r}"

    async def page(self, request: web.Request) -> web.Response:
        """The HTML page; shows what it has and a banner when a worker did not answer."""
        error = None
        try:
            positions = await self.collect_positions()
        except IncompleteAnswer as incomplete:
            positions, error = incomplete.positions, f"Incomplete: {incomplete}"
        feed = await read_feed(self.position_history, self.dead_letter_tail)
        return web.Response(text=render_page(positions, title=self._title, error=error, feed=feed,
                                             sync_interval_s=self.settings.sync_interval_s),
                            content_type="text/html")

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text: the project's registry, then Faust's sensor registry."""
        metrics.refresh_position_gauge([state.live_position for state in self._live_states(self.owned_partitions())])
        metrics.set_group_leader(self.readiness()[0] and self.app.is_leader())
        await self.sink_lag.refresh()
        body = generate_latest(REGISTRY)
        if self.faust_registry is not None:
            body += generate_latest(self.faust_registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
