-- The raw ceiling: one batch of 500 events (JSON text, as sent) inserted by
-- plain SQL into a copy of aggr.events (same indexes), in key order,
-- duplicates dropped by the key.
\set b 1 + :client_id + 2 * :k
\set k :k + 1
INSERT INTO raw_events (topic, event_id, "timestamp", source, payload)
SELECT x.topic, x.event_id, x."timestamp", x.source, coalesce(x.payload, '{}')
FROM bench_batches b,
     jsonb_to_recordset(b.body::jsonb) AS x(topic text, event_id text, "timestamp" timestamptz, source text, payload jsonb)
WHERE b.id = :b
ORDER BY 1, 2
ON CONFLICT DO NOTHING;
