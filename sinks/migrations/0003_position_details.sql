-- The pipeline's own columns of monitoring.positions, beside the contract's: the partition
-- key, what the signal asked for, the stop distance, the running deadline and a pending
-- close. Rows written before this migration get their key computed at once; the other
-- columns stay null (false) until the sink writes the position's next version.

ALTER TABLE monitoring.positions
    -- Derived, never written: it cannot disagree with symbol and exchange.
    ADD COLUMN key                text GENERATED ALWAYS AS (symbol || '@' || exchange) STORED,
    ADD COLUMN requested_quantity numeric,        -- the signal's quantity; null when adopted
    ADD COLUMN stop_loss_pct      numeric,
    ADD COLUMN deadline_at        timestamptz,    -- set while an order is in flight
    ADD COLUMN close_requested    boolean NOT NULL DEFAULT false;

CREATE INDEX positions_key ON monitoring.positions (key);
CREATE INDEX positions_updated_at ON monitoring.positions (updated_at);
