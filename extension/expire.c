/*
 * expire.c
 *		Retention: the expiry batch (expire.h states its protocol) and the SQL
 *		entry point aggr_expire().
 */
#include "postgres.h"

#include "aggr.h"
#include "expire.h"
#include "ingest.h"
#include "watermark.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(aggr_expire);

/* Most events one aggr_expire() call expires: it runs in one transaction. */
#define AGGR_EXPIRE_MAX_LIMIT 1000000

/*
 * The live events after expired_upto ($2) up to the watermark ($3), at most
 * $4, in seq order; the prefix of them ingested before $1 is expired (%s:
 * made tombstones at $5, or deleted) and counted on shard -1.  Answers how
 * many, the last seq expired, and whether the batch was full of old events.
 */
static const char *const expire_sql_template =
"WITH todo AS ("
"  SELECT e.ctid AS row_id, e.seq, e.ingested_at < $1 AS old FROM aggr.events e"
"  WHERE e.expired_at IS NULL AND e.seq > $2 AND e.seq <= $3"
"  ORDER BY e.seq LIMIT $4"
"), doomed AS ("
"  SELECT row_id FROM todo"
"  WHERE seq < coalesce((SELECT pg_catalog.min(seq) FROM todo WHERE NOT old), $3 + 1)"
"), expired AS ("
"  %s"
"  RETURNING e.topic, e.seq"
"), counted AS ("
"  INSERT INTO aggr.counters AS c (topic, shard, expired)"
"  SELECT topic, -1, pg_catalog.count(*) FROM expired"
"  GROUP BY topic ORDER BY topic COLLATE \"C\""
"  ON CONFLICT (topic, shard) DO UPDATE SET expired = c.expired + excluded.expired"
")"
"SELECT (SELECT pg_catalog.count(*) FROM expired), (SELECT pg_catalog.max(seq) FROM expired),"
"  coalesce((SELECT pg_catalog.count(*) = $4 AND pg_catalog.bool_and(old) FROM todo), false)";

static const char *const make_tombstones =
"UPDATE aggr.events e SET payload = '{}', expired_at = $5 FROM doomed d WHERE e.ctid = d.row_id";
static const char *const delete_events =
"DELETE FROM aggr.events e USING doomed d WHERE e.ctid = d.row_id";

/*
 * The tombstones after forgotten_upto ($2), at most $3, in seq order; the
 * prefix of them expired before $1 is deleted.  Same answer as above.
 */
static const char *const forget_sql =
"WITH todo AS ("
"  SELECT e.ctid AS row_id, e.seq, e.expired_at < $1 AS old FROM aggr.events e"
"  WHERE e.expired_at IS NOT NULL AND e.seq > $2"
"  ORDER BY e.seq LIMIT $3"
"), gone AS ("
"  DELETE FROM aggr.events e USING todo t WHERE e.ctid = t.row_id"
"    AND t.seq < coalesce((SELECT pg_catalog.min(seq) FROM todo WHERE NOT old),"
"                         9223372036854775807)"
"  RETURNING e.seq"
")"
"SELECT (SELECT pg_catalog.count(*) FROM gone), (SELECT pg_catalog.max(seq) FROM gone),"
"  coalesce((SELECT pg_catalog.count(*) = $3 AND pg_catalog.bool_and(old) FROM todo), false)";

static SPIPlanPtr tombstone_plan = NULL;
static SPIPlanPtr delete_plan = NULL;
static SPIPlanPtr forget_plan = NULL;
static SPIPlanPtr lock_plan = NULL;
static SPIPlanPtr advance_plan = NULL;

bool
AggrRetentionEnabled(void)
{
	return aggr_retention > 0 || aggr_dedup_window != AGGR_DEDUP_FOREVER;
}

static int64
Int64Column(int column, bool *isnull)
{
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									   column, isnull));
}

/*
 * Runs one of the walks; returns how many rows it changed, moves *mark to
 * the last seq it changed, and tells whether the walk stopped for the limit.
 */
static int64
Walk(SPIPlanPtr plan, Datum *values, int64 *mark, bool *more)
{
	bool		isnull;
	int64		changed;
	int64		last;

	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "aggr expiry statement failed");
	changed = Int64Column(1, &isnull);
	last = Int64Column(2, &isnull);
	if (!isnull)
		*mark = Max(*mark, last);
	*more = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	return changed;
}

void
AggrExpireBatch(bool expire, TimestampTz cutoff, int limit, AggrExpiryResult *result)
{
	static Oid	expire_types[5] = {TIMESTAMPTZOID, INT8OID, INT8OID, INT4OID, TIMESTAMPTZOID};
	static Oid	forget_types[3] = {TIMESTAMPTZOID, INT8OID, INT4OID};
	static Oid	advance_types[3] = {INT8OID, INT8OID, TIMESTAMPTZOID};
	int64		expired_upto;
	int64		forgotten_upto;
	TimestampTz now;
	bool		isnull;
	Datum		marks[3];

	memset(result, 0, sizeof(*result));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	if (SPI_execute_plan(AggrPreparedPlan(&lock_plan,
										  "SELECT expired_upto, forgotten_upto FROM aggr.expiry "
										  "FOR UPDATE", 0, NULL),
						 NULL, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		ereport(ERROR,
				errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				errmsg("aggr.expiry has lost its row"),
				errhint("INSERT INTO aggr.expiry DEFAULT VALUES restores it."));
	expired_upto = Int64Column(1, &isnull);
	forgotten_upto = Int64Column(2, &isnull);
	now = GetCurrentTimestamp();

	if (expire)
	{
		bool		pending;
		Datum		values[5];
		bool		forget_at_once = (aggr_dedup_window == 0);
		SPIPlanPtr *plan = forget_at_once ? &delete_plan : &tombstone_plan;

		values[0] = TimestampTzGetDatum(cutoff);
		values[1] = Int64GetDatum(expired_upto);
		values[2] = Int64GetDatum(AggrEventsWatermark(&pending));
		values[3] = Int32GetDatum(limit);
		values[4] = TimestampTzGetDatum(now);
		if (*plan == NULL)
			(void) AggrPreparedPlan(plan, psprintf(expire_sql_template,
												   forget_at_once ? delete_events : make_tombstones),
									5, expire_types);
		result->expired = Walk(*plan, values, &expired_upto, &result->more_to_expire);
	}
	if (aggr_dedup_window != AGGR_DEDUP_FOREVER)
	{
		Datum		values[3];

		values[0] = TimestampTzGetDatum(now - (TimestampTz) aggr_dedup_window * USECS_PER_SEC);
		values[1] = Int64GetDatum(forgotten_upto);
		values[2] = Int32GetDatum(limit);
		result->forgotten = Walk(AggrPreparedPlan(&forget_plan, forget_sql, 3, forget_types),
								 values, &forgotten_upto, &result->more_to_forget);
	}

	marks[0] = Int64GetDatum(expired_upto);
	marks[1] = Int64GetDatum(forgotten_upto);
	marks[2] = TimestampTzGetDatum(now);
	if (SPI_execute_plan(AggrPreparedPlan(&advance_plan,
										  "UPDATE aggr.expiry SET expired_upto = $1, "
										  "forgotten_upto = $2, last_run = $3", 3, advance_types),
						 marks, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not advance aggr.expiry");
	SPI_finish();
}

/*
 * aggr_expire(older_than interval DEFAULT NULL, limit integer DEFAULT 10000)
 * -> bigint: batches in the caller's transaction until limit events are
 * expired or none is left; older_than NULL means aggr.retention (0: expire
 * nothing, but still forget per aggr.dedup_window).  Returns how many
 * events it expired.
 */
Datum
aggr_expire(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz cutoff = 0;
	bool		expire;
	int			limit;
	int64		expired = 0;
	int64		forgotten = 0;
	AggrExpiryResult batch;

	if (PG_ARGISNULL(1) || PG_GETARG_INT32(1) < 1 || PG_GETARG_INT32(1) > AGGR_EXPIRE_MAX_LIMIT)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("limit must be between 1 and %d", AGGR_EXPIRE_MAX_LIMIT),
				errdetail("The limit given was %s.",
						  PG_ARGISNULL(1) ? "null" : psprintf("%d", PG_GETARG_INT32(1))));
	limit = PG_GETARG_INT32(1);
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				errmsg("aggr_expire runs only in READ COMMITTED transactions"),
				errdetail("A snapshot that outlives a statement may miss events committed since, and expiry would pass them for good."),
				errhint("Run it in a READ COMMITTED transaction (the default)."));

	if (!PG_ARGISNULL(0))
	{
		cutoff = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
														 TimestampTzGetDatum(now),
														 PG_GETARG_DATUM(0)));
		if (cutoff > now)
			ereport(ERROR,
					errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					errmsg("older_than must not be negative"),
					errdetail("The interval given was %s.",
							  DatumGetCString(DirectFunctionCall1(interval_out,
																  PG_GETARG_DATUM(0)))));
		expire = true;
	}
	else
	{
		expire = aggr_retention > 0;
		cutoff = now - (TimestampTz) aggr_retention * USECS_PER_SEC;
	}

	do
	{
		AggrExpireBatch(expire && expired < limit, cutoff,
						Min(AGGR_EXPIRE_BATCH, Max(limit - expired, 1)), &batch);
		expired += batch.expired;
		forgotten += batch.forgotten;
	} while ((batch.more_to_expire && expired < limit) ||
			 (batch.more_to_forget && forgotten < limit));
	PG_RETURN_INT64(expired);
}
