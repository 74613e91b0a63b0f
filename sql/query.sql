-- Reading events: oldest first, by topic, keyset pages, bounded.
CREATE EXTENSION aggr;
SET TimeZone = 'UTC';
SELECT aggr_ingest(jsonb_agg(jsonb_build_object('topic', 'topic_' || (g % 3), 'event_id', 'e' || g,
                                                'timestamp', g, 'source', 's')))
FROM generate_series(1, 10) g;
SELECT aggr_ingest('{"topic": "late", "event_id": "x", "timestamp": "2025-10-24T00:00:00Z", "source": "s", "payload": {"a": 1}}');

SELECT topic, event_id, "timestamp", source, payload, ingested_at IS NOT NULL AS has_ingested_at
FROM aggr_events();
SELECT topic, event_id FROM aggr_events('topic_1');
SELECT topic, event_id FROM aggr_events(topic => 'late');
SELECT count(*) FROM aggr_events('nope');

-- keyset pages: after = the last seq of the previous page
SELECT array_agg(event_id ORDER BY seq) AS page1, max(seq) AS last FROM aggr_events(NULL, 4) \gset
SELECT :'page1';
SELECT array_agg(event_id ORDER BY seq) AS page2 FROM aggr_events(NULL, 4, :last);
SELECT array_agg(event_id ORDER BY seq) AS page3 FROM aggr_events("limit" => 4, after => :last + 4);
SELECT count(*) FROM aggr_events(after => 1000000);

-- the watermark: with no transaction open, every stored event is below it;
-- a transaction that ingested holds it below its own events for others
-- (specs/gapless_paging.spec), not for itself
SELECT upto = (SELECT max(seq) FROM aggr.events) AS upto_is_last, pending FROM aggr_events_watermark();
-- a page comes with the watermark it was cut at
SELECT upto = (SELECT max(seq) FROM aggr.events) AS upto_is_last, pending,
       (event).event_id, (event).seq IS NULL AS last_row
FROM aggr_events_page('topic_1', 2);
BEGIN;
SELECT aggr_ingest('{"topic": "own", "event_id": "o", "timestamp": 0, "source": "s"}') ->> 'unique' AS stored;
SELECT event_id FROM aggr_events('own');
-- (aggr's kind of advisory lock: Citus, when it runs this test, takes its own)
SELECT locktype, objsubid, mode FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 24935 AND pid = pg_backend_pid();
ROLLBACK;
-- a snapshot that outlives the statement cannot page without gaps
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) FROM aggr_events();
ROLLBACK;

-- bounds on limit
SELECT aggr_events(NULL, 0);
SELECT aggr_events(NULL, 10001);
SELECT aggr_events(NULL, NULL);
SELECT count(*) FROM aggr_events(NULL, 10000);

-- the pages are served by indexes, not by sorting the table: EXPLAIN each
-- query aggr_events_page() runs to read a page, taken from its source, with
-- its arguments as parameters (the cut at the watermark applies after),
-- under the function's own settings
CREATE FUNCTION plans_of_aggr_events() RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    query text;
    line text;
BEGIN
    PERFORM set_config(split_part(setting, '=', 1), substr(setting, strpos(setting, '=') + 1), true)
    FROM pg_proc p, unnest(p.proconfig) setting
    WHERE p.oid = 'aggr_events_page(text, integer, bigint)'::regprocedure
      AND setting NOT LIKE 'search_path=%';
    FOR query IN
        SELECT m[1] FROM pg_proc p,
               regexp_matches(p.prosrc, '\((SELECT e\.\* FROM aggr\.events e.*?"limit")\) p', 'g') m
        WHERE p.oid = 'aggr_events_page(text, integer, bigint)'::regprocedure
    LOOP
        query := replace(replace(replace(query,
                     'aggr_events_page.topic', '$1'), 'start_after', '$2'),
                     'aggr_events_page."limit"', '$3');
        EXECUTE 'PREPARE page(text, bigint, integer) AS ' || query;
        RETURN NEXT regexp_replace(query, '\s+', ' ', 'g');
        -- (on Citus, without the node's address and the shards' numbers)
        FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) EXECUTE page(''x'', 5, 10)' LOOP
            CONTINUE WHEN line ~ 'Node: host=';
            RETURN NEXT regexp_replace(line, '(\w)_\d{6}\M', '\1', 'g');
        END LOOP;
        DEALLOCATE page;
    END LOOP;
END
$$;
SELECT * FROM plans_of_aggr_events();
DROP FUNCTION plans_of_aggr_events();
-- and so they are on a table never analyzed, where the planner would scan
-- it whole for a page: no page scans aggr.events
SELECT pg_stat_force_next_flush();
SELECT seq_scan AS seq_scans_before FROM pg_stat_user_tables WHERE relid = 'aggr.events'::regclass \gset
SELECT count(*) FROM aggr_events_page(NULL, 10, 5);
SELECT count(*) FROM aggr_events_page('topic_1', 10, 5);
SELECT count(*) FROM aggr_events(NULL, 10, 5);
SELECT pg_stat_force_next_flush();
SELECT seq_scan - :seq_scans_before AS page_seq_scans FROM pg_stat_user_tables WHERE relid = 'aggr.events'::regclass;

-- keys compare byte by byte, whatever the database's locale
SELECT attrelid::regclass AS "table", attname, attcollation::regcollation AS collation
FROM pg_attribute
WHERE attrelid IN ('aggr.events'::regclass, 'aggr.counters'::regclass) AND attname IN ('topic', 'event_id')
ORDER BY 1, 2;

-- aggr_event_json renders an event as json_build_object does, byte for
-- byte (the sidecar's GET /events before 0.7): the rows stored above, and
-- escapes, NULLs, infinities and another time zone
SELECT count(*) AS differ FROM aggr.events e
WHERE aggr_event_json(e) IS DISTINCT FROM
      json_build_object('topic', e.topic, 'event_id', e.event_id, 'timestamp', e."timestamp",
                        'source', e.source, 'payload', e.payload, 'ingested_at', e.ingested_at)::text;
SET timezone = 'America/New_York';
SELECT aggr_event_json(r) = json_build_object('topic', (r).topic, 'event_id', (r).event_id,
           'timestamp', (r)."timestamp", 'source', (r).source, 'payload', (r).payload,
           'ingested_at', (r).ingested_at)::text AS same,
       aggr_event_json(r)
FROM (VALUES (ROW('plain', 'id-1', '2026-01-02 03:04:05.678+00', 'src', '{"a": [1, "x"]}',
                  '2026-07-02 03:04:06+00', 1, NULL)::aggr.events),
             (ROW(E'q"b\\s\n\t\u0001é', E'\b\f\r', 'infinity', '',
                  '{"k\"": "v\n", "n": 1.50, "t": true, "z": null}', '-infinity', 2, NULL)::aggr.events),
             (ROW('nulls', 'id-3', NULL, NULL, NULL, NULL, 3, NULL)::aggr.events)) v(r);
RESET timezone;
SELECT aggr_event_json(NULL::aggr.events) IS NULL AS "null";
SELECT aggr_event_json(ROW('t', 'e'));
DROP EXTENSION aggr CASCADE;
