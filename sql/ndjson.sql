-- NDJSON: one event per line, as log shippers send it; line k is event k - 1,
-- all or nothing like any request.
CREATE EXTENSION aggr;
\set VERBOSITY default
SELECT aggr_publish_ndjson(E'{"topic": "n", "event_id": "1", "timestamp": 0, "source": "s"}\n'
                           '{"topic": "n", "event_id": "2", "timestamp": 0, "source": "s"}\r\n'
                           '{"topic": "n", "event_id": "1", "timestamp": 0, "source": "s"}\n\n');
SELECT aggr_publish_ndjson('{"topic": "n", "event_id": "3", "timestamp": 0, "source": "s"}');

-- errors name the line (parse errors) or the event (schema), and store nothing
SELECT aggr_publish_ndjson(E'{"topic": "n", "event_id": "4", "timestamp": 0, "source": "s"}\n'
                           '{"topic": "n", "event_id": \n');
SELECT aggr_publish_ndjson(E'{"topic": "n", "event_id": "4", "timestamp": 0, "source": "s"}\n\n'
                           '{"topic": "n", "event_id": "5", "timestamp": 0, "source": "s"}');
SELECT aggr_publish_ndjson(E'{"topic": "n", "event_id": "4", "timestamp": 0, "source": "s"}\n'
                           '{"topic": "n", "event_id": "5", "timestamp": 0, "source": "s"}\n'
                           '{"topic": "n", "event_id": 6, "timestamp": 0, "source": "s"}');
SELECT aggr_publish_ndjson(E'{"topic": "n", "event_id": "4", "timestamp": 0, "source": "s"}\n42');
SELECT aggr_publish_ndjson(E'\n');
SELECT aggr_publish_ndjson('');
SET aggr.max_request_events = 2;
SELECT aggr_publish_ndjson(E'{}\n{}\n{}');
RESET aggr.max_request_events;

SELECT event_id FROM aggr.events ORDER BY seq;
SELECT s -> 'received' AS received, s -> 'unique_processed' AS unique_processed
FROM aggr_stats() s;
DROP EXTENSION aggr;
