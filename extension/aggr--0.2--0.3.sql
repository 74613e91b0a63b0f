/*
 * aggr--0.2--0.3.sql: from 0.2 to 0.3.
 * - Gapless paging: aggr_events() pages end at the watermark of
 *   aggr_events_watermark(), so an event whose transaction commits after a
 *   later one is never skipped by a reader paging with after; the ingest
 *   notifies channel aggr_events after each commit that stored events.
 */

\echo Use "ALTER EXTENSION aggr UPDATE TO '0.3'" to load this file. \quit

CREATE FUNCTION aggr_events_watermark(OUT upto bigint, OUT pending boolean)
    AS 'MODULE_PATHNAME', 'aggr_events_watermark'
    LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION aggr_events_watermark() IS
    'aggr: every event with seq <= upto that will ever commit has committed; pending: events above it wait for earlier transactions';

/*
 * Pages end at the watermark (watermark.h), so paging by after never skips
 * an event that commits late: the page is read by the index, then cut at
 * the watermark (a short page; the next starts after its last seq).
 * VOLATILE: the page's query takes its snapshot after the watermark is
 * read, which a STABLE function's would not.
 */
CREATE OR REPLACE FUNCTION aggr_events(topic text DEFAULT NULL, "limit" integer DEFAULT 1000,
                            after bigint DEFAULT NULL)
    RETURNS SETOF aggr.events
    LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    upto bigint;
BEGIN
    IF aggr_events."limit" IS NULL OR aggr_events."limit" NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 10000'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('The limit given was %s.',
                                             coalesce(aggr_events."limit"::text, 'null'));
    END IF;
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'aggr_events pages only in READ COMMITTED transactions'
            USING ERRCODE = '0A000',
                  DETAIL = 'A snapshot that outlives a statement cannot tell which events are still being committed, so a page could skip one.',
                  HINT = 'Run it in a READ COMMITTED transaction (the default).';
    END IF;
    SELECT w.upto INTO upto FROM @extschema@.aggr_events_watermark() w;
    IF aggr_events.topic IS NULL THEN
        RETURN QUERY
            SELECT p.* FROM (SELECT e.* FROM aggr.events e
                             WHERE e.seq > coalesce(aggr_events.after, 0)
                             ORDER BY e.seq LIMIT aggr_events."limit") p
            WHERE p.seq <= upto ORDER BY p.seq;
    ELSE
        RETURN QUERY
            SELECT p.* FROM (SELECT e.* FROM aggr.events e
                             WHERE e.topic = aggr_events.topic
                               AND e.seq > coalesce(aggr_events.after, 0)
                             ORDER BY e.seq LIMIT aggr_events."limit") p
            WHERE p.seq <= upto ORDER BY p.seq;
    END IF;
END
$$;
COMMENT ON FUNCTION aggr_events(text, integer, bigint) IS
    'aggr: stored events oldest first, optionally of one topic, after the seq of the previous page, never past a later commit';

REVOKE ALL ON FUNCTION aggr_events_watermark() FROM PUBLIC;
