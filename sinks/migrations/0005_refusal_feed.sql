-- The open-positions page shows the latest refusals: each with its stable code (the audit
-- record's refusal_code: already_open, already_closing, nothing_to_close, invalid_signal)
-- beside the sentence, read newest first through a partial index that holds only refusals
-- (a small part of the log). Rows written before this migration keep a null code.

ALTER TABLE monitoring.position_events
    ADD COLUMN refusal_code text;

CREATE INDEX position_events_refusals ON monitoring.position_events (time DESC)
    WHERE decision = 'refused';
