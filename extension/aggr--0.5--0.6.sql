/*
 * aggr--0.5--0.6.sql: from 0.5 to 0.6.
 * - aggr.counters.bulk_fallback counts the events that took the INSERT
 *   statement instead of the bulk path (extension/bulk.h), and aggr_stats()
 *   reports their sum as bulk_fallback_events.
 */

\echo Use "ALTER EXTENSION aggr UPDATE TO '0.6'" to load this file. \quit

ALTER TABLE aggr.counters ADD COLUMN bulk_fallback bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN aggr.counters.bulk_fallback IS 'aggr: events received by the INSERT statement instead of the bulk path (extension/bulk.h)';

CREATE OR REPLACE FUNCTION aggr_stats() RETURNS jsonb
    LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    totals jsonb;
    runtime jsonb := aggr.runtime_status();
BEGIN
    SELECT jsonb_build_object(
               'received', coalesce(sum(t.received), 0),
               'unique_processed', coalesce(sum(t.unique_processed), 0),
               'duplicate_dropped', coalesce(sum(t.duplicate_dropped), 0),
               'expired', coalesce(sum(t.expired), 0),
               'bulk_fallback_events', coalesce(sum(t.bulk_fallback), 0),
               'topics', coalesce(jsonb_agg(jsonb_build_object('topic', t.topic,
                                                               'count', t.unique_processed,
                                                               'expired', t.expired)
                                            ORDER BY t.topic COLLATE "C"), '[]'))
      INTO totals
      FROM (SELECT c.topic, sum(c.received) AS received,
                   sum(c.unique_processed) AS unique_processed,
                   sum(c.duplicate_dropped) AS duplicate_dropped,
                   sum(c.expired) AS expired,
                   sum(c.bulk_fallback) AS bulk_fallback
              FROM aggr.counters c GROUP BY c.topic) t;
    RETURN totals || jsonb_build_object(
        'uptime_seconds', round(extract(epoch FROM clock_timestamp() - pg_postmaster_start_time()), 3),
        'worker_count', runtime -> 'worker_count',
        'rejected', (SELECT count(*) FROM aggr.rejected),
        'queue_depth', runtime -> 'queue_depth',
        'broker', runtime -> 'broker',
        'workers', runtime -> 'workers');
END
$$;
COMMENT ON FUNCTION aggr_stats() IS
    'aggr: received, unique_processed, duplicate_dropped, expired, bulk_fallback_events, per-topic counts, uptime, workers and queue';
