"""`python -m streams.admin create-topics`: create the pipeline's topics, then exit.

Creates every missing pipeline topic with ``PIPELINE_TOPIC_PARTITIONS`` partitions and
``PIPELINE_TOPIC_REPLICATION_FACTOR`` replicas (``streams.topics.ensure_topics`` with
``Settings.from_env()``), and refuses an existing one with another partition count. Run it
once before the workers (the compose ``topics`` service, the Kubernetes Job); the worker
does the same check at start, so running it twice is harmless.

Exit codes: 0 the topics exist with the right partition count; 1 an error (a topic with
another partition count, a bad variable, Kafka unreachable for ``--wait`` seconds, a
request Kafka refused), named on stderr; 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from aiokafka.errors import KafkaConnectionError, KafkaError

from streams.settings import Settings, SettingsError
from streams.topics import TopicNames, TopologyError, ensure_topics

logger = logging.getLogger("streams.admin")


async def create_topics(settings: Settings, wait_s: float) -> None:
    """``ensure_topics``, retrying while the brokers cannot be reached, for at most ``wait_s``."""
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            await ensure_topics(settings)
            return
        except (KafkaConnectionError, asyncio.TimeoutError) as error:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            delay = min(delay, remaining)
            logger.warning("Kafka at %s not reachable yet (%s); retrying in %.1fs",
                           settings.kafka_bootstrap_servers, error or type(error).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.admin", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-topics", help="create the missing topics; refuse a wrong partition count")
    create.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for Kafka to answer (default 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        asyncio.run(create_topics(settings, args.wait))
    except (SettingsError, TopologyError) as error:
        print(f"create-topics: {error}", file=sys.stderr)
        return 1
    except (KafkaError, asyncio.TimeoutError, OSError) as error:
        print(f"create-topics: Kafka error: {error or type(error).__name__}", file=sys.stderr)
        return 1
    names = TopicNames.for_prefix(settings.topic_prefix)
    print(f"create-topics: {', '.join(names.all())} have {settings.topic_partitions} partitions "
          f"(replication factor {settings.topic_replication_factor} for those created)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
