"""``python -m streams.ingest``: run the signal ingest with ``Settings.from_env()`` until SIGTERM/SIGINT.

With ``SIGNALS_WS_URL`` unset it plays the built-in demo feed (``DEMO_FEED_PORT``, default
6071) in-process, or follows the one another pipeline on this host already plays there.
Exits 0 on a requested stop, 1 on a fatal error (a malformed variable, a topic with another
partition count).
"""

import sys

from streams.ingest.feed import main

if __name__ == "__main__":
    sys.exit(main())
