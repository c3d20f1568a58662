"""`python -m streams.supervise`: the pipeline's own processes, in the foreground.

Starts the stream worker (``python -m streams worker``: the agents, the table, the exchange
edge) and the PostgreSQL sink (``python -m sinks``) as children in this process group, with
the same environment. Ctrl-C or SIGTERM stops them cleanly; when one child exits on its own
the others are stopped and the supervisor exits with that child's code, so a process
manager (make, systemd, a container runtime) sees the failure. SIGKILL of the process
group is a crash of all of them; starting again resumes from the committed offsets, the
table's changelog and the sink's version guard, losing and duplicating nothing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

PROCESSES: dict[str, list[str]] = {
    "worker": [sys.executable, "-m", "streams", "worker", "--loglevel", "info"],
    "sink": [sys.executable, "-m", "sinks"],
}
STOP_TIMEOUT_S = 60.0


def main() -> int:
    children = {name: subprocess.Popen(command, stdin=subprocess.DEVNULL) for name, command in PROCESSES.items()}
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            code = child.poll()
            if code is not None:
                print(f"[supervise] {name} exited with {code}; stopping the others", file=sys.stderr, flush=True)
                exit_code = code or 1
                stopping = True
                break
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
