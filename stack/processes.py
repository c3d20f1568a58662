"""The processes the stack starts: pid files, ports, commands, and the lock on the stack folder.

A pid file alone proves nothing (pids are recycled), so every check also asks
``/proc/<pid>/cmdline`` for a marker only our process carries (its config or data path).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from stack.layout import StackError, StackPaths, log

__all__ = [
    "choose_port",
    "free_port",
    "load_ports",
    "owned_pid",
    "port_is_free",
    "read_pid",
    "run_checked",
    "stack_lock",
    "tail",
    "terminate",
]


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file`` (first word), or None when there is none."""
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _safe_read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _is_zombie(pid: int) -> bool:
    return "\nState:\tZ" in _safe_read(Path(f"/proc/{pid}/status"))


def owned_pid(pid_file: Path, marker: str) -> int | None:
    """The recorded pid when that process is alive and is still the one we started."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    cmdline = _cmdline(pid)
    # While the Java launcher starts the JVM, /proc/<pid>/cmdline reads empty for a moment.
    for _ in range(50):
        if cmdline or not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
        cmdline = _cmdline(pid)
    if marker not in cmdline or _is_zombie(pid):
        return None
    return pid


def terminate(pid: int, stop_signal: int, name: str, timeout_s: float = 60.0) -> None:
    """Sends ``stop_signal`` and waits for the process to end; SIGKILL after ``timeout_s``."""
    log(f"stopping {name} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, stop_signal)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.2)
    log(f"{name} (pid {pid}) ignored {signal.Signals(stop_signal).name} for {timeout_s:.0f}s: killing it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def choose_port(env_var: str, preferred: int) -> int:
    """The configured port, else the conventional one when free, else any free port."""
    configured = os.environ.get(env_var)
    if configured:
        return int(configured)
    return preferred if port_is_free(preferred) else free_port()


def load_ports(state_file: Path) -> dict[str, int]:
    """The ports a component was given at its first start ({} before that)."""
    try:
        return json.loads(state_file.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" when it cannot be read)."""
    return "\n".join(_safe_read(path).splitlines()[-lines:])


def run_checked(command: list[str], what: str, *, env: dict[str, str] | None = None,
                output_chars: int = 3000) -> subprocess.CompletedProcess:
    """Runs ``command`` to its end; raises ``StackError`` with the end of its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    if result.returncode != 0:
        raise StackError(f"{what} failed (exit {result.returncode}):\n"
                         f"{result.stdout[-output_chars:]}{result.stderr[-output_chars:]}")
    return result


@contextlib.contextmanager
def stack_lock(paths: StackPaths) -> Iterator[None]:
    """Serialises concurrent `make stack` / test sessions on one stack folder."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
