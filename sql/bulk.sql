-- The bulk path (extension/bulk.h): the rows, counts and errors of the INSERT
-- statement it stands in for, and the statement wherever it cannot be taken,
-- counted in aggr_stats()'s bulk_fallback_events.
CREATE EXTENSION aggr;
-- batch('source', 'topic/event_id', ...): payload n is the event's position
CREATE FUNCTION pg_temp.batch(source text, VARIADIC keys text[]) RETURNS jsonb
    LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_build_object('topic', split_part(k, '/', 1),
                                        'event_id', split_part(k, '/', 2),
                                        'timestamp', '2026-01-01T00:00:00Z',
                                        'source', source,
                                        'payload', jsonb_build_object('n', i)) ORDER BY i)
    FROM unnest(keys) WITH ORDINALITY AS u(k, i)
$$;
CREATE FUNCTION pg_temp.agrees() RETURNS TABLE (stored bigint, counted bigint, received_ok boolean, fallback bigint)
    LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM aggr.events), sum(unique_processed),
           sum(received) = sum(unique_processed) + sum(duplicate_dropped), sum(bulk_fallback)
    FROM aggr.counters
$$;
-- the first version of a key wins, in the batch too; seq follows key order
SELECT aggr_ingest(pg_temp.batch('one', 'b/2', 'a/1', 'b/2', 'a/0')) AS first;
SELECT aggr_ingest(pg_temp.batch('two', 'a/1', 'c/9', 'c/9')) AS second;
SELECT topic, event_id, source, payload, seq FROM aggr.events ORDER BY seq;
SELECT topic, received, unique_processed, duplicate_dropped, bulk_fallback
FROM aggr.counters ORDER BY topic;
SELECT * FROM pg_temp.agrees();
-- defaults as in INSERT: ingested_at is the transaction's now()
BEGIN;
SELECT aggr_ingest(pg_temp.batch('three', 'd/1')) AS third;
SELECT ingested_at = now() AS now_ok, expired_at IS NULL AS not_expired
FROM aggr.events WHERE topic = 'd';
-- the same key again in the same transaction: a duplicate
SELECT aggr_ingest(pg_temp.batch('three', 'd/1', 'd/2')) AS again;
COMMIT;
-- a rollback takes everything back
BEGIN;
SELECT aggr_ingest(pg_temp.batch('rolled', 'e/1', 'a/0')) AS rolled_back;
ROLLBACK;
SELECT * FROM pg_temp.agrees();
SELECT aggr_ingest(pg_temp.batch('four', 'e/1')) AS after_rollback;
-- a read-only transaction: a clear error
BEGIN READ ONLY;
SELECT aggr_ingest(pg_temp.batch('ro', 'f/1'));
ROLLBACK;
SELECT * FROM pg_temp.agrees();
-- a column a user adds gets its default
ALTER TABLE aggr.events ADD COLUMN note text NOT NULL DEFAULT 'none';
SELECT aggr_ingest(pg_temp.batch('five', 'g/1')) AS with_column;
SELECT event_id, note FROM aggr.events WHERE topic = 'g';
SELECT * FROM pg_temp.agrees();
-- chunks: 130 events, 120 keys, in chunks of 50, 50 and 20 new rows; seq in key order
SELECT aggr_ingest(jsonb_agg(jsonb_build_object('topic', 'n' || (i % 2), 'event_id', (i % 120)::text,
                                                'timestamp', 0, 'source', 'chunks')))
FROM generate_series(1, 130) i;
SELECT count(*), count(DISTINCT seq),
       bool_and(seq > coalesce(previous, 0)) AS seq_in_key_order
FROM (SELECT seq, lag(seq) OVER (ORDER BY topic, event_id) AS previous
      FROM aggr.events WHERE source = 'chunks') s;
SELECT * FROM pg_temp.agrees();
-- an index a user adds gets every row it covers (here an expression and a predicate)
CREATE INDEX events_source_idx ON aggr.events (upper(source)) WHERE topic = 'h';
SELECT aggr_ingest(pg_temp.batch('seven', 'h/1', 'h/2', 'a/1', 'x/1')) AS with_index;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF) SELECT event_id FROM aggr.events WHERE upper(source) = 'SEVEN' AND topic = 'h';
SELECT event_id FROM aggr.events WHERE upper(source) = 'SEVEN' AND topic = 'h' ORDER BY 1;
RESET enable_seqscan;
RESET enable_bitmapscan;
DROP INDEX aggr.events_source_idx;
SELECT * FROM pg_temp.agrees();
-- where the bulk path cannot be taken, the statement is, visibly: an insert
-- trigger a user added fires for each stored row
CREATE TABLE noted (event_id text);
CREATE FUNCTION note_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.noted VALUES (NEW.event_id);
    RETURN NEW;
END
$$;
CREATE TRIGGER events_noted AFTER INSERT ON aggr.events
    FOR EACH ROW EXECUTE FUNCTION note_event();
SET client_min_messages = log;
SELECT aggr_ingest(pg_temp.batch('eight', 'i/1', 'i/2', 'a/1')) AS with_trigger;
RESET client_min_messages;
SELECT event_id FROM noted ORDER BY 1;
DROP TRIGGER events_noted ON aggr.events;
SELECT * FROM pg_temp.agrees();
-- a CHECK constraint holds for every event, duplicates too, as in INSERT
ALTER TABLE aggr.events ADD CONSTRAINT events_source_not_bad CHECK (source <> 'bad');
\set VERBOSITY terse
SELECT aggr_ingest(pg_temp.batch('bad', 'a/1'));
SELECT aggr_ingest(pg_temp.batch('bad', 'g/2', 'g/3'));
\set VERBOSITY default
SELECT aggr_ingest(pg_temp.batch('good', 'g/2')) AS with_check;
ALTER TABLE aggr.events DROP CONSTRAINT events_source_not_bad;
-- a NOT NULL column without a default fails every event
ALTER TABLE aggr.events ALTER COLUMN note DROP DEFAULT;
\set VERBOSITY terse
SELECT aggr_ingest(pg_temp.batch('six', 'a/1'));
\set VERBOSITY default
ALTER TABLE aggr.events DROP COLUMN note;
-- a volatile default: the statement draws it for duplicates too
ALTER TABLE aggr.events ADD COLUMN drawn double precision DEFAULT random();
SELECT aggr_ingest(pg_temp.batch('volatile', 'a/1', 'v/1')) AS with_volatile_default;
ALTER TABLE aggr.events DROP COLUMN drawn;
-- a unique index besides the key
CREATE UNIQUE INDEX events_seq_unique ON aggr.events (seq);
SELECT aggr_ingest(pg_temp.batch('unique', 'o/1', 'a/1')) AS with_unique_index;
DROP INDEX aggr.events_seq_unique;
SELECT * FROM pg_temp.agrees();
-- row security on aggr.events
ALTER TABLE aggr.events ENABLE ROW LEVEL SECURITY;
SELECT aggr_ingest(pg_temp.batch('nine', 'j/1')) AS with_row_security;
ALTER TABLE aggr.events DISABLE ROW LEVEL SECURITY;
-- a REPEATABLE READ transaction
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT aggr_ingest(pg_temp.batch('ten', 'k/1', 'a/1')) AS repeatable_read;
COMMIT;
-- and aggr.bulk_ingest = off
SET aggr.bulk_ingest = off;
SELECT aggr_ingest(pg_temp.batch('eleven', 'l/1', 'l/1')) AS bulk_off;
RESET aggr.bulk_ingest;
SELECT * FROM pg_temp.agrees();
SELECT aggr_stats() -> 'bulk_fallback_events' AS bulk_fallback_events;
-- back on the bulk path: the fallback count stays
SELECT aggr_ingest(pg_temp.batch('twelve', 'm/1')) AS bulk_again;
SELECT * FROM pg_temp.agrees();
DROP TABLE noted;
DROP FUNCTION note_event();
DROP EXTENSION aggr;
