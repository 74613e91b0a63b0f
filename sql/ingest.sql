-- Ingest: exactly once per (topic, event_id), first version wins, counters
-- in the same transaction as the rows.
CREATE EXTENSION aggr;
SET TimeZone = 'UTC';
CREATE FUNCTION invariants(OUT unique_is_count boolean, OUT received_adds_up boolean) LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM aggr.events) = (SELECT coalesce(sum(unique_processed), 0) FROM aggr.counters),
           (SELECT coalesce(sum(received), 0) = coalesce(sum(unique_processed) + sum(duplicate_dropped), 0) FROM aggr.counters)
$$;

SELECT aggr_ingest('{"topic": "orders", "event_id": "1", "timestamp": "2025-10-24T00:00:00Z", "source": "a", "payload": {"v": 1}}');
-- the same key again: dropped, the first version stays
SELECT aggr_ingest('{"topic": "orders", "event_id": "1", "timestamp": "2025-10-25T00:00:00Z", "source": "b", "payload": {"v": 2}}');
-- the same event_id in another topic is another event
SELECT aggr_ingest('{"topic": "payments", "event_id": "1", "timestamp": "2025-10-24T00:00:00Z", "source": "a"}');
-- duplicates inside one batch: the first in the request wins
SELECT aggr_ingest('[{"topic": "orders", "event_id": "2", "timestamp": 0, "source": "first", "payload": {"v": "first"}},
                     {"topic": "orders", "event_id": "2", "timestamp": 0, "source": "second", "payload": {"v": "second"}},
                     {"topic": "orders", "event_id": "3", "timestamp": 0, "source": "a"}]');
SELECT topic, event_id, "timestamp", source, payload FROM aggr.events ORDER BY topic, event_id;
SELECT * FROM invariants();

-- aggr_publish without a broker ingests directly and says so
SELECT aggr_publish('[{"topic": "orders", "event_id": "3", "timestamp": 0, "source": "a"},
                      {"topic": "orders", "event_id": "4", "timestamp": 0, "source": "a"}]');

-- aggr_publish_text: the same for JSON text, with the errors of a jsonb cast
SELECT aggr_publish_text('[{"topic": "orders", "event_id": "4", "timestamp": 0, "source": "a"},
                           {"topic": "orders", "event_id": "5", "timestamp": 0, "source": "a"}]');
\set VERBOSITY sqlstate
SELECT aggr_publish_text('[{"topic": "orders", "event_id": "6"');
SELECT aggr_publish_text('[{"topic": "orders", "event_id": "6", "timestamp": 0, "source": ""}]');
SELECT aggr_publish_text('42');
\set VERBOSITY default
SELECT aggr_publish_text('{"topic": "orders", "event_id": "6", "timestamp": 0}');
SELECT count(*) FROM aggr.events WHERE event_id IN ('5', '6');

-- a rollback takes the events and the counts back
SELECT aggr_stats() -> 'received' AS received_before;
BEGIN;
SELECT aggr_ingest('[{"topic": "rolled", "event_id": "1", "timestamp": 0, "source": "a"},
                     {"topic": "orders", "event_id": "1", "timestamp": 0, "source": "a"}]');
SELECT count(*) FROM aggr.events WHERE topic = 'rolled';
ROLLBACK;
SELECT count(*) FROM aggr.events WHERE topic = 'rolled';
SELECT aggr_stats() -> 'received' AS received_after;
-- and so does a savepoint
BEGIN;
SELECT aggr_ingest('{"topic": "kept", "event_id": "1", "timestamp": 0, "source": "a"}');
SAVEPOINT s;
SELECT aggr_ingest('{"topic": "undone", "event_id": "1", "timestamp": 0, "source": "a"}');
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT topic FROM aggr.events WHERE topic IN ('kept', 'undone');
SELECT * FROM invariants();

-- a failing caller statement after the ingest takes it back too
DO $$
BEGIN
    PERFORM aggr_ingest('{"topic": "failed", "event_id": "1", "timestamp": 0, "source": "a"}');
    RAISE EXCEPTION 'caller failed';
EXCEPTION WHEN raise_exception THEN
    NULL;
END $$;
SELECT count(*) FROM aggr.events WHERE topic = 'failed';

-- the demo's shape: 2,000 events, 35 % re-sends, 10 topics, in batches of 500
CREATE TABLE demo AS
    SELECT g AS n, jsonb_build_object('topic', 'topic_' || (k % 10), 'event_id', 'e' || k,
                                      'timestamp', 1761264000 + k, 'source', 'gen',
                                      'payload', jsonb_build_object('k', k)) AS event
    FROM generate_series(1, 2000) g,
         LATERAL (SELECT CASE WHEN g <= 1300 THEN g ELSE 1 + (g * 7919) % 1300 END AS k) x;
SELECT sum((r ->> 'received')::int) AS received, sum((r ->> 'unique')::int) AS unique,
       sum((r ->> 'duplicates')::int) AS duplicates
FROM (SELECT aggr_ingest(jsonb_agg(event ORDER BY n)) AS r FROM demo GROUP BY (n - 1) / 500) b;
SELECT count(*) FROM aggr.events WHERE source = 'gen';
SELECT * FROM invariants();
-- sent again: all duplicates
SELECT sum((r ->> 'unique')::int) AS unique, sum((r ->> 'duplicates')::int) AS duplicates
FROM (SELECT aggr_ingest(jsonb_agg(event ORDER BY n)) AS r FROM demo GROUP BY (n - 1) / 500) b;
SELECT * FROM invariants();

DROP EXTENSION aggr CASCADE;
