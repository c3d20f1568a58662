"""`python -m streams worker [faust worker options]`: run the pipeline's stream processor.

Creates the topics when missing (and refuses ones with another partition count) before the
worker joins the consumer group, then hands the command line to Faust.
"""

from __future__ import annotations

import asyncio

from streams.app import build_pipeline
from streams.settings import Settings
from streams.topics import ensure_topics


def main() -> None:
    settings = Settings.from_env()
    asyncio.run(ensure_topics(settings))
    build_pipeline(settings).app.main()


if __name__ == "__main__":
    main()
