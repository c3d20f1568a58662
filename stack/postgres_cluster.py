"""The stack's PostgreSQL: a throwaway cluster from the Debian packages, on 127.0.0.1.

The cluster lives in ``.stack/postgres/`` (or in /var/tmp behind a link there, when running
as root below a folder the ``postgres`` user cannot enter); it holds one database,
``DATABASE_NAME``, that the pipeline and the tests use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from stack.layout import POSTGRES_MAJOR, StackError, StackPaths, log
from stack.processes import choose_port, load_ports, owned_pid, port_is_free, read_pid, run_checked, terminate

__all__ = ["DATABASE_NAME", "ensure_postgres", "postgres_pid", "stop_postgres"]

DATABASE_NAME = "positions"


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
        run_checked(command, " ".join(command), env=environment)
    if not (bin_dir / "initdb").exists():
        raise StackError(f"postgresql-{POSTGRES_MAJOR} installed but {bin_dir}/initdb is missing")
    return bin_dir


def _as_postgres_user(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the `postgres` system user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _postgres_home(paths: StackPaths) -> Path:
    """The folder holding the cluster, created if needed: inside .stack/ when the postgres user can reach it.

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


def _pid_file(paths: StackPaths) -> Path:
    return paths.root / "postgres.pid"


def postgres_pid(paths: StackPaths) -> int | None:
    """The pid of the postmaster this stack started, while it runs (creates nothing)."""
    home = paths.postgres.resolve() if (paths.postgres.exists() or paths.postgres.is_symlink()) else paths.postgres
    # The data folder is on the postmaster's command line (-D): it marks our server.
    return owned_pid(_pid_file(paths), str(home / "data"))


def _initialise(bin_dir: Path, home: Path, data_dir: Path, port: int) -> None:
    """initdb, then the settings of a local throwaway cluster appended to postgresql.conf."""
    log(f"initialising a PostgreSQL {POSTGRES_MAJOR} cluster in {data_dir}")
    run_checked(_as_postgres_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
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


def ensure_postgres(paths: StackPaths) -> str:
    """Starts a throwaway PostgreSQL cluster on 127.0.0.1 unless it runs; returns its URL."""
    bin_dir = _postgres_bin()
    home = _postgres_home(paths)
    data_dir = home / "data"
    pid_file = _pid_file(paths)
    ports_file = paths.root / "postgres-port.json"
    log_file = home / "postgres.log"

    ports = load_ports(ports_file)
    running = owned_pid(pid_file, str(data_dir))
    if running is None:
        if not ports:
            ports = {"port": choose_port("STACK_POSTGRES_PORT", 5432)}
            ports_file.write_text(json.dumps(ports))
        port = ports["port"]
        if not port_is_free(port):
            raise StackError(
                f"port {port} recorded for PostgreSQL is taken by another process; free it, "
                f"or remove {paths.root} to start over on a new port"
            )
        if not (data_dir / "PG_VERSION").exists():
            _initialise(bin_dir, home, data_dir, port)
        log(f"starting PostgreSQL on 127.0.0.1:{port}")
        run_checked(_as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file),
                                       "-w", "-t", "60", "start"]), "pg_ctl start")
        postmaster_pid = read_pid(data_dir / "postmaster.pid")
        if postmaster_pid is None:
            raise StackError(f"PostgreSQL started but wrote no postmaster.pid; see {log_file}")
        pid_file.write_text(f"{postmaster_pid}\n")
    else:
        log(f"PostgreSQL already running (pid {running}) on 127.0.0.1:{ports['port']}")
    port = ports["port"]

    psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres", "-tAc"]
    exists = run_checked([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'"], "psql")
    if exists.stdout.strip() != "1":
        run_checked([*psql, f"CREATE DATABASE {DATABASE_NAME}"], "CREATE DATABASE")
    return f"postgresql://postgres@127.0.0.1:{port}/{DATABASE_NAME}"


def stop_postgres(paths: StackPaths) -> None:
    """Ends the postmaster recorded in the pid file (fast shutdown), if it is still ours."""
    pid = postgres_pid(paths)
    if pid is not None:
        terminate(pid, signal.SIGINT, "PostgreSQL")  # SIGINT is PostgreSQL's "fast" shutdown
    _pid_file(paths).unlink(missing_ok=True)
