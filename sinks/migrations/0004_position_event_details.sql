-- What a position's history page shows for each input: the status it left the position in,
-- and the order it concerned (the reported order, or the first order the decision placed).
-- Rows written before this migration keep nulls: the audit records of that time did not
-- carry these fields (a replay from the inputs log fills them).

ALTER TABLE monitoring.position_events
    ADD COLUMN status_after    text CHECK (status_after IN (
                                   'pending_entry', 'entry_placed', 'pending_sl', 'active',
                                   'closing', 'closed', 'rolled_back')),
    ADD COLUMN client_order_id text,
    ADD COLUMN order_role      text CHECK (order_role IN ('entry', 'stop_loss', 'close')),
    ADD COLUMN order_outcome   text;

-- The history of a key: its positions newest first (positions_key), then each one's events
-- in log order. Refusals while a position was live carry its id, so one index answers both.
CREATE INDEX position_events_history ON monitoring.position_events (key, position_id, input_offset);
