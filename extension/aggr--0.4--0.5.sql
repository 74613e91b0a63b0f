/*
 * aggr--0.4--0.5.sql: from 0.4 to 0.5.
 * - aggr_distribute() distributes aggr.events with Citus (README, "Citus"),
 *   granted to nobody (see 0.2--0.3).
 * - aggr.expiry_restart(), the TRUNCATE trigger's function, does nothing on
 *   a Citus shard's copy of the trigger.
 */

\echo Use "ALTER EXTENSION aggr UPDATE TO '0.5'" to load this file. \quit

/* the shards' copies of the TRUNCATE trigger (Citus) do nothing: see aggr.sql */
CREATE OR REPLACE FUNCTION aggr.expiry_restart() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME = 'events' THEN
        UPDATE aggr.expiry SET expired_upto = 0, forgotten_upto = 0;
    END IF;
    RETURN NULL;
END
$$;

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

REVOKE ALL ON FUNCTION aggr_distribute(integer) FROM PUBLIC;
