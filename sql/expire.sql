-- Retention by hand: aggr_expire() expires the oldest events first, in
-- bounded batches, keeps their keys as tombstones (a re-sent event is a
-- duplicate), counts them as expired, and takes it all back on rollback.
CREATE EXTENSION aggr;
SHOW aggr.retention;
SHOW aggr.dedup_window;

-- 12 events over 3 topics, then 2 duplicates
SELECT aggr_ingest(jsonb_agg(jsonb_build_object('topic', 't' || (i % 3), 'event_id', 'e' || i,
                                                'timestamp', 0, 'source', 's',
                                                'payload', jsonb_build_object('n', i))))
FROM generate_series(1, 12) i;
SELECT aggr_ingest('[{"topic": "t1", "event_id": "e1", "timestamp": 0, "source": "again"},
                     {"topic": "t2", "event_id": "e2", "timestamp": 0, "source": "again"}]');

-- bad arguments: a clear error, nothing expired
SELECT aggr_expire('0 s', 0);
SELECT aggr_expire('0 s', NULL);
SELECT aggr_expire('-1 s');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT aggr_expire('0 s');
ROLLBACK;
-- with aggr.retention at 0 (forever) and no older_than, nothing expires
SELECT aggr_expire();
-- nothing is an hour old yet
SELECT aggr_expire('1 hour');
SELECT expired_upto FROM aggr.expiry;

-- a rollback takes the expiry back, counts and tombstones alike
BEGIN;
SELECT aggr_expire('0 s');
SELECT aggr_stats() -> 'expired' AS expired_inside;
ROLLBACK;
SELECT aggr_stats() -> 'expired' AS expired_after_rollback,
       (SELECT count(*) FROM aggr.events WHERE expired_at IS NOT NULL) AS tombstones,
       (SELECT expired_upto FROM aggr.expiry) AS expired_upto;

-- the limit bounds a call; the oldest (lowest seq) go first
SELECT aggr_expire('0 s', 5);
SELECT topic, event_id, payload, expired_at IS NOT NULL AS expired
FROM aggr.events ORDER BY seq;

-- readers see live events only: the page starts after the tombstones
SELECT topic, event_id FROM aggr_events();
SELECT topic, event_id FROM aggr_events('t2');
SELECT (p.event).event_id, p.upto >= (SELECT max(seq) FROM aggr.events) AS past_every_event
FROM aggr_events_page(NULL, 3) p;

-- the key of an expired event still deduplicates
SELECT aggr_ingest('{"topic": "t1", "event_id": "e1", "timestamp": 0, "source": "late"}');
SELECT source, payload FROM aggr.events WHERE topic = 't1' AND event_id = 'e1';

-- stats: expired overall and per topic; unique = live + expired
SELECT s -> 'received' AS received, s -> 'unique_processed' AS unique_processed,
       s -> 'duplicate_dropped' AS duplicate_dropped, s -> 'expired' AS expired,
       s -> 'topics' AS topics
FROM aggr_stats() s;
-- (joins, not correlated subqueries: Citus runs this test too)
SELECT t ->> 'topic' AS topic,
       (t ->> 'count')::bigint = (t ->> 'expired')::bigint + coalesce(e.n, 0) AS agrees
FROM jsonb_array_elements(aggr_stats() -> 'topics') t
LEFT JOIN (SELECT topic, count(*) AS n FROM aggr.events WHERE expired_at IS NULL GROUP BY topic) e
    ON e.topic = t ->> 'topic'
ORDER BY 1;

-- the rest, then events ingested later: each call starts where the last ended
SELECT aggr_expire('0 s');
SELECT aggr_ingest('{"topic": "t0", "event_id": "later", "timestamp": 0, "source": "s"}');
SELECT topic, event_id FROM aggr_events();
SELECT aggr_expire('0 s');
SELECT aggr_expire('0 s');
SELECT e.live, e.tombstones_and_live, x.expired_upto = e.last AS mark_at_last
FROM (SELECT count(*) FILTER (WHERE expired_at IS NULL) AS live, count(*) AS tombstones_and_live,
             max(seq) AS last
      FROM aggr.events) e, aggr.expiry x;
SELECT (s ->> 'unique_processed')::bigint = (s ->> 'expired')::bigint AS all_expired,
       (s ->> 'received')::bigint = (s ->> 'unique_processed')::bigint + (s ->> 'duplicate_dropped')::bigint AS received_adds_up
FROM aggr_stats() s;

-- marks back at 0 under tombstones (a restore does not dump them): a call
-- with nothing old enough to expire still moves the mark past them
UPDATE aggr.expiry SET expired_upto = 0, forgotten_upto = 0;
SELECT aggr_ingest('{"topic": "t0", "event_id": "young", "timestamp": 0, "source": "s"}');
SELECT aggr_expire('1 hour');
SELECT expired_upto = (SELECT seq - 1 FROM aggr.events WHERE event_id = 'young') AS mark_below_young
FROM aggr.expiry;

-- TRUNCATE ... RESTART IDENTITY: the marks go back to 0 with it, so readers
-- see the new events at once and expiry does not pass them
TRUNCATE aggr.events, aggr.counters RESTART IDENTITY;
SELECT expired_upto, forgotten_upto FROM aggr.expiry;
SELECT aggr_ingest('[{"topic": "r", "event_id": "1", "timestamp": 0, "source": "s"},
                     {"topic": "r", "event_id": "2", "timestamp": 0, "source": "s"}]');
SELECT topic, event_id, seq FROM aggr_events();
SELECT aggr_expire('0 s');
SELECT expired_upto, forgotten_upto FROM aggr.expiry;
-- the sequence restarted by hand: the next expiry notices and starts from 0
SELECT setval('aggr.events_seq_seq', 1, false);
SELECT aggr_ingest('{"topic": "r", "event_id": "3", "timestamp": 0, "source": "s"}');
SELECT aggr_expire('0 s');
SELECT count(*) FILTER (WHERE expired_at IS NULL) AS live FROM aggr.events;

DROP EXTENSION aggr;
