/*
 * aggr--0.2--0.3.sql: from 0.2 to 0.3.
 * - Gapless paging: aggr_events() pages end at the watermark of
 *   aggr_events_watermark(), so an event whose transaction commits after a
 *   later one is never skipped by a reader paging with after;
 *   aggr_events_page() returns a page and the watermark it was cut at.
 *   The ingest notifies channel aggr_events after each commit that stored
 *   events (aggr.notify).
 * - The new functions are granted to nobody (a grant made here would count as
 *   the extension's own, and pg_dump would leave it out): the sidecar's
 *   role needs EXECUTE on aggr_events_page for GET /events/stream.
 */

\echo Use "ALTER EXTENSION aggr UPDATE TO '0.3'" to load this file. \quit

CREATE FUNCTION aggr_events_watermark(OUT upto bigint, OUT pending boolean)
    AS 'MODULE_PATHNAME', 'aggr_events_watermark'
    LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION aggr_events_watermark() IS
    'aggr: every event with seq <= upto that will ever commit has committed; pending: events above it wait for earlier transactions';

/*
 * One page of events after a seq, cut at the watermark (watermark.h): paging
 * by after never skips an event that commits late.  The page is read by the
 * index, then cut at the watermark W.  Rows: the page's events in seq order,
 * then one row whose event is NULL, there even for an empty page; each
 * carries W (upto), which can go down between two readings, so a follower
 * goes on from the W its page was cut at: every event with after < seq <=
 * upto is on the page unless it holds "limit" events (then every one up to
 * its last seq).  VOLATILE: the page's query takes its snapshot after W is
 * read, which a STABLE function's would not.
 */
CREATE FUNCTION aggr_events_page(topic text DEFAULT NULL, "limit" integer DEFAULT 1000,
                                 after bigint DEFAULT NULL)
    RETURNS TABLE (upto bigint, pending boolean, event aggr.events)
    LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cut bigint;
    waiting boolean;
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
    -- two queries, so that each is planned for its own index
    IF aggr_events_page.topic IS NULL THEN
        RETURN QUERY
            SELECT cut, waiting, p::aggr.events
            FROM (SELECT e.* FROM aggr.events e
                  WHERE e.seq > coalesce(aggr_events_page.after, 0)
                  ORDER BY e.seq LIMIT aggr_events_page."limit") p
            WHERE p.seq <= cut ORDER BY p.seq;
    ELSE
        RETURN QUERY
            SELECT cut, waiting, p::aggr.events
            FROM (SELECT e.* FROM aggr.events e
                  WHERE e.topic = aggr_events_page.topic
                    AND e.seq > coalesce(aggr_events_page.after, 0)
                  ORDER BY e.seq LIMIT aggr_events_page."limit") p
            WHERE p.seq <= cut ORDER BY p.seq;
    END IF;
    RETURN QUERY SELECT cut, waiting, NULL::aggr.events;
END
$$;
COMMENT ON FUNCTION aggr_events_page(text, integer, bigint) IS
    'aggr: a page of events after a seq, never past a later commit, then a row with the watermark it was cut at';

CREATE OR REPLACE FUNCTION aggr_events(topic text DEFAULT NULL, "limit" integer DEFAULT 1000,
                            after bigint DEFAULT NULL)
    RETURNS SETOF aggr.events
    LANGUAGE sql VOLATILE PARALLEL RESTRICTED
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (p.event).* FROM @extschema@.aggr_events_page(topic, "limit", after) p
    WHERE (p.event).seq IS NOT NULL ORDER BY (p.event).seq
$$;
COMMENT ON FUNCTION aggr_events(text, integer, bigint) IS
    'aggr: stored events oldest first, optionally of one topic, after the seq of the previous page, never past a later commit';

REVOKE ALL ON FUNCTION aggr_events_page(text, integer, bigint), aggr_events_watermark() FROM PUBLIC;
