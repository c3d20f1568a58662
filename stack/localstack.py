"""A local Kafka (KRaft) and PostgreSQL for development and tests, without Docker.

Kafka runs from its Maven Central jars (fetched once into a cache folder, see
``stack/kafka/pom.xml``); PostgreSQL from the Debian packages. Everything the stack writes
(data, logs, pid files, chosen ports) lives under one git-ignored folder, ``.stack/``.

Starting is idempotent: a component whose recorded process still runs is reused. Stopping
ends exactly the processes recorded in the pid files, after checking that each pid still
belongs to the process we started (a recycled pid is left alone).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.1"
POSTGRES_MAJOR = "15"
DATABASE_NAME = "positions"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
KAFKA_HEAP = "-Xmx1g"  # the ceiling: CI machines have 2 cores and share memory with the tests
READY_TIMEOUT_S = 120.0

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_TEMPLATE_DIR = Path(__file__).resolve().parent / "kafka"


class StackError(RuntimeError):
    """A stack component could not be installed, started, reached or stopped."""


@dataclass(frozen=True)
class StackEndpoints:
    """Where the running stack answers."""

    kafka_bootstrap_servers: str
    database_url: str

    def env_lines(self) -> list[str]:
        """The shell lines that point the pipeline and the tests at this stack."""
        return [
            f"export KAFKA_BOOTSTRAP_SERVERS={self.kafka_bootstrap_servers}",
            f"export DATABASE_URL={self.database_url}",
        ]


@dataclass(frozen=True)
class StackPaths:
    """The folders the stack uses; ``root`` holds data and logs, ``cache`` the Kafka jars."""

    root: Path
    cache: Path

    @classmethod
    def from_environment(cls) -> "StackPaths":
        root = Path(os.environ.get("STACK_DIR", REPO_ROOT / ".stack")).resolve()
        cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        cache = Path(os.environ.get("STACK_CACHE_DIR", cache_home / "position-pipeline")).resolve()
        return cls(root=root, cache=cache)

    @property
    def kafka(self) -> Path:
        return self.root / "kafka"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def kafka_libs(self) -> Path:
        return self.cache / f"kafka-{KAFKA_VERSION}" / "libs"


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the variables to eval."""
    print(f"[stack] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _owned_pid(pid_file: Path, marker: str) -> int | None:
    """The recorded pid when that process is alive and is still the one we started."""
    pid = _read_pid(pid_file)
    if pid is None:
        return None
    cmdline = _cmdline(pid)
    # While the Java launcher starts the JVM, /proc/<pid>/cmdline reads empty for a moment.
    for _ in range(50):
        if cmdline or not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
        cmdline = _cmdline(pid)
    if marker not in cmdline:
        return None
    status = Path(f"/proc/{pid}/status")
    with contextlib.suppress(OSError):
        if "\nState:\tZ" in status.read_text():
            return None
    return pid


def _terminate(pid: int, stop_signal: int, name: str, timeout_s: float = 60.0) -> None:
    log(f"stopping {name} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, stop_signal)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or "\nState:\tZ" in _safe_read(Path(f"/proc/{pid}/status")):
            return
        time.sleep(0.2)
    log(f"{name} (pid {pid}) ignored {signal.Signals(stop_signal).name} for {timeout_s:.0f}s: killing it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _safe_read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _choose_port(env_var: str, preferred: int) -> int:
    """The configured port, else the conventional one when free, else any free port."""
    configured = os.environ.get(env_var)
    if configured:
        return int(configured)
    return preferred if _port_is_free(preferred) else _free_port()


def _load_ports(state_file: Path) -> dict[str, int]:
    try:
        return json.loads(state_file.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(_safe_read(path).splitlines()[-lines:])


@contextlib.contextmanager
def _stack_lock(paths: StackPaths):
    """Serialises concurrent `make stack` / test sessions on one stack folder."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- Kafka


def _fetch_kafka_jars(paths: StackPaths) -> None:
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
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(
            f"fetching Kafka's jars failed (exit {result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    if not any(staging.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        raise StackError(f"Maven finished but {staging} holds no kafka_2.13-{KAFKA_VERSION}.jar")
    shutil.rmtree(paths.kafka_libs, ignore_errors=True)
    staging.rename(paths.kafka_libs)
    complete_marker.touch()
    log(f"Kafka jars fetched in {time.monotonic() - started:.1f}s")


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
        if _owned_pid(pid_file, marker) is None:
            raise StackError(f"Kafka exited during start-up; last lines of {log_file}:\n{_tail(log_file)}")
        if asyncio.run(_kafka_answers(bootstrap)):
            return
        time.sleep(0.5)
    raise StackError(f"Kafka did not answer describe_cluster within {READY_TIMEOUT_S:.0f}s; see {log_file}")


def ensure_kafka(paths: StackPaths) -> str:
    """Starts the single-node KRaft broker unless it already runs; returns its bootstrap address."""
    kafka_dir = paths.kafka
    kafka_dir.mkdir(parents=True, exist_ok=True)
    pid_file = kafka_dir / "kafka.pid"
    ports_file = kafka_dir / "ports.json"
    properties_file = kafka_dir / "server.properties"
    marker = str(properties_file)
    log_file = kafka_dir / "kafka.out"

    ports = _load_ports(ports_file)
    if _owned_pid(pid_file, marker) is not None and ports:
        bootstrap = f"127.0.0.1:{ports['broker']}"
        _wait_for_kafka(bootstrap, pid_file, marker, log_file)
        log(f"Kafka already running (pid {_read_pid(pid_file)}) on {bootstrap}")
        return bootstrap

    _fetch_kafka_jars(paths)
    if not ports:
        broker_port = _choose_port("STACK_KAFKA_PORT", 9092)
        controller_port = _choose_port("STACK_KAFKA_CONTROLLER_PORT", 9093)
        if controller_port == broker_port:
            controller_port = _free_port()
        ports = {"broker": broker_port, "controller": controller_port}
        ports_file.write_text(json.dumps(ports))
    for name, port in ports.items():
        if not _port_is_free(port):
            raise StackError(
                f"port {port} recorded for Kafka's {name} listener is taken by another process; "
                f"free it, or remove {paths.root} to start over on new ports"
            )
    properties_file.write_text(_kafka_properties(paths, ports["broker"], ports["controller"]))

    if not (kafka_dir / "data" / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        log(f"formatting KRaft storage (cluster id {cluster_id})")
        result = subprocess.run(
            _java_command(paths, "kafka.tools.StorageTool", "format", "--standalone",
                          "--cluster-id", cluster_id, "--config", str(properties_file)),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(f"kafka-storage format failed:\n{result.stdout}{result.stderr}")

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
    pid_file = paths.kafka / "kafka.pid"
    pid = _owned_pid(pid_file, str(paths.kafka / "server.properties"))
    if pid is not None:
        _terminate(pid, signal.SIGTERM, "Kafka")
    pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bin() -> Path:
    bin_dir = Path(f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin")
    if (bin_dir / "initdb").exists():
        return bin_dir
    if os.geteuid() != 0:
        raise StackError(f"PostgreSQL {POSTGRES_MAJOR} is missing: sudo apt-get install postgresql-{POSTGRES_MAJOR}")
    log(f"installing postgresql-{POSTGRES_MAJOR} from the Debian packages")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", f"postgresql-{POSTGRES_MAJOR}"]):
        result = subprocess.run(command, capture_output=True, text=True, env=environment)
        if result.returncode != 0:
            raise StackError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    if not (bin_dir / "initdb").exists():
        raise StackError(f"postgresql-{POSTGRES_MAJOR} installed but {bin_dir}/initdb is missing")
    return bin_dir


def _as_postgres_user(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the `postgres` system user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _postgres_home(paths: StackPaths) -> Path:
    """The folder holding the cluster: inside .stack/ when the postgres user can reach it.

    As root the repository may sit below a folder only root can traverse (/root). Then the
    cluster lives in /var/tmp and .stack/postgres is a link to it, so it is still found,
    and removed, through .stack/.
    """
    home = paths.postgres
    if home.is_symlink() or home.exists():
        return home.resolve()
    if os.geteuid() != 0:
        home.mkdir(parents=True)
        return home
    paths.root.mkdir(parents=True, exist_ok=True)
    reachable = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(paths.root)]).returncode == 0
    if reachable:
        home.mkdir()
    else:
        digest = hashlib.sha256(str(paths.root).encode()).hexdigest()[:12]
        outside = Path("/var/tmp") / f"position-pipeline-postgres-{digest}"
        outside.mkdir(parents=True, exist_ok=True)
        home.symlink_to(outside)
        home = outside
    shutil.chown(home, "postgres", "postgres")
    return home


def _run_checked(command: list[str], what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise StackError(f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def ensure_postgres(paths: StackPaths) -> str:
    """Starts a throwaway PostgreSQL cluster on 127.0.0.1 unless it runs; returns its URL."""
    bin_dir = _postgres_bin()
    home = _postgres_home(paths)
    data_dir = home / "data"
    pid_file = paths.root / "postgres.pid"
    ports_file = paths.root / "postgres-port.json"
    log_file = home / "postgres.log"
    marker = str(data_dir)

    ports = _load_ports(ports_file)
    running = _owned_pid(pid_file, marker)
    if running is None:
        if not ports:
            ports = {"port": _choose_port("STACK_POSTGRES_PORT", 5432)}
            ports_file.write_text(json.dumps(ports))
        port = ports["port"]
        if not _port_is_free(port):
            raise StackError(
                f"port {port} recorded for PostgreSQL is taken by another process; free it, "
                f"or remove {paths.root} to start over on a new port"
            )
        if not (data_dir / "PG_VERSION").exists():
            log(f"initialising a PostgreSQL {POSTGRES_MAJOR} cluster in {data_dir}")
            _run_checked(_as_postgres_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                                            "--auth=trust", "--encoding=UTF8", "--no-locale"]), "initdb")
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(port),
                "unix_socket_directories": f"'{home}'",
                # A throwaway test cluster: durability across power loss buys nothing here.
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "max_connections": "200",
            }
            with open(data_dir / "postgresql.conf", "a") as conf:
                conf.write("\n# position-pipeline local stack\n")
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        log(f"starting PostgreSQL on 127.0.0.1:{port}")
        _run_checked(_as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file),
                                        "-w", "-t", "60", "start"]), "pg_ctl start")
        postmaster_pid = _read_pid(data_dir / "postmaster.pid")
        if postmaster_pid is None:
            raise StackError(f"PostgreSQL started but wrote no postmaster.pid; see {log_file}")
        pid_file.write_text(f"{postmaster_pid}\n")
    else:
        log(f"PostgreSQL already running (pid {running}) on 127.0.0.1:{ports['port']}")
    port = ports["port"]

    psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres", "-tAc"]
    exists = _run_checked([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'"], "psql")
    if exists.stdout.strip() != "1":
        _run_checked([*psql, f"CREATE DATABASE {DATABASE_NAME}"], "CREATE DATABASE")
    return f"postgresql://postgres@127.0.0.1:{port}/{DATABASE_NAME}"


def stop_postgres(paths: StackPaths) -> None:
    """Ends the postmaster recorded in the pid file (fast shutdown), if it is still ours."""
    pid_file = paths.root / "postgres.pid"
    home = paths.postgres.resolve() if (paths.postgres.exists() or paths.postgres.is_symlink()) else paths.postgres
    pid = _owned_pid(pid_file, str(home / "data"))
    if pid is not None:
        _terminate(pid, signal.SIGINT, "PostgreSQL")  # SIGINT is PostgreSQL's "fast" shutdown
    pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the whole stack


def ensure_running(paths: StackPaths | None = None) -> StackEndpoints:
    """Starts (or reuses) Kafka and PostgreSQL and records the variables in .stack/env."""
    paths = paths or StackPaths.from_environment()
    with _stack_lock(paths):
        endpoints = StackEndpoints(
            kafka_bootstrap_servers=ensure_kafka(paths),
            database_url=ensure_postgres(paths),
        )
        (paths.root / "env").write_text("\n".join(endpoints.env_lines()) + "\n")
    return endpoints


def stop(paths: StackPaths | None = None) -> None:
    """Stops exactly the processes the stack started; data stays for the next start."""
    paths = paths or StackPaths.from_environment()
    if not paths.root.exists():
        log("nothing to stop: no stack folder")
        return
    with _stack_lock(paths):
        stop_kafka(paths)
        stop_postgres(paths)
    log("stopped")


def purge(paths: StackPaths | None = None) -> None:
    """Stops the stack and removes all its data, the cluster kept in /var/tmp included."""
    paths = paths or StackPaths.from_environment()
    stop(paths)
    if paths.postgres.is_symlink():
        shutil.rmtree(paths.postgres.resolve(), ignore_errors=True)
    shutil.rmtree(paths.root, ignore_errors=True)
    log(f"removed {paths.root}")


def status(paths: StackPaths | None = None) -> dict[str, int | None]:
    """The pid of each running component, or None."""
    paths = paths or StackPaths.from_environment()
    home = paths.postgres.resolve() if paths.postgres.exists() else paths.postgres
    return {
        "kafka": _owned_pid(paths.kafka / "kafka.pid", str(paths.kafka / "server.properties")),
        "postgres": _owned_pid(paths.root / "postgres.pid", str(home / "data")),
    }
