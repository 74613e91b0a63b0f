/*
 * aggr--0.1--0.2.sql: from 0.1 to 0.2.
 * - aggr_health() tells a stock server (aggr not preloaded) from a preloaded
 *   one: "mode", "preloaded", and "preload" in "down" with a hint when a
 *   broker is configured that only a preloaded aggr can use.
 * - pg_dump dumps aggr's tables (0.1 dumped only CREATE EXTENSION).
 * - aggr_publish_ndjson(text): one event per line, as log shippers send.
 */

\echo Use "ALTER EXTENSION aggr UPDATE TO '0.2'" to load this file. \quit

CREATE OR REPLACE FUNCTION aggr_health() RETURNS jsonb
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

SELECT pg_catalog.pg_extension_config_dump('aggr.events', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.events_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.counters', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.rejected', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.rejected_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('aggr.consumers', '');

CREATE FUNCTION aggr_publish_ndjson(request text) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'aggr_publish_ndjson'
    LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION aggr_publish_ndjson(text) IS
    'aggr: aggr_publish of newline-delimited JSON, one event per line (line k is event k - 1)';
REVOKE ALL ON FUNCTION aggr_publish_ndjson(text) FROM PUBLIC;
