-- Citus (README, "Citus"): aggr_distribute() checks its argument and needs
-- the citus extension, which a stock server does not have; nothing changes.
-- t/080 runs this suite on a Citus coordinator too, where an event trigger
-- distributes aggr.events at CREATE EXTENSION (expected/citus_1.out).
CREATE EXTENSION aggr;
\set VERBOSITY sqlstate
SELECT aggr_distribute(0);
SELECT aggr_distribute(1025);
\set VERBOSITY default
SELECT aggr_distribute();
-- (kept on a distributed aggr.events too, beside Citus's own)
SELECT count(*) FILTER (WHERE tgname = 'events_truncated') AS expiry_restart_trigger
FROM pg_trigger WHERE tgrelid = 'aggr.events'::regclass;
-- ingest does not need Citus either way
SELECT aggr_ingest('{"topic": "t", "event_id": "1", "timestamp": 0, "source": "s"}');
DROP EXTENSION aggr;
