"""What the benchmarks share: the broker's address, private deployments, a worker launcher, topic readers.

Nothing here comes from ``tests/``: the benchmarks stand on their own.

- ``endpoints()``: the broker and database the variables name (else the local stack).
- ``Deployment``: a private app id and topic prefix on the shared broker, its topics created
  with the pipeline's own ``ensure_topics`` and deleted again afterwards (every topic whose
  name holds the app id: the table changelog and the peers' internal topics too).
- ``Worker``: a ``python -m streams worker`` subprocess of a deployment.
- ``produce_all``, ``read_topic``, ``wait_until_committed``, ``audit_stamps``: input
  publishing, whole-topic reads, completion by committed offsets, and the Kafka timestamps
  of the audit records on ``position-updates`` (read after a run, never during it, so the
  measuring process takes no CPU from the measured one on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.wire import codec, serde
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics, topic_partitions

REPO_ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 12
#: Deadlines far beyond any run: a benchmark's inputs must be the only inputs.
NO_DEADLINES_S = "86400"


def endpoints() -> tuple[str, str]:
    """(KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL): the variables, else the local stack (started if needed)."""
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("DATABASE_URL")
    if not (kafka and database):
        from stack import localstack

        # The stack's readiness probe runs its own event loop: from inside a benchmark's
        # running loop it has to run on a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
            found = thread.submit(localstack.ensure_running).result()
        kafka, database = kafka or found.kafka_bootstrap_servers, database or found.database_url
    return kafka, database


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Deployment:
    """A private pipeline deployment on the shared broker: its app id, topics and settings."""

    bootstrap: str
    database_url: str
    label: str = "bench"
    partitions: int = PARTITIONS
    app_id: str = ""

    def __post_init__(self) -> None:
        self.app_id = self.app_id or f"{self.label}-{uuid.uuid4().hex[:8]}"

    @property
    def prefix(self) -> str:
        return f"{self.app_id}."

    @property
    def topics(self) -> TopicNames:
        return TopicNames.for_prefix(self.prefix)

    def settings(self, **overrides: object) -> Settings:
        return Settings.from_env(kafka_bootstrap_servers=self.bootstrap, database_url=self.database_url,
                                 app_id=self.app_id, topic_prefix=self.prefix, topic_partitions=self.partitions,
                                 **overrides)

    async def create(self, log_append_time: Iterable[str] = ()) -> "Deployment":
        """Creates the pipeline's topics (``log_append_time``: topics the broker stamps itself, first)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            from aiokafka.admin import NewTopic

            extra = [NewTopic(name, num_partitions=self.partitions, replication_factor=1,
                              topic_configs={"message.timestamp.type": "LogAppendTime"})
                     for name in log_append_time]
            if extra:
                await admin.create_topics(extra)
        finally:
            await admin.close()
        await ensure_topics(self.settings())
        return self

    async def delete(self) -> None:
        """Deletes every topic whose name holds the app id (aiokafka cannot delete consumer groups)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            mine = [name for name in await admin.list_topics() if self.app_id in name]
            if mine:
                with contextlib.suppress(Exception):
                    await admin.delete_topics(mine)
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def deployment(bootstrap: str, database_url: str, label: str, log_append_time: Iterable[str] = ()):
    """A fresh ``Deployment`` with its topics, deleted on exit."""
    created = Deployment(bootstrap, database_url, label)
    names = [getattr(created.topics, name) for name in log_append_time]
    await created.create(names)
    try:
        yield created
    finally:
        await created.delete()


@dataclass
class Worker:
    """One ``python -m streams worker`` process of a deployment (exchange edge off, no deadlines)."""

    deployment: Deployment
    data_dir: Path
    log_path: Path
    store: str = "rocksdb://"
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    web_port: int = field(default_factory=free_port)
    log_offset: int = 0

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.deployment.bootstrap,
            "DATABASE_URL": self.deployment.database_url,
            "PIPELINE_APP_ID": self.deployment.app_id,
            "PIPELINE_TOPIC_PREFIX": self.deployment.prefix,
            "PIPELINE_TOPIC_PARTITIONS": str(self.deployment.partitions),
            "PIPELINE_TABLE_STORE": self.store,
            "PIPELINE_DATA_DIR": str(self.data_dir),
            "PIPELINE_ENTRY_TIMEOUT_S": NO_DEADLINES_S,
            "PIPELINE_STOP_LOSS_TIMEOUT_S": NO_DEADLINES_S,
            "PIPELINE_CLOSE_TIMEOUT_S": NO_DEADLINES_S,
            "PIPELINE_EXCHANGE_EDGE": "off",
            "WEB_PORT": str(self.web_port),
            "PYTHONPATH": str(REPO_ROOT),
            **self.extra_env,
        }

    def launch(self) -> None:
        """Starts the process and returns at once."""
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", "--loglevel", "info"],
            cwd=REPO_ROOT, env=self.environment(), stdin=subprocess.DEVNULL,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def ready(self) -> bool:
        """True once Faust logged that the worker is ready (group joined, table recovered)."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            return b"[^Worker]: Ready" in log.read()

    async def start(self, ready_timeout_s: float = 180.0) -> "Worker":
        """Starts the process and waits until it is ready."""
        self.launch()
        deadline = time.monotonic() + ready_timeout_s
        while not self.ready:
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"worker not ready within {ready_timeout_s}s:\n{self.log_tail()}")
            await asyncio.sleep(0.2)
        return self

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), a kill if it takes more than 60 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def log_tail(self, characters: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""


async def produce_all(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Publishes (key, value) pairs as fast as the broker takes them, all acknowledged on return."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str) -> dict[int, list]:
    """Every record of ``topic`` from its start to its current end, by partition, in offset order."""
    partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
    records: dict[int, list] = {tp.partition: [] for tp in partitions}
    if not partitions:
        return records
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
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


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def wait_until_committed(bootstrap: str, group: str, topic: str, timeout_s: float,
                               alive=lambda: True, poll_s: float = 0.5) -> None:
    """Waits until ``group`` has committed every record ``topic`` holds now: all inputs applied.

    Every contender commits an input's offset only after its outputs are acknowledged, so
    the outputs are complete when this returns. ``alive()`` is asked on every poll (a dead
    contender raises instead of waiting out the timeout).
    """
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {tp: (await consumer.committed(tp)) or 0 for tp in ends}
            behind = sum(ends[tp] - committed[tp] for tp in ends if committed[tp] < ends[tp])
            if not behind:
                return
            alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {group} still has {behind} inputs of {topic} to apply after {timeout_s}s")
            await asyncio.sleep(poll_s)
    finally:
        await consumer.stop()


def is_audit_update(value: bytes) -> bool:
    """True for an AuditRecord on ``position-updates``, False for a position state, without decoding it.

    The record is Avro single-object encoded ``PositionUpdate {key: string, offset: long,
    payload: [PositionState, AuditRecord]}``: skip the header, the key and the offset, read
    the union branch.
    """
    length, position = serde.zigzag_varint(value, codec.HEADER_LENGTH)
    _offset, position = serde.zigzag_varint(value, position + length)
    branch, _position = serde.zigzag_varint(value, position)
    return branch == 1


async def audit_stamps(bootstrap: str, topic: str) -> list[int]:
    """The Kafka timestamps (ms) of every audit record on ``topic`` (``position-updates``), sorted."""
    stamps = [record.timestamp for records in (await read_topic(bootstrap, topic)).values()
              for record in records if is_audit_update(record.value)]
    return sorted(stamps)


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, label: str):
    """A new database ``<label>_<random>`` on the server of ``server_url``; dropped (forcibly) on exit."""
    name = f"{label}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(urlunsplit(urlsplit(server_url)._replace(path="/postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def spawn(module: str, arguments: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``python -m module arguments`` in its own session, output to ``log_path``."""
    return subprocess.Popen([sys.executable, "-m", module, *arguments], cwd=REPO_ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def terminate(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM, then SIGKILL to its process group after ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def alive_check(process: subprocess.Popen, log_path: Path):
    """A callable that raises when ``process`` has exited (for ``wait_until_committed``)."""
    def check() -> None:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise RuntimeError(f"{process.args} exited with {process.returncode}:\n{tail}")
    return check


async def first_record_stamp(bootstrap: str, topic: str, key: bytes, since: dict[TopicPartition, int],
                             timeout_s: float, alive=lambda: None) -> int:
    """The Kafka timestamp (ms) of the first record of ``key`` on ``topic`` after the offsets ``since``.

    Waits on long fetches (the waiting process takes next to no CPU from the measured one);
    ``alive()`` is asked between fetches.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=200)
    await consumer.start()
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for record in batch:
                    if record.key == key:
                        return record.timestamp
            alive()
        raise TimeoutError(f"no record of {key!r} on {topic} within {timeout_s}s")
    finally:
        await consumer.stop()


async def wait_group_stable(bootstrap: str, group: str, members: int, timeout_s: float = 120.0) -> None:
    """Waits until consumer group ``group`` is Stable with ``members`` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            (response,) = await admin.describe_consumer_groups([group])
            found = response.to_object()["groups"][0]
            if found["state"] == "Stable" and len(found["members"]) == members:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {group}: {found['group_state']} with {len(found['members'])} members "
                                   f"after {timeout_s}s, {members} expected")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


class CpuMeter:
    """CPU used between ``start()`` and ``stop()``: by the whole machine (/proc/stat) and by some processes."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self._machine = self._processes = self._wall = 0.0
        self.machine_busy = self.processes_cores = 0.0

    @staticmethod
    def _machine_times() -> tuple[float, float]:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def _process_seconds(self) -> float:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / os.sysconf("SC_CLK_TCK")

    def start(self) -> "CpuMeter":
        self._machine, self._processes, self._wall = self._machine_times(), self._process_seconds(), time.monotonic()
        return self

    def stop(self) -> "CpuMeter":
        (busy_before, total_before), (busy, total) = self._machine, self._machine_times()
        self.machine_busy = (busy - busy_before) / max(1, total - total_before)
        self.processes_cores = (self._process_seconds() - self._processes) / max(1e-9, time.monotonic() - self._wall)
        return self
