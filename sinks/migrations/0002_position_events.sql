-- monitoring.position_events: the audit log, one row per input the pipeline applied or
-- refused for a key (signal, exchange snapshot, execution report, deadline).
--
-- Its primary key is natural, (key, input_offset): an input has exactly one offset in its
-- key's partition, so a redelivered or replayed audit record lands on the row it wrote
-- before (the sink inserts with ON CONFLICT DO NOTHING). No sequence: a replay into an
-- empty database writes the very same rows.

CREATE TABLE monitoring.position_events (
    key          text        NOT NULL,            -- SYMBOL@exchange
    input_offset bigint      NOT NULL CHECK (input_offset >= 0),
    symbol       text        NOT NULL,
    exchange     text        NOT NULL,
    position_id  text,                            -- null when no position is concerned
    kind         text        NOT NULL CHECK (kind IN ('signal', 'snapshot', 'report', 'deadline')),
    decision     text        NOT NULL CHECK (decision IN ('applied', 'refused', 'ignored', 'duplicate')),
    reason       text        NOT NULL,
    event_id     text        NOT NULL,
    time         timestamptz NOT NULL,            -- the input's own time, not the sink's
    PRIMARY KEY (key, input_offset)
);

-- "What happened to position X" and "what happened lately" are the log's two questions.
CREATE INDEX position_events_position_id ON monitoring.position_events (position_id)
    WHERE position_id IS NOT NULL;
CREATE INDEX position_events_time ON monitoring.position_events (time);
