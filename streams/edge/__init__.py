"""The kit every edge (exchange, ingest, sink, web) shares: one ``Backoff`` and stop-aware
sleep, one "retry until acknowledged" helper, the exchange client factory. It imports no edge."""
