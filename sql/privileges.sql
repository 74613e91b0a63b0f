-- Privileges: the functions run as the extension owner; a role granted EXECUTE
-- publishes and reads, and still cannot touch the tables.
CREATE EXTENSION aggr;
CREATE ROLE regress_aggr_publisher;
CREATE ROLE regress_aggr_nobody;
GRANT EXECUTE ON FUNCTION aggr_publish(jsonb), aggr_publish_text(text), aggr_publish_ndjson(text), aggr_ingest(jsonb),
    aggr_events(text, integer, bigint), aggr_stats(), aggr_health() TO regress_aggr_publisher;

SET ROLE regress_aggr_publisher;
SELECT aggr_publish('{"topic": "p", "event_id": "1", "timestamp": 0, "source": "s"}');
SELECT aggr_publish_text('{"topic": "p", "event_id": "t", "timestamp": 0, "source": "s"}');
SELECT aggr_publish_ndjson('{"topic": "p", "event_id": "n", "timestamp": 0, "source": "s"}');
SELECT topic, event_id FROM aggr_events();
SELECT aggr_stats() -> 'unique_processed' AS unique_processed;
SELECT aggr_health() ->> 'status' AS status;
SELECT count(*) FROM aggr.events;
INSERT INTO aggr.events (topic, event_id, "timestamp", source) VALUES ('p', '2', now(), 's');
UPDATE aggr.counters SET received = 0;
DELETE FROM aggr.events;
SELECT aggr.runtime_status();
RESET ROLE;

-- no grant, no publish
SET ROLE regress_aggr_nobody;
SELECT aggr_publish('{"topic": "p", "event_id": "2", "timestamp": 0, "source": "s"}');
SELECT aggr_publish_text('{"topic": "p", "event_id": "2", "timestamp": 0, "source": "s"}');
SELECT aggr_publish_ndjson('{"topic": "p", "event_id": "2", "timestamp": 0, "source": "s"}');
SELECT aggr_stats();
SELECT aggr_expire('0 s');
RESET ROLE;

-- a caller's search_path cannot redirect what the functions run
CREATE SCHEMA evil;
CREATE FUNCTION evil.round(numeric, integer) RETURNS numeric LANGUAGE sql AS 'SELECT -1::numeric';
CREATE FUNCTION evil.cardinality(anyarray) RETURNS integer LANGUAGE sql AS 'SELECT 1';
SET search_path = evil, pg_catalog, public;
SELECT round(1.5, 0) AS shadowed_here;
SELECT aggr_ingest('{"topic": "p", "event_id": "3", "timestamp": 0, "source": "s"}');
SELECT (aggr_stats() ->> 'uptime_seconds')::numeric >= 0 AS uptime_not_shadowed,
       aggr_health() ->> 'status' AS status_not_shadowed;
RESET search_path;
DROP SCHEMA evil CASCADE;

SELECT count(*) FROM aggr.events;
DROP EXTENSION aggr CASCADE;
DROP ROLE regress_aggr_publisher;
DROP ROLE regress_aggr_nobody;
