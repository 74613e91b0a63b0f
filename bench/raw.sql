-- The raw ceiling: one batch of 500 events (JSON text, as sent) inserted by
-- plain SQL, in key order, duplicates dropped by the key, into :table
-- (pgbench -D table=...): raw_pk_events, a table with only the primary key,
-- or raw_events, a copy of aggr.events (same indexes).
\set b 1 + :client_id + 2 * :k
\set k :k + 1
INSERT INTO :table (topic, event_id, "timestamp", source, payload)
SELECT x.topic, x.event_id, x."timestamp", x.source, coalesce(x.payload, '{}')
FROM bench_batches b,
     jsonb_to_recordset(b.body::jsonb) AS x(topic text, event_id text, "timestamp" timestamptz, source text, payload jsonb)
WHERE b.id = :b
ORDER BY 1, 2
ON CONFLICT DO NOTHING;
