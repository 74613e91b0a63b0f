-- Stats: the exact shape, per-topic counts sorted by topic, and agreement
-- with the stored rows.
CREATE EXTENSION aggr;
SELECT jsonb_object_keys(aggr_stats()) AS key ORDER BY 1;
SELECT aggr_stats() - 'uptime_seconds' AS empty;
SELECT (aggr_stats() ->> 'uptime_seconds')::numeric >= 0 AS uptime_ok;

SELECT aggr_ingest('[{"topic": "b", "event_id": "1", "timestamp": 0, "source": "s"},
                     {"topic": "a", "event_id": "1", "timestamp": 0, "source": "s"},
                     {"topic": "b", "event_id": "1", "timestamp": 0, "source": "s"},
                     {"topic": "B", "event_id": "1", "timestamp": 0, "source": "s"},
                     {"topic": "b", "event_id": "2", "timestamp": 0, "source": "s"}]');
SELECT aggr_ingest('{"topic": "a", "event_id": "1", "timestamp": 0, "source": "s"}');
SELECT s -> 'received' AS received, s -> 'unique_processed' AS unique_processed,
       s -> 'duplicate_dropped' AS duplicate_dropped, s -> 'topics' AS topics,
       s -> 'worker_count' AS worker_count, s -> 'rejected' AS rejected
FROM aggr_stats() s;

-- counts agree with the rows, per topic and in total
-- (a join, not a correlated subquery: Citus runs this test too)
SELECT t ->> 'topic' AS topic, (t ->> 'count')::bigint = coalesce(e.n, 0) AS agrees
FROM jsonb_array_elements(aggr_stats() -> 'topics') WITH ORDINALITY AS s(t, i)
LEFT JOIN (SELECT topic, count(*) AS n FROM aggr.events GROUP BY topic) e ON e.topic = t ->> 'topic'
ORDER BY i;
SELECT (s ->> 'unique_processed')::bigint = (SELECT count(*) FROM aggr.events) AS unique_is_count,
       (s ->> 'received')::bigint = (s ->> 'unique_processed')::bigint + (s ->> 'duplicate_dropped')::bigint AS received_adds_up
FROM aggr_stats() s;

-- a backend adds to one shard of its own (t/010_direct.pl shows two backends
-- writing one topic without waiting on each other)
SELECT count(DISTINCT shard) AS shards_of_this_backend FROM aggr.counters;

-- health without a broker: the database and the extension answer, preloaded
-- or not (t/005_stock.pl checks "preloaded" both ways)
SELECT aggr_health() - 'preloaded' AS health;
SELECT jsonb_typeof(aggr_health() -> 'preloaded') AS preloaded_is;

DROP EXTENSION aggr CASCADE;
