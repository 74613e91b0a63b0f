/*
 * aggr--0.3--0.4.sql: from 0.3 to 0.4.
 * - Retention (extension/expire.h): aggr.events gains expired_at (no
 *   rewrite); an expired event stays as a tombstone (payload emptied) while
 *   its key is remembered.  aggr.counters gains expired (shard -1 is
 *   expiry's), aggr.expiry records how far expiry has got, aggr_expire()
 *   expires by hand or from pg_cron, and aggr_stats() reports expired.
 * - aggr_events_page() and so aggr_events() return live events only,
 *   starting after the last seq expiry has passed.
 * - aggr_expire() is granted to nobody (see 0.2--0.3).
 * - TRUNCATE aggr.events sets aggr.expiry's marks back to 0 (a trigger).
 */

\echo Use "ALTER EXTENSION aggr UPDATE TO '0.4'" to load this file. \quit

ALTER TABLE aggr.events ADD COLUMN expired_at timestamptz;
COMMENT ON TABLE aggr.events IS 'aggr: each (topic, event_id) accepted, exactly once; expired ones as tombstones (expired_at set) while their keys are remembered';

ALTER TABLE aggr.counters ADD COLUMN expired bigint NOT NULL DEFAULT 0;
COMMENT ON TABLE aggr.counters IS 'aggr: received, unique, duplicate and expired counts per topic and shard (shard -1: expiry''s)';

/*
 * Where expiry and forgetting have got to: every event with seq <=
 * expired_upto is expired (a tombstone, or deleted), every event with seq <=
 * forgotten_upto is deleted.  Its one row is locked by each expiry batch, so expiries run one
 * at a time (and never wait on an ingest).  Not dumped: after a restore both
 * start again from 0, which only costs one walk.
 */
CREATE TABLE aggr.expiry (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    expired_upto   bigint      NOT NULL DEFAULT 0,
    forgotten_upto bigint      NOT NULL DEFAULT 0,
    last_run       timestamptz
);
INSERT INTO aggr.expiry DEFAULT VALUES;
COMMENT ON TABLE aggr.expiry IS 'aggr: how far expiry (aggr.retention) and forgetting (aggr.dedup_window) have got, in seq';

/*
 * An emptied aggr.events has nothing expired: the marks go back to 0 in the
 * TRUNCATE's own transaction (with RESTART IDENTITY, marks left above the new
 * seqs would hide new events from readers until the next expiry).
 */
CREATE FUNCTION aggr.expiry_restart() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE aggr.expiry SET expired_upto = 0, forgotten_upto = 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_truncated AFTER TRUNCATE ON aggr.events
    FOR EACH STATEMENT EXECUTE FUNCTION aggr.expiry_restart();

CREATE FUNCTION aggr_expire(older_than interval DEFAULT NULL, "limit" integer DEFAULT 10000)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'aggr_expire'
    LANGUAGE C VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION aggr_expire(interval, integer) IS
    'aggr: expire up to limit events ingested longer ago than older_than (default aggr.retention), oldest first, and forget tombstones past aggr.dedup_window; returns how many it expired';

/*
 * One page of events after a seq, cut at the watermark (watermark.h): paging
 * by after never skips an event that commits late.  The page is read by the
 * index, then cut at the watermark W.  Rows: the page's events in seq order,
 * then one row whose event is NULL, there even for an empty page; each
 * carries W (upto), which can go down between two readings, so a follower
 * goes on from the W its page was cut at: every event with after < seq <=
 * upto is on the page unless it holds "limit" events (then every one up to
 * its last seq).  Expired events are left out (a tombstone is no event); the
 * page starts after the last seq expiry has passed.  VOLATILE: the page's
 * query takes its snapshot after W is read, which a STABLE function's would
 * not.
 */
CREATE OR REPLACE FUNCTION aggr_events_page(topic text DEFAULT NULL, "limit" integer DEFAULT 1000,
                                 after bigint DEFAULT NULL)
    RETURNS TABLE (upto bigint, pending boolean, event aggr.events)
    LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cut bigint;
    waiting boolean;
    start_after bigint;
BEGIN
    IF aggr_events_page."limit" IS NULL OR aggr_events_page."limit" NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 10000'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('The limit given was %s.',
                                             coalesce(aggr_events_page."limit"::text, 'null'));
    END IF;
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'aggr_events pages only in READ COMMITTED transactions'
            USING ERRCODE = '0A000',
                  DETAIL = 'A snapshot that outlives a statement cannot tell which events are still being committed, so a page could skip one.',
                  HINT = 'Run it in a READ COMMITTED transaction (the default).';
    END IF;
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'aggr_events pages only on the primary'
            USING ERRCODE = '0A000',
                  DETAIL = 'A standby does not see which transactions of the primary are still storing events, so a page could skip one.',
                  HINT = 'Read events from the primary, or query aggr.events directly knowing that.';
    END IF;
    SELECT w.upto, w.pending INTO cut, waiting FROM @extschema@.aggr_events_watermark() w;
    -- every event up to expired_upto is expired: no need to walk past them
    SELECT greatest(coalesce(aggr_events_page.after, 0), max(x.expired_upto)) INTO start_after
      FROM aggr.expiry x;
    -- two queries, so that each is planned for its own index
    IF aggr_events_page.topic IS NULL THEN
        RETURN QUERY
            SELECT cut, waiting, p::aggr.events
            FROM (SELECT e.* FROM aggr.events e
                  WHERE e.seq > start_after AND e.expired_at IS NULL
                  ORDER BY e.seq LIMIT aggr_events_page."limit") p
            WHERE p.seq <= cut ORDER BY p.seq;
    ELSE
        RETURN QUERY
            SELECT cut, waiting, p::aggr.events
            FROM (SELECT e.* FROM aggr.events e
                  WHERE e.topic = aggr_events_page.topic
                    AND e.seq > start_after AND e.expired_at IS NULL
                  ORDER BY e.seq LIMIT aggr_events_page."limit") p
            WHERE p.seq <= cut ORDER BY p.seq;
    END IF;
    RETURN QUERY SELECT cut, waiting, NULL::aggr.events;
END
$$;
COMMENT ON FUNCTION aggr_events_page(text, integer, bigint) IS
    'aggr: a page of events after a seq, never past a later commit, then a row with the watermark it was cut at';

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
               'topics', coalesce(jsonb_agg(jsonb_build_object('topic', t.topic,
                                                               'count', t.unique_processed,
                                                               'expired', t.expired)
                                            ORDER BY t.topic COLLATE "C"), '[]'))
      INTO totals
      FROM (SELECT c.topic, sum(c.received) AS received,
                   sum(c.unique_processed) AS unique_processed,
                   sum(c.duplicate_dropped) AS duplicate_dropped,
                   sum(c.expired) AS expired
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
    'aggr: received, unique_processed, duplicate_dropped, expired, per-topic counts, uptime, workers and queue';

REVOKE ALL ON FUNCTION aggr_expire(interval, integer), aggr.expiry_restart() FROM PUBLIC;
