"""`python -m stack start|stop|status|env`: the local Kafka and PostgreSQL (see localstack.py)."""

from __future__ import annotations

import argparse
import sys

from stack import localstack


def main(argv: list[str] | None = None) -> int:
    """Runs one command on the stack of ``StackPaths.from_environment()``; 1 on a ``StackError``."""
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "purge", "status", "env"])
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            endpoints = localstack.ensure_running()
            print("\n".join(endpoints.env_lines()))
            print("[stack] running; `eval \"$(make -s stack)\"` exports these, `make stack-stop` ends it",
                  file=sys.stderr)
        elif args.command == "stop":
            localstack.stop()
        elif args.command == "purge":
            localstack.purge()
        elif args.command == "status":
            for component, pid in localstack.status().items():
                print(f"{component}: {'running, pid ' + str(pid) if pid else 'stopped'}")
        elif args.command == "env":
            env_file = localstack.StackPaths.from_environment().root / "env"
            print(env_file.read_text(), end="")
    except localstack.StackError as error:
        print(f"[stack] error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
