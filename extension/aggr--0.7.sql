/*
 * aggr.sql: the install script of the current version (the Makefile copies it
 * to aggr--<default_version>.sql).  Tables in schema aggr, SQL API in the
 * extension's schema.  Every change here ships with an upgrade script from
 * the previous version, and test sql/upgrade.sql compares the two results.
 */

\echo Use "CREATE EXTENSION aggr" to load this file. \quit

CREATE SCHEMA aggr;
COMMENT ON SCHEMA aggr IS 'aggr: stored events, counters, dead letters and consumer progress';

/*
 * Every unique event, first version wins.  seq orders events oldest first for
 * keyset pagination; it is not part of any unique key (see DESIGN.md, Citus).
 * The key is compared byte by byte (COLLATE "C"): keys are identifiers, and
 * every insert and duplicate check walks the key index, where a locale's
 * strcoll() cost about a tenth of the ingest.
 *
 * Retention (expire.h): an expired event stays as a tombstone, its payload
 * emptied and expired_at set, so that its key still deduplicates (in the same
 * unique index, with no race against ingest) until aggr.dedup_window has
 * passed; then the row is deleted.  expired_at is in no index, so expiring
 * can be a HOT update (given room on the page: a fillfactor below 100);
 * readers skip tombstones by starting after aggr.expiry.expired_upto.
 */
CREATE TABLE aggr.events (
    topic       text        COLLATE "C" NOT NULL,
    event_id    text        COLLATE "C" NOT NULL,
    "timestamp" timestamptz NOT NULL,
    source      text        NOT NULL,
    payload     jsonb       NOT NULL DEFAULT '{}',
    ingested_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    expired_at  timestamptz,
    PRIMARY KEY (topic, event_id)
);
CREATE INDEX events_seq_idx ON aggr.events (seq);
CREATE INDEX events_topic_seq_idx ON aggr.events (topic, seq);
COMMENT ON TABLE aggr.events IS 'aggr: each (topic, event_id) accepted, exactly once; expired ones as tombstones (expired_at set) while their keys are remembered';

/*
 * Counters per topic, spread over shards (a backend writes the shard of its
 * backend id) so concurrent writers do not queue on one row.  They change in
 * the same statement as aggr.events, so sum(unique_processed) = count(*).
 */
CREATE TABLE aggr.counters (
    topic             text     COLLATE "C" NOT NULL,
    shard             smallint NOT NULL,
    received          bigint   NOT NULL DEFAULT 0,
    unique_processed  bigint   NOT NULL DEFAULT 0,
    duplicate_dropped bigint   NOT NULL DEFAULT 0,
    expired           bigint   NOT NULL DEFAULT 0,
    bulk_fallback     bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, shard)
) WITH (fillfactor = 50);
COMMENT ON TABLE aggr.counters IS 'aggr: received, unique, duplicate and expired counts per topic and shard (shard -1: expiry''s)';
COMMENT ON COLUMN aggr.counters.bulk_fallback IS 'aggr: events received by the INSERT statement instead of the bulk path (extension/bulk.h)';

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
 * seqs would hide new events from readers until the next expiry).  On Citus
 * the shards of a distributed aggr.events carry copies of the trigger; those
 * do nothing (several shards of a worker, truncated over several connections
 * of one distributed transaction, would wait on each other for the row).
 */
CREATE FUNCTION aggr.expiry_restart() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME = 'events' THEN
        UPDATE aggr.expiry SET expired_upto = 0, forgotten_upto = 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_truncated AFTER TRUNCATE ON aggr.events
    FOR EACH STATEMENT EXECUTE FUNCTION aggr.expiry_restart();

/* Queue elements a consumer could not ingest (not JSON, not a valid event). */
CREATE TABLE aggr.rejected (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    raw         bytea       NOT NULL,
    reason      text        NOT NULL,
    consumer    integer     NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE aggr.rejected IS 'aggr: dead letters, the raw queue element and why it was refused';

/*
 * The last batch each consumer slot committed.  Written in the batch's own
 * transaction, it tells a restarted consumer whether its processing list was
 * already ingested (then it is only acknowledged, not counted again).
 */
CREATE TABLE aggr.consumers (
    consumer   integer     PRIMARY KEY,
    last_token text        NOT NULL,
    batches    bigint      NOT NULL DEFAULT 0,
    events     bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE aggr.consumers IS 'aggr: progress of each consumer slot, and the token of its last committed batch';

CREATE FUNCTION aggr_ingest(request jsonb) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'aggr_ingest'
    LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION aggr_ingest(jsonb) IS
    'aggr: validate one event or an array of events and store them in this transaction; returns received, unique, duplicates';

CREATE FUNCTION aggr_expire(older_than interval DEFAULT NULL, "limit" integer DEFAULT 10000)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'aggr_expire'
    LANGUAGE C VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION aggr_expire(interval, integer) IS
    'aggr: expire up to limit events ingested longer ago than older_than (default aggr.retention), oldest first, and forget tombstones past aggr.dedup_window; returns how many it expired';

CREATE FUNCTION aggr_publish(request jsonb) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'aggr_publish'
    LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION aggr_publish(jsonb) IS
    'aggr: validate events, then queue them on the broker at commit or, without a broker, store them';

CREATE FUNCTION aggr_publish_text(request text) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'aggr_publish_text'
    LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION aggr_publish_text(text) IS
    'aggr: aggr_publish of a request given as JSON text; with a broker a request of several events is queued in its own text';

CREATE FUNCTION aggr_publish_ndjson(request text) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'aggr_publish_ndjson'
    LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION aggr_publish_ndjson(text) IS
    'aggr: aggr_publish of newline-delimited JSON, one event per line (line k is event k - 1)';

CREATE FUNCTION aggr.runtime_status() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'aggr_runtime_status'
    LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION aggr.runtime_status() IS
    'aggr: consumers and broker as seen from shared memory and Redis';

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
 * its last seq).  Expired events are left out (a tombstone is no event); the
 * page starts after the last seq expiry has passed.  VOLATILE: the page's
 * query takes its snapshot after W is read, which a STABLE function's would
 * not.
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

CREATE FUNCTION aggr_events(topic text DEFAULT NULL, "limit" integer DEFAULT 1000,
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

-- The JSON of an event as GET /events and GET /events/stream show it (the
-- sidecar renders its pages with it): of an aggr.events row, or any row with
-- its columns (a shard's, where Citus runs it on a worker node).  It only
-- formats the row it is given, so everyone may call it.
CREATE FUNCTION aggr_event_json(event record) RETURNS text
    LANGUAGE C STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'aggr_event_json';
COMMENT ON FUNCTION aggr_event_json(record) IS
    'aggr: an event as JSON, as GET /events shows it: topic, event_id, timestamp, source, payload, ingested_at';

CREATE FUNCTION aggr_stats() RETURNS jsonb
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

CREATE FUNCTION aggr_health() RETURNS jsonb
    LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    runtime jsonb := aggr.runtime_status();
    broker text := runtime ->> 'broker';
    configured integer := (runtime ->> 'workers_configured')::integer;
    running integer := (runtime ->> 'worker_count')::integer;
    down text[] := '{}';
    health jsonb;
BEGIN
    IF broker = 'needs_preload' THEN
        down := down || 'preload'::text;
    ELSIF broker = 'down' THEN
        down := down || 'broker'::text;
    END IF;
    IF broker IN ('ok', 'down') AND running < greatest(configured, 1) THEN
        down := down || 'workers'::text;
    END IF;
    health := jsonb_build_object(
        'status', CASE WHEN cardinality(down) = 0 THEN 'ok' ELSE 'down' END,
        'down', to_jsonb(down),
        'database', 'ok',
        'extension', (SELECT extversion FROM pg_extension WHERE extname = 'aggr'),
        'mode', CASE WHEN broker = 'disabled' THEN 'direct' ELSE 'broker' END,
        'preloaded', runtime -> 'preloaded',
        'broker', runtime -> 'broker',
        'broker_error', runtime -> 'broker_error',
        'workers', jsonb_build_object('running', running, 'configured', configured));
    IF broker = 'needs_preload' THEN
        health := health || jsonb_build_object('hint',
            'aggr.broker_url is set but aggr is not in shared_preload_libraries: '
            'add aggr there and restart the server, or reset aggr.broker_url to ingest directly');
    END IF;
    RETURN health;
END
$$;
COMMENT ON FUNCTION aggr_health() IS
    'aggr: status ok when the broker (if configured) and every consumer are up, else down naming what is down';

/*
 * Citus (README, "Citus"; extension/citus.h): distributes aggr.events over
 * the worker nodes, by event_id, which spreads any mix of topics evenly (a
 * topic would put a busy topic on one node).  The other tables stay on the
 * coordinator, where ingest, consumers and expiry run: the counters are
 * upserted there in the batch's statement, locally.  Once only: Citus cannot
 * alter or undistribute a table an extension owns, so the shard count is
 * fixed from here on (default: two per worker node; measured in README, fewer
 * shards cost the coordinator less per batch).  The TRUNCATE trigger stays
 * (citus.enable_unsafe_triggers: otherwise Citus distributes no table with
 * triggers): a TRUNCATE on the coordinator resets its aggr.expiry; the
 * shards' copies of the trigger do nothing.  Not SECURITY DEFINER: the
 * caller must own the table, as create_distributed_table wants.
 */
CREATE FUNCTION aggr_distribute(shard_count integer DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp SET client_min_messages = warning
    SET citus.enable_unsafe_triggers = on
AS $$
DECLARE
    shards integer := aggr_distribute.shard_count;
BEGIN
    IF shards IS NOT NULL AND shards NOT BETWEEN 1 AND 1024 THEN
        RAISE EXCEPTION 'shard_count must be between 1 and 1024'
            USING ERRCODE = '22023',
                  DETAIL = format('The shard_count given was %s.', shards);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'aggr_distribute needs the citus extension'
            USING ERRCODE = '0A000',
                  HINT = 'Install Citus on every node, run CREATE EXTENSION citus, add the worker nodes, then call aggr_distribute() on the coordinator.';
    END IF;
    IF (SELECT groupid FROM pg_dist_local_group) <> 0 THEN
        RAISE EXCEPTION 'aggr_distribute runs on the Citus coordinator, and this server is a worker node'
            USING ERRCODE = '0A000', HINT = 'Connect to the coordinator.';
    END IF;
    -- one call at a time; ingest and readers wait for the copy of the events
    LOCK TABLE aggr.events IN ACCESS EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'aggr.events'::regclass) THEN
        RAISE EXCEPTION 'aggr.events is distributed already'
            USING ERRCODE = '55000',
                  DETAIL = format('It has %s shards, fixed for good: Citus does not alter a table an extension owns.',
                                  (SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'aggr.events'::regclass));
    END IF;
    IF NOT EXISTS (SELECT FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0) THEN
        RAISE EXCEPTION 'the Citus cluster has no worker node'
            USING ERRCODE = '55000',
                  HINT = 'Add the worker nodes first: SELECT citus_add_node(host, port) on the coordinator.';
    END IF;
    -- the default: two shards per worker node, room to double the cluster by moving shards
    shards := coalesce(shards, 2 * (SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0));
    PERFORM create_distributed_table('aggr.events', 'event_id', shard_count => shards,
                                     colocate_with => 'none');
    PERFORM truncate_local_data_after_distributing_table('aggr.events');
END
$$;
COMMENT ON FUNCTION aggr_distribute(integer) IS
    'aggr: distribute aggr.events with Citus, by event_id, in shard_count shards (default: two per worker node; once; run on the coordinator)';

/*
 * pg_dump dumps the contents of these tables (and the state of their
 * identity sequences), not only CREATE EXTENSION: the events are user data.
 */
SELECT pg_catalog.pg_extension_config_dump('aggr.events', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.events_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.counters', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.rejected', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.rejected_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.consumers', '');

/*
 * Privileges: the functions run as the extension's owner (SECURITY DEFINER,
 * fixed search_path), so a role granted EXECUTE may publish and read without
 * any privilege on the tables.  Nobody gets EXECUTE by default.
 */
REVOKE ALL ON FUNCTION aggr_ingest(jsonb), aggr_expire(interval, integer), aggr_distribute(integer),
    aggr_publish(jsonb), aggr_publish_text(text),
    aggr_publish_ndjson(text),
    aggr_events(text, integer, bigint), aggr_events_page(text, integer, bigint),
    aggr_events_watermark(),
    aggr_stats(), aggr_health(), aggr.runtime_status(), aggr.expiry_restart() FROM PUBLIC;
