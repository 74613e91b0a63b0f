/*
 * aggr--0.6--0.7.sql: from 0.6 to 0.7.
 * - aggr_event_json(record): an event's JSON as GET /events shows it,
 *   rendered in C (the sidecar uses it where it exists).
 */

\echo Use "ALTER EXTENSION aggr UPDATE TO '0.7'" to load this file. \quit

CREATE FUNCTION aggr_event_json(event record) RETURNS text
    LANGUAGE C STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'aggr_event_json';
COMMENT ON FUNCTION aggr_event_json(record) IS
    'aggr: an event as JSON, as GET /events shows it: topic, event_id, timestamp, source, payload, ingested_at';
