-- monitoring.positions: the final state of every position, exactly the columns of the
-- contract (section 4), plus the version guard the sink's upsert needs. Only the sink
-- writes here; everything else reads.

CREATE SCHEMA IF NOT EXISTS monitoring;

CREATE TABLE monitoring.positions (
    id              text        PRIMARY KEY,      -- SYMBOL@exchange/<offset of the opening input>
    symbol          text        NOT NULL,
    exchange        text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('BUY', 'SELL')),
    quantity        numeric     NOT NULL,         -- what the exchange holds: the exchange wins
    entry_price     numeric,                      -- null until known
    stop_loss_price numeric,                      -- null until known
    status          text        NOT NULL CHECK (status IN (
                        'pending_entry', 'entry_placed', 'pending_sl', 'active',
                        'closing', 'closed', 'rolled_back')),
    source          text        NOT NULL CHECK (source IN ('signal', 'exchange')),
    signal_id       text,                         -- null when adopted from the exchange
    opened_at       timestamptz NOT NULL,
    closed_at       timestamptz,
    updated_at      timestamptz NOT NULL,
    -- Offset of the input that produced this state, in its position-inputs partition. The
    -- sink replaces a row only with a strictly newer version, so redelivery and replay
    -- converge on the same rows.
    version         bigint      NOT NULL CHECK (version >= 0)
);

-- The database's backstop for the seed's P0 (two open positions for one symbol): at most
-- one row per (symbol, exchange) outside the terminal statuses. The stream makes this
-- impossible by construction; if this index ever fires, the stream has a bug.
CREATE UNIQUE INDEX positions_one_live_per_symbol_exchange
    ON monitoring.positions (symbol, exchange)
    WHERE status NOT IN ('closed', 'rolled_back');
