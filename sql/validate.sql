-- Validation: request shape, each field, all or nothing, clear errors.
CREATE EXTENSION aggr;
SET TimeZone = 'UTC';

-- try(): the answer, or the SQLSTATE and message of the error
CREATE FUNCTION try(request text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RETURN aggr_ingest(request::jsonb)::text;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
CREATE FUNCTION ev(id text, extra text DEFAULT '') RETURNS text LANGUAGE sql AS $$
    SELECT format('{"topic": "t", "event_id": "%s", "timestamp": "2025-10-24T00:00:00Z", "source": "s"%s}', id, extra)
$$;

-- the request: one object, or a non-empty array of objects
SELECT try(ev('single'));
SELECT try('[' || ev('a1') || ',' || ev('a2') || ']');
SELECT try('[]');
SELECT try('"x"');
SELECT try('1');
SELECT try('null');
SELECT try('[1]');
SELECT try('[' || ev('ok') || ', [] ]');
SELECT try('[' || ev('ok') || ', "x"]');
SELECT aggr_ingest(NULL);
-- malformed JSON never reaches aggr: PostgreSQL's jsonb input rejects it
SELECT try('{"topic": ');
SELECT try('{"topic": "t" "event_id": "1"}');
SELECT try(ev('nul\u0000'));
SELECT left(try(repeat('[', 10000) || repeat(']', 10000)), 60);
SELECT left(try('[' || repeat('{"a":', 5000) || '1' || repeat('}', 5000) || ']'), 60);

-- required fields, named with the index of the event
SELECT try('{}');
SELECT try('[' || ev('b1') || ', {"topic": "t", "timestamp": 0, "source": "s"}]');
SELECT try('{"topic": "t", "event_id": 7, "timestamp": 0, "source": "s"}');
SELECT try('{"topic": "t", "event_id": null, "timestamp": 0, "source": "s"}');
SELECT try('{"topic": "", "event_id": "1", "timestamp": 0, "source": "s"}');
SELECT try('{"topic": ["t"], "event_id": "1", "timestamp": 0, "source": "s"}');
SELECT try('{"topic": "t", "event_id": "1", "timestamp": 0}');
SELECT try('{"topic": "t", "event_id": "1", "timestamp": 0, "source": true}');
SELECT try('{"topic": "t", "event_id": "1", "source": "s"}');

-- 1 to 128 characters, counted as characters, not bytes
SELECT try(format('{"topic": "%s", "event_id": "len128", "timestamp": 0, "source": "s"}', repeat('x', 128)));
SELECT try(format('{"topic": "%s", "event_id": "len129", "timestamp": 0, "source": "s"}', repeat('x', 129)));
SELECT try(format('{"topic": "t", "event_id": "%s", "timestamp": 0, "source": "s"}', repeat('é', 128)));
SELECT try(format('{"topic": "t", "event_id": "%s", "timestamp": 0, "source": "s"}', repeat('é', 129)));
SELECT try(format('{"topic": "t", "event_id": "huge", "timestamp": 0, "source": "%s"}', repeat('s', 1000000)));

-- timestamps: ISO-8601 with Z, an offset or none (= UTC), or Unix seconds
SELECT try(ev('z1', '')), try(ev('z2', ''));
SELECT t, try(format('{"topic": "ts", "event_id": %s, "timestamp": %s, "source": "s"}', to_json(t), t))
FROM (VALUES ('"2025-10-24T02:00:00+02:00"'), ('"2025-10-24T00:00:00"'), ('"2025-10-24 00:00:00.5"'),
             ('"2025-10-24t00:00:00z"'), ('"2025-10-24T00:00Z"'), ('"2025-10-24"'),
             ('"2025-10-23T19:30:00-0430"'), ('"2025-10-24T05:00:00+05"'),
             ('"2025-10-24T00:00:00.123456789Z"'), ('"2024-02-29T00:00:00Z"'),
             ('1761264000'), ('1761264000.25'), ('0'), ('-1.5'), ('1e3'),
             ('"2025-02-29T00:00:00Z"'), ('"2025-13-01T00:00:00Z"'), ('"2025-10-24T24:00:00Z"'),
             ('"2025-10-24T00:60:00Z"'), ('"2025-10-24T00:00:60Z"'), ('"2025-10-24T00:00:00+16:00"'),
             ('"2025-10-24T00:00:00.Z"'), ('"2025-10-24T00:00:00Zjunk"'), ('"25-10-24"'),
             ('"now"'), ('"epoch"'), ('"yesterday"'), ('"Oct 24 2025"'), ('""'), ('"0000-01-01"'),
             ('1e400'), ('-1e400'), ('1e13'), ('true'), ('null'), ('{}'), ('[]')) v(t);
SET TimeZone = 'America/New_York';   -- a zone-less timestamp is UTC whatever the session says
SELECT try('{"topic": "tz", "event_id": "1", "timestamp": "2025-10-24T00:00:00", "source": "s"}');
SET TimeZone = 'UTC';
SELECT topic, event_id, "timestamp" FROM aggr.events WHERE topic IN ('ts', 'tz') ORDER BY topic, "timestamp", event_id;

-- payload: optional object; unknown fields are ignored
SELECT try(ev('p1', ', "payload": {"level": "info", "n": [1, 2, {"deep": true}]}'));
SELECT try(ev('p2', ', "payload": null'));
SELECT try(ev('p3', ', "payload": [1]'));
SELECT try(ev('p4', ', "payload": "text"'));
SELECT try(ev('p5', ', "payload": 3'));
SELECT try(ev('p6', ', "extra": 1, "other": {"x": 2}'));
SELECT event_id, payload FROM aggr.events WHERE event_id LIKE 'p_' ORDER BY event_id;

-- all or nothing: one bad event rejects the whole request
SELECT count(*) AS before FROM aggr.events \gset
SELECT try('[' || ev('x1') || ',' || ev('x2') || ',' || ev('x3') || ', {"topic": "t", "event_id": "x4", "timestamp": "never", "source": "s"}]');
SELECT count(*) - :before AS stored_by_the_bad_request FROM aggr.events;

-- the size of one call is bounded
SET aggr.max_request_events = 3;
SELECT try('[' || ev('m1') || ',' || ev('m2') || ',' || ev('m3') || ',' || ev('m4') || ']');
SELECT try('[' || ev('m1') || ',' || ev('m2') || ',' || ev('m3') || ']');
RESET aggr.max_request_events;

-- rejected requests changed nothing: the invariants hold
SELECT (SELECT count(*) FROM aggr.events) = (SELECT sum(unique_processed) FROM aggr.counters) AS unique_is_count,
       (SELECT sum(received) = sum(unique_processed) + sum(duplicate_dropped) FROM aggr.counters) AS received_adds_up;

DROP EXTENSION aggr CASCADE;
