"""Operators' tools: replay the inputs log into the table and the sink (``replay``), compare
decisions before a deploy (``diff``), check the consumer group (``admin``). They use the
input processor (``streams.worker.processor``), never the running app."""
