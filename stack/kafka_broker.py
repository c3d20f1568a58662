"""The stack's Kafka: one KRaft node (broker and controller in one JVM) run from Maven jars.

The jars of ``KAFKA_VERSION`` and its runtime dependencies are fetched once from Maven
Central into the shared cache (see ``stack/kafka/pom.xml``); the broker's configuration,
data and logs live in ``.stack/kafka/``. The templates (``server.properties``,
``log4j2.properties``) sit in ``stack/kafka/``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from stack.layout import KAFKA_VERSION, StackError, StackPaths, log
from stack.processes import (
    choose_port,
    free_port,
    load_ports,
    owned_pid,
    port_is_free,
    read_pid,
    run_checked,
    tail,
    terminate,
)

__all__ = ["ensure_kafka", "fetch_kafka_jars", "kafka_pid", "stop_kafka"]

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
KAFKA_HEAP = "-Xmx1g"  # the ceiling: CI machines have 2 cores and share memory with the tests
READY_TIMEOUT_S = 120.0

KAFKA_TEMPLATE_DIR = Path(__file__).resolve().parent / "kafka"


def fetch_kafka_jars(paths: StackPaths) -> None:
    """Copies Kafka and its runtime dependencies from Maven Central into the cache, once."""
    complete_marker = paths.kafka_libs / ".complete"
    if complete_marker.exists():
        return
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is required to fetch Kafka's jars: apt-get install maven")
    if shutil.which("java") is None:
        raise StackError("Java 17+ is required to run Kafka: apt-get install openjdk-17-jre-headless")
    staging = paths.kafka_libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    log(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central into {paths.kafka_libs}")
    started = time.monotonic()
    command = [
        "mvn", "--batch-mode", "--quiet",
        "-f", str(KAFKA_TEMPLATE_DIR / "pom.xml"),
        DEPENDENCY_PLUGIN,
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    run_checked(command, "fetching Kafka's jars", output_chars=4000)
    if not any(staging.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        raise StackError(f"Maven finished but {staging} holds no kafka_2.13-{KAFKA_VERSION}.jar")
    shutil.rmtree(paths.kafka_libs, ignore_errors=True)
    staging.rename(paths.kafka_libs)
    complete_marker.touch()
    log(f"Kafka jars fetched in {time.monotonic() - started:.1f}s")


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding, as Kafka writes them.

    Like Kafka's own ``Uuid.randomUuid()``, it never begins with ``-``: ``kafka-storage format``
    would read such an id as an option and stop with "argument --cluster-id: expected one
    argument" (one fresh stack in 64 failed that way).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_properties(paths: StackPaths, broker_port: int, controller_port: int) -> str:
    template = (KAFKA_TEMPLATE_DIR / "server.properties").read_text()
    return template.format(
        broker_port=broker_port,
        controller_port=controller_port,
        log_dirs=paths.kafka / "data",
    )


def _java_command(paths: StackPaths, main_class: str, *args: str) -> list[str]:
    return [
        "java", KAFKA_HEAP, "-Xms256m", "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_TEMPLATE_DIR / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={paths.kafka / 'logs'}",
        "-cp", f"{paths.kafka_libs}/*",
        main_class, *args,
    ]


async def _kafka_answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    # Connection refusals are the expected answer while the broker boots; keep them quiet.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return bool(cluster.get("brokers"))
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"; the caller retries
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def _wait_for_kafka(bootstrap: str, pid_file: Path, marker: str, log_file: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if owned_pid(pid_file, marker) is None:
            raise StackError(f"Kafka exited during start-up; last lines of {log_file}:\n{tail(log_file)}")
        if asyncio.run(_kafka_answers(bootstrap)):
            return
        time.sleep(0.5)
    raise StackError(f"Kafka did not answer describe_cluster within {READY_TIMEOUT_S:.0f}s; see {log_file}")


def _pid_file(paths: StackPaths) -> Path:
    return paths.kafka / "kafka.pid"


def _properties_file(paths: StackPaths) -> Path:
    # Also the marker of our broker: its path is on the JVM's command line.
    return paths.kafka / "server.properties"


def kafka_pid(paths: StackPaths) -> int | None:
    """The pid of the broker this stack started, while it runs."""
    return owned_pid(_pid_file(paths), str(_properties_file(paths)))


def ensure_kafka(paths: StackPaths) -> str:
    """Starts the single-node KRaft broker unless it already runs; returns its bootstrap address."""
    kafka_dir = paths.kafka
    kafka_dir.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file(paths)
    ports_file = kafka_dir / "ports.json"
    properties_file = _properties_file(paths)
    marker = str(properties_file)
    log_file = kafka_dir / "kafka.out"

    ports = load_ports(ports_file)
    if kafka_pid(paths) is not None and ports:
        bootstrap = f"127.0.0.1:{ports['broker']}"
        _wait_for_kafka(bootstrap, pid_file, marker, log_file)
        log(f"Kafka already running (pid {read_pid(pid_file)}) on {bootstrap}")
        return bootstrap

    fetch_kafka_jars(paths)
    if not ports:
        broker_port = choose_port("STACK_KAFKA_PORT", 9092)
        controller_port = choose_port("STACK_KAFKA_CONTROLLER_PORT", 9093)
        if controller_port == broker_port:
            controller_port = free_port()
        ports = {"broker": broker_port, "controller": controller_port}
        ports_file.write_text(json.dumps(ports))
    for name, port in ports.items():
        if not port_is_free(port):
            raise StackError(
                f"port {port} recorded for Kafka's {name} listener is taken by another process; "
                f"free it, or remove {paths.root} to start over on new ports"
            )
    properties_file.write_text(_kafka_properties(paths, ports["broker"], ports["controller"]))

    if not (kafka_dir / "data" / "meta.properties").exists():
        cluster_id = new_cluster_id()
        log(f"formatting KRaft storage (cluster id {cluster_id})")
        run_checked(_java_command(paths, "kafka.tools.StorageTool", "format", "--standalone",
                                  "--cluster-id", cluster_id, "--config", str(properties_file)),
                    "kafka-storage format")

    log(f"starting Kafka {KAFKA_VERSION} (KRaft, broker+controller) on 127.0.0.1:{ports['broker']}")
    with open(log_file, "ab") as output:
        process = subprocess.Popen(
            _java_command(paths, "kafka.Kafka", str(properties_file)),
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=kafka_dir,
        )
    pid_file.write_text(f"{process.pid}\n")
    bootstrap = f"127.0.0.1:{ports['broker']}"
    _wait_for_kafka(bootstrap, pid_file, marker, log_file)
    log(f"Kafka ready (pid {process.pid})")
    return bootstrap


def stop_kafka(paths: StackPaths) -> None:
    """Ends the broker recorded in the pid file, if it is still ours."""
    pid = kafka_pid(paths)
    if pid is not None:
        terminate(pid, signal.SIGTERM, "Kafka")
    _pid_file(paths).unlink(missing_ok=True)
