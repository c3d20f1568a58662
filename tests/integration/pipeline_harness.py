"""Drives the real pipeline worker on the real broker, from outside its process.

- ``PipelineWorker`` runs ``python -m streams worker`` as a subprocess with its own app id,
  topic prefix and data folder; ``stop()`` is a clean shutdown, ``kill()`` a crash (SIGKILL).
- ``TopicTap`` reads a topic from the beginning and decodes what it finds.
- ``ScriptedExchange`` stands in for the exchange edge (its own issue): it reads the
  commands the state machine sends and answers with execution reports on
  ``position-inputs``, as a script says.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.wire import codec, serde
from streams.worker.processor import ConsumedRecord, InputProcessor, load_from
from streams.domain import (
    AuditRecord,
    Command,
    ExchangeSnapshot,
    ExecutionReport,
    InputEvent,
    KeyState,
    OrderRole,
    Position,
    ReportOutcome,
    Side,
    Signal,
    SignalAction,
)
from streams.settings import Settings
from streams.topics import TopicNames, topic_partitions

REPO_ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3


@dataclass
class PipelineWorker:
    """One `python -m streams worker` process of a test's private pipeline.

    Its web port is chosen once, so a restarted worker answers where it did before (as a
    StatefulSet pod keeps its name).
    """

    bootstrap: str
    app_id: str
    data_dir: Path
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    web_port: int = field(default_factory=lambda: free_port())

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def get_json(self, path: str, timeout_s: float = 10.0) -> tuple[int, object]:
        """GET ``path`` from this worker's web server: (status, decoded JSON body); (0, error) when it does not answer."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
                async with session.get(f"{self.web_url}{path}") as reply:
                    return reply.status, await reply.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            return 0, repr(error)

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of this worker's ``/metrics`` (0 when absent)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"{self.web_url}/metrics") as reply:
                text = await reply.text()
        wanted = ",".join(f'{label}="{value}"' for label, value in sorted(labels.items()))
        sample = f"{name}{{{wanted}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        return 0.0

    @property
    def topics(self) -> TopicNames:
        return TopicNames.for_prefix(f"{self.app_id}.")

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PIPELINE_APP_ID": self.app_id,
            "PIPELINE_TOPIC_PREFIX": f"{self.app_id}.",
            "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS),
            "PIPELINE_TABLE_STORE": "rocksdb://",
            "PIPELINE_DATA_DIR": str(self.data_dir),
            "PIPELINE_ENTRY_TIMEOUT_S": "5",
            "PIPELINE_STOP_LOSS_TIMEOUT_S": "5",
            "PIPELINE_CLOSE_TIMEOUT_S": "5",
            "PIPELINE_DEADLINE_SCAN_INTERVAL_S": "0.5",
            "PIPELINE_SESSION_TIMEOUT_S": "10",
            # The scripted stand-in answers commands; tests of the real edge turn it on.
            "PIPELINE_EXCHANGE_EDGE": "off",
            # faust's worker starts its web server whatever web_enabled says: a port of its own.
            "WEB_PORT": str(self.web_port),
            "PYTHONPATH": str(REPO_ROOT),
            **self.extra_env,
        }

    async def start(self, ready_timeout_s: float = 90.0) -> None:
        """Starts the worker and waits until it has joined the group and recovered its table."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", "--loglevel", "info"],
            cwd=REPO_ROOT, env=self.environment(), stdin=subprocess.DEVNULL,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
            if "[^Worker]: Ready" in self.log_path.read_text(errors="replace")[offset:]:
                return
            await asyncio.sleep(0.2)
        self.kill()  # a worker that never got ready must not outlive the test
        raise RuntimeError(f"worker not ready within {ready_timeout_s}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), waiting for the process to end."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """A crash: SIGKILL to the worker's process group, no chance to commit or flush."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def log_tail(self, characters: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""

    def task_stacks(self, wait_s: float = 2.0) -> str:
        """Where each of the running worker's tasks waits (it logs them on SIGUSR2,
        streams.telemetry.task_dump), the pipeline's own tasks only: for a failure message."""
        if not self.running:
            return "(not running)"
        offset = self.log_path.stat().st_size
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGUSR2)
        time.sleep(wait_s)
        dump = self.log_path.read_bytes()[offset:].decode(errors="replace")
        dump = dump[dump.find("asyncio tasks (SIGUSR2)"):dump.find("end of tasks")]
        # Only the tasks running the pipeline's own code: the rest is Faust's and aiokafka's machinery.
        return "\n\n".join(block for block in dump.split("\n\n") if "/streams/" in block)[-8000:]


class TopicTap:
    """Reads a topic from its first offset, in the background, keeping every record."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records: list = []
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> "TopicTap":
        self._consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, group_id=None,
                                          auto_offset_reset="earliest", enable_auto_commit=False,
                                          metadata_max_age_ms=1000)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                self.records.extend(records)
                for record in records:
                    self.on_record(record)

    def on_record(self, record) -> None:
        """Called once per record as it arrives; subclasses decode here, once."""

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 60.0,
                       what: str | Callable[[], str] = "") -> None:
        """Waits until ``predicate()``; ``what`` (a text, or a function giving it at the timeout) explains a timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.1)
        explained = what() if callable(what) else what
        raise AssertionError(f"timed out after {timeout_s}s waiting for {explained or predicate}")


class UpdatesTap(TopicTap):
    """``position-updates``, decoded (once, on arrival) into position states and audit records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.decoded: list[Position | AuditRecord] = []
        self._latest: dict[str, Position] = {}

    def on_record(self, record) -> None:
        update = serde.decode_update(record.value)
        self.decoded.append(update)
        if isinstance(update, Position):
            self._latest[f"{update.symbol}@{update.exchange}"] = update

    def positions(self, key: str | None = None) -> list[Position]:
        return [u for u in self.decoded
                if isinstance(u, Position) and (key is None or f"{u.symbol}@{u.exchange}" == key)]

    def audits(self, key: str | None = None) -> list[AuditRecord]:
        return [u for u in self.decoded if isinstance(u, AuditRecord) and (key is None or u.key == key)]

    def latest(self, key: str) -> Position | None:
        return self._latest.get(key)

    async def wait_audited(self, bootstrap: str, inputs_topic: str, timeout_s: float = 60.0) -> None:
        """Until every input now on ``inputs_topic`` has its audit record here (one per applied input).

        The marker that the agent is done with what was sent, instead of a pause that hopes so.
        """
        inputs = {(record.key.decode(), record.offset)
                  for records in (await read_topic(bootstrap, inputs_topic)).values() for record in records}
        await self.wait_for(lambda: inputs <= {(audit.key, audit.offset) for audit in self.audits()}, timeout_s,
                            f"the audit records of {len(inputs)} inputs")


class CommandsTap(TopicTap):
    """``position-commands``, decoded (once, on arrival) into domain commands."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.decoded: list[Command] = []

    def on_record(self, record) -> None:
        self.decoded.append(serde.decode_command(record.value))

    def commands(self, key: str | None = None) -> list[Command]:
        return [c for c in self.decoded if key is None or c.key == key]


class InputSender:
    """Publishes inputs to ``position-inputs`` keyed by the raw bytes of SYMBOL@exchange."""

    _ids = itertools.count(1)

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)

    async def start(self) -> "InputSender":
        await self._producer.start()
        return self

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, event: InputEvent) -> int:
        metadata = await self._producer.send_and_wait(self.topic, key=event.key.encode(),
                                                      value=serde.encode_input(event))
        return metadata.offset

    async def send_many(self, events: list[InputEvent]) -> None:
        """Publishes ``events`` in order without a round trip each; returns once Kafka has them all."""
        acknowledgements = [await self._producer.send(self.topic, key=event.key.encode(),
                                                      value=serde.encode_input(event)) for event in events]
        await asyncio.gather(*acknowledgements)

    async def open(self, symbol: str, side: Side, quantity: str, signal_id: str | None = None,
                   exchange: str = "binance", stop_loss_pct: str | None = "2.5") -> str:
        signal_id = signal_id or f"sig-{next(self._ids)}"
        ts = now_ms()
        await self.send(InputEvent(
            event_id=f"signal:{signal_id}", key=f"{symbol}@{exchange}", ts=ts,
            payload=Signal(signal_id=signal_id, action=SignalAction.OPEN, symbol=symbol, exchange=exchange,
                           side=side, quantity=Decimal(quantity),
                           stop_loss_pct=Decimal(stop_loss_pct) if stop_loss_pct else None, ts=ts),
        ))
        return signal_id

    async def snapshot(self, symbol: str, side: Side | None, quantity: str, entry_price: str | None,
                       exchange: str = "binance", fetched_at: int | None = None) -> None:
        fetched_at = fetched_at or now_ms()
        await self.send(InputEvent(
            event_id=f"snapshot:{exchange}:{symbol}:{fetched_at}", key=f"{symbol}@{exchange}", ts=fetched_at,
            payload=ExchangeSnapshot(exchange=exchange, symbol=symbol, fetched_at=fetched_at, side=side,
                                     quantity=Decimal(quantity),
                                     entry_price=Decimal(entry_price) if entry_price else None),
        ))

    async def report(self, command: Command, outcome: ReportOutcome, *, filled_quantity: str | None = None,
                     average_price: str | None = None, stop_price: str | None = None,
                     error_code: int | None = None, error_message: str | None = None) -> None:
        ts = now_ms()
        await self.send(InputEvent(
            event_id=f"report:{command.client_order_id}:{outcome.value}", key=command.key, ts=ts,
            payload=ExecutionReport(
                position_id=command.position_id, client_order_id=command.client_order_id,
                role=command_role(command), outcome=outcome, ts=ts, exchange_order_id=f"x-{command.client_order_id}",
                filled_quantity=Decimal(filled_quantity) if filled_quantity else None,
                average_price=Decimal(average_price) if average_price else None,
                stop_price=Decimal(stop_price) if stop_price else None,
                error_code=error_code, error_message=error_message,
            ),
        ))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command_role(command: Command) -> OrderRole:
    return getattr(command, "role")


def now_ms() -> int:
    return int(time.time() * 1000)


Script = Callable[[Command, InputSender], Awaitable[None]]


class ScriptedExchange:
    """Answers every command on ``position-commands`` with the script's execution reports."""

    def __init__(self, bootstrap: str, topic: str, sender: InputSender, script: Script) -> None:
        self.sender = sender
        self.script = script
        self._tap = CommandsTap(bootstrap, topic)
        self._handled = 0
        self._task: asyncio.Task | None = None
        self.seen: list[Command] = []

    async def start(self) -> "ScriptedExchange":
        await self._tap.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            commands = self._tap.commands()
            for command in commands[self._handled:]:
                self._handled += 1
                self.seen.append(command)
                # Each answer runs on its own, as a real exchange answers orders independently.
                asyncio.create_task(self.script(command, self.sender))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._tap.stop()


# --------------------------------------------------------------------------- what one worker would do


async def create_plain_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Creates ``names`` with ``partitions`` partitions each (replication 1, broker defaults otherwise)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names])
    finally:
        await admin.close()


async def read_topic(bootstrap: str, topic: str) -> dict[int, list]:
    """Every record of ``topic`` from its start to its current end, by partition, in offset order."""
    partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
    records: dict[int, list] = {tp.partition: [] for tp in partitions}
    if not partitions:
        return records
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            for tp, batch in (await consumer.getmany(*remaining, timeout_ms=500)).items():
                records[tp.partition].extend(record for record in batch if record.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return records


async def changelog_states(bootstrap: str, topic: str) -> dict[str, KeyState]:
    """The table as its changelog holds it: the newest value per key, tombstones removed."""
    states: dict[str, KeyState | None] = {}
    for records in (await read_topic(bootstrap, topic)).values():
        for record in records:
            states[record.key.decode()] = None if record.value is None else \
                serde.key_state_from_record(codec.decode("KeyState", record.value))
    return {key: state for key, state in states.items() if state is not None}


@dataclass
class LogFold:
    """What ONE worker applying the whole inputs log in order decides: the reference of every multi-worker test."""

    states: dict[str, KeyState]
    commands: dict[str, set[bytes]]  # encoded commands, per key
    positions: dict[str, Position]  # the newest state of every position, by id

    def live_positions(self) -> dict[str, Position]:
        return {key: state.live_position for key, state in self.states.items() if state.live_position is not None}


async def fold_inputs_log(bootstrap: str, settings: Settings) -> LogFold:
    """Folds the agent's own ``InputProcessor`` over ``position-inputs`` from offset 0, sending nothing."""
    names = TopicNames.for_prefix(settings.topic_prefix)
    table: dict[bytes, KeyState] = {}
    commands: dict[str, set[bytes]] = {}
    positions: dict[str, Position] = {}
    acknowledged = asyncio.get_running_loop().create_future()
    acknowledged.set_result(None)

    async def collect(topic: str, key: bytes, value: bytes, headers: list) -> asyncio.Future:
        if topic == names.commands:
            commands.setdefault(key.decode(), set()).add(value)
        elif topic == names.updates:
            update = serde.decode_update(value)
            if isinstance(update, Position):
                positions[update.id] = update
        return acknowledged

    processor = InputProcessor(settings=settings, topics=names, send=collect, load=load_from(table), store=table.__setitem__)
    for partition, records in sorted((await read_topic(bootstrap, names.inputs)).items()):
        for record in records:
            await processor.apply(ConsumedRecord(names.inputs, partition, record.offset, record.key, record.value,
                                                 record.timestamp))
    states = {key.decode(): state for key, state in table.items()}
    return LogFold(states=states, commands=commands, positions=positions)


async def commands_on_topic(bootstrap: str, topic: str) -> dict[str, set[bytes]]:
    """The distinct commands on ``position-commands``, per key (a redelivered command counts once)."""
    found: dict[str, set[bytes]] = {}
    for records in (await read_topic(bootstrap, topic)).values():
        for record in records:
            found.setdefault(record.key.decode(), set()).add(record.value)
    return found


async def wait_until_applied(bootstrap: str, app_id: str, inputs_topic: str, timeout_s: float = 90.0) -> None:
    """Waits until the worker group has committed every input of the log (nothing left to apply)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(inputs_topic, p) for p in await topic_partitions(bootstrap, inputs_topic)]
        deadline = time.monotonic() + timeout_s
        while True:
            ends = await consumer.end_offsets(partitions)
            committed = {tp: (await consumer.committed(tp)) or 0 for tp in partitions}
            behind = {tp.partition: ends[tp] - committed[tp] for tp in partitions if committed[tp] < ends[tp]}
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the group {app_id} still has inputs to apply: {behind}")
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
