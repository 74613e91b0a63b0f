-- Citus (README, "Citus"): aggr_distribute() checks its argument and needs
-- the citus extension, which this server does not have; nothing changes.
CREATE EXTENSION aggr;
\set VERBOSITY sqlstate
SELECT aggr_distribute(0);
SELECT aggr_distribute(1025);
\set VERBOSITY default
SELECT aggr_distribute();
SELECT tgname FROM pg_trigger WHERE tgrelid = 'aggr.events'::regclass;
-- ingest does not need Citus either way
SELECT aggr_ingest('{"topic": "t", "event_id": "1", "timestamp": 0, "source": "s"}');
DROP EXTENSION aggr;
