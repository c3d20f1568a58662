"""`python -m streams.supervise`: the pipeline's own processes, in the foreground.

Starts the stream worker (``python -m streams worker``: the agents, the table, the exchange
edge, the web endpoint), the PostgreSQL sink (``python -m sinks``) and the signal ingest
(``python -m streams.ingest``) as children in this process group, with
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

from streams.settings import Settings, masked_url

PROCESSES: dict[str, list[str]] = {
    "worker": [sys.executable, "-m", "streams", "worker", "--loglevel", "info"],
    "sink": [sys.executable, "-m", "sinks"],
    "ingest": [sys.executable, "-m", "streams.ingest"],
}
STOP_TIMEOUT_S = 60.0


def banner(settings: Settings) -> str:
    """Where to look, printed once everything is started (credentials masked: banners reach logs)."""
    web = f"http://{settings.web_bind}:{settings.web_port}"
    exchange = (f"built-in emulator, http://127.0.0.1:{settings.emulator_port}/_emulator/orders"
                if settings.binance_futures_url is None else masked_url(settings.binance_futures_url))
    feed = masked_url(settings.signals_ws_url) or f"built-in demo feed, ws://127.0.0.1:{settings.demo_feed_port}"
    return "\n".join([
        "",
        "position-pipeline is running",
        f"  positions page   {web}/",
        f"  positions JSON   {web}/positions/",
        f"  metrics          {web}/metrics",
        f"  PostgreSQL       psql '{masked_url(settings.database_url)}' -c 'select id, status, side, quantity, entry_price, "
        f"stop_loss_price from monitoring.positions order by updated_at desc'",
        f"  exchange         {exchange}",
        f"  signal feed      {feed}",
        "  Ctrl-C stops the pipeline (and, under make run, the local stack if make run started it).",
        "",
    ])


def main() -> int:
    settings = Settings.from_env()
    children = {name: subprocess.Popen(command, stdin=subprocess.DEVNULL) for name, command in PROCESSES.items()}
    print(banner(settings), file=sys.stderr, flush=True)
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
