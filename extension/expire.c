/*
 * expire.c
 *		Retention: the expiry batch (expire.h states its protocol) and the SQL
 *		entry point aggr_expire().
 */
#include "postgres.h"

#include "aggr.h"
#include "citus.h"
#include "expire.h"
#include "ingest.h"
#include "watermark.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(aggr_expire);

/* Most events one aggr_expire() call expires: it runs in one transaction. */
#define AGGR_EXPIRE_MAX_LIMIT 1000000

/*
 * The two walks share their shape.  "todo" lists the rows (row_id, seq, old)
 * after the mark $2 up to $3 in seq order, at most $4; "doomed" is the prefix
 * of old ones; "changed" is what was done to them (RETURNING topic, seq, and
 * whether the row counts as the walk's: a tombstone deleted by the expiry
 * is not an expired event).  The answer: how many counted; the new mark, the
 * last seq up to which every row of the range that will ever be walked was
 * changed: below the first skipped row (another transaction changed it
 * meanwhile; it is rechecked by its own conditions), else below the first
 * young one, else $3 when todo held the whole range, else todo's last; and
 * whether todo was full and all old (call again).  So the mark passes rows the walk does not
 * take (tombstones, for expiry), and the next walk does not read them again.
 *
 * The walks read a table that may have grown from empty since they were
 * planned, or never been analyzed: they are planned again at each execution
 * (a fraction of a batch), and with the scans they must use (PlanLikeABatch).
 */
#define WALK_DOOMED \
"), doomed AS (" \
"  SELECT %2$s FROM todo" \
"  WHERE seq < coalesce((SELECT pg_catalog.min(seq) FROM todo WHERE NOT old)," \
"                       9223372036854775807)"
#define WALK_ANSWER \
"), skipped AS (" \
"  SELECT pg_catalog.min(d.seq) AS seq FROM doomed d" \
"  WHERE d.seq NOT IN (SELECT c.seq FROM changed c)" \
")" \
"SELECT (SELECT pg_catalog.count(*) FILTER (WHERE counts) FROM changed)," \
"  coalesce((SELECT seq - 1 FROM skipped)," \
"           (SELECT pg_catalog.min(seq) - 1 FROM todo WHERE NOT old)," \
"           (SELECT CASE WHEN pg_catalog.count(*) < $4 THEN $3 ELSE pg_catalog.max(seq) END FROM todo))," \
"  coalesce((SELECT pg_catalog.count(*) = $4 AND pg_catalog.bool_and(old) FROM todo), false)"

/*
 * How the walks name a row (%1$s in todo, %2$s in doomed) and find it again
 * (%3$s): by its TID, or, in a distributed aggr.events (citus.h), where a
 * TID is only a shard's, by its key.
 */
typedef struct RowNaming
{
	const char *columns;
	const char *doomed_columns;
	const char *match;
} RowNaming;

static const RowNaming by_tid = {
	"e.ctid AS row_id", "row_id, seq",
	"e.ctid = ANY (ARRAY(SELECT row_id FROM doomed))"
};
static const RowNaming by_key = {
	"e.topic AS row_topic, e.event_id AS row_event_id", "row_topic, row_event_id, seq",
	"(e.topic, e.event_id) IN (SELECT row_topic, row_event_id FROM doomed)"
};

/*
 * Expiry: the events after expired_upto ($2) up to the watermark ($3) that
 * %3$s walks, old when %4$s; the doomed ones are made tombstones at $5 or
 * deleted (%5$s), and the live ones among them counted on shard -1.  With
 * tombstones the walk passes the tombstones it meets; deleting, it deletes
 * them too (tombstones of an earlier window, or restored under marks of 0),
 * so that every row up to its mark is gone and forgotten_upto may follow.
 */
static const char *const expire_sql_template =
"WITH todo AS ("
"  SELECT %1$s, e.seq, %4$s AS old FROM aggr.events e"
"  WHERE e.seq > $2 AND e.seq <= $3 %3$s"
"  ORDER BY e.seq LIMIT $4"
WALK_DOOMED
"), changed AS ("
"  %5$s"
"), counted AS ("
"  INSERT INTO aggr.counters AS c (topic, shard, expired)"
"  SELECT topic, -1, pg_catalog.count(*) FROM changed WHERE counts"
"  GROUP BY topic ORDER BY topic COLLATE \"C\""
"  ON CONFLICT (topic, shard) DO UPDATE SET expired = c.expired + excluded.expired"
WALK_ANSWER;

typedef struct ExpiryMode
{
	const char *walked;			/* %3$s: which rows todo lists */
	const char *old;			/* %4$s */
	const char *change;			/* %5$s: with %s, the row match */
} ExpiryMode;

static const ExpiryMode make_tombstones = {
	"AND e.expired_at IS NULL",
	"e.ingested_at < $1",
	"UPDATE aggr.events e SET payload = '{}', expired_at = $5"
	"  WHERE %s AND e.expired_at IS NULL AND e.ingested_at < $1"
	"  RETURNING e.topic, e.seq, true AS counts"
};
static const ExpiryMode delete_events = {
	"",
	"(e.expired_at IS NOT NULL OR e.ingested_at < $1)",
	"DELETE FROM aggr.events e"
	"  WHERE %s AND (e.expired_at IS NOT NULL OR e.ingested_at < $1)"
	"  RETURNING e.topic, e.seq, e.expired_at IS NULL AS counts"
};

/*
 * Forgetting: the tombstones after forgotten_upto ($2) up to expired_upto
 * ($3), old when expired before $1; the doomed ones are deleted.
 */
static const char *const forget_sql_template =
"WITH todo AS ("
"  SELECT %1$s, e.seq, e.expired_at < $1 AS old FROM aggr.events e"
"  WHERE e.seq > $2 AND e.seq <= $3 AND e.expired_at IS NOT NULL"
"  ORDER BY e.seq LIMIT $4"
WALK_DOOMED
"), changed AS ("
"  DELETE FROM aggr.events e WHERE %3$s"
"    AND e.expired_at IS NOT NULL AND e.expired_at < $1"
"  RETURNING e.topic, e.seq, true AS counts"
WALK_ANSWER;

/*
 * Whether a walk has work, read without a lock: the first row after
 * expired_upto ($3, up to the watermark $4) is a tombstone (the mark can
 * pass it: after a restore the marks start at 0) or was ingested before $1,
 * or the first tombstone after forgotten_upto ($5) expired before $2.  So an idle
 * expiry writes nothing (no transaction id, no WAL).  The marks come as
 * parameters, read just before: joined to aggr.expiry, which has no
 * statistics, the estimate made it look costly enough for JIT (0.2 s).
 */
static const char *const due_sql =
"SELECT coalesce((SELECT e.expired_at IS NOT NULL OR e.ingested_at < $1 FROM aggr.events e"
"                 WHERE e.seq > $3 AND e.seq <= $4"
"                 ORDER BY e.seq LIMIT 1), false)"
"    OR coalesce((SELECT e.expired_at < $2 FROM aggr.events e"
"                 WHERE e.seq > $5 AND e.seq <= $3 AND e.expired_at IS NOT NULL"
"                 ORDER BY e.seq LIMIT 1), false)";

/* the walks' plans, [1]: for a distributed aggr.events */
static SPIPlanPtr tombstone_plan[2];
static SPIPlanPtr delete_plan[2];
static SPIPlanPtr forget_plan[2];
static SPIPlanPtr due_plan = NULL;
static SPIPlanPtr marks_plan = NULL;
static SPIPlanPtr lock_plan = NULL;
static SPIPlanPtr lock_nowait_plan = NULL;
static SPIPlanPtr advance_plan = NULL;

bool
AggrRetentionEnabled(void)
{
	return aggr_retention > 0 || aggr_dedup_window != AGGR_DEDUP_FOREVER;
}

TimestampTz
AggrRetentionCutoff(TimestampTz now)
{
	return aggr_retention > 0 ? now - (TimestampTz) aggr_retention * USECS_PER_SEC : DT_NOBEGIN;
}

static Datum
Column(int column, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, column, isnull);
}

/*
 * Runs one of the walks; returns how many rows it changed, moves *mark, and
 * tells whether the walk stopped for the limit.
 */
static int64
Walk(SPIPlanPtr plan, Datum *values, int64 *mark, bool *more)
{
	bool		isnull;
	int64		changed;
	int64		last;

	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "aggr expiry statement failed");
	changed = DatumGetInt64(Column(1, &isnull));
	last = DatumGetInt64(Column(2, &isnull));
	if (!isnull)
		*mark = Max(*mark, last);
	*more = DatumGetBool(Column(3, &isnull));
	return changed;
}

/*
 * For the rest of the batch, plan as a batch must run: by an index in seq
 * order, then by TID.  Without statistics (a table never analyzed, or
 * truncated since) the planner takes a range of seq for a few rows, and
 * sorts a bitmap scan of the whole range for each batch; the join to
 * aggr.expiry looked costly enough for JIT.  Returns the level to pass to
 * AtEOXact_GUC (an error resets them with the transaction).
 */
static int
PlanLikeABatch(void)
{
	static const char *const off[] = {"enable_seqscan", "enable_bitmapscan", "jit"};
	int			level = NewGUCNestLevel();

	for (int i = 0; i < lengthof(off); i++)
		(void) set_config_option(off[i], "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * The expiry worker's batch on a distributed aggr.events: the nodes get its
 * lock_timeout too, as a SET LOCAL that Citus sends them (in a transaction
 * block, which the worker opens).  Otherwise a row locked on a shard would
 * hold the batch, and aggr.expiry's row with it, as long as the lock.
 */
static void
PropagateToShards(void)
{
	const char *const sets[] = {
		"SET LOCAL citus.propagate_set_commands = 'local'",
		psprintf("SET LOCAL lock_timeout = %s",
				 quote_literal_cstr(GetConfigOption("lock_timeout", false, false))),
	};

	for (int i = 0; i < lengthof(sets); i++)
		if (SPI_execute(sets[i], false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "aggr expiry: could not run %s", sets[i]);
}

static void
MissingRow(void)
{
	ereport(ERROR,
			errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			errmsg("aggr.expiry has lost its row"),
			errhint("INSERT INTO aggr.expiry DEFAULT VALUES restores it."));
}

void
AggrExpireBatch(TimestampTz expire_before, int expire_limit, bool wait,
				AggrExpiryResult *result)
{
	static Oid	walk_types[5] = {TIMESTAMPTZOID, INT8OID, INT8OID, INT4OID, TIMESTAMPTZOID};
	static Oid	due_types[5] = {TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID};
	static Oid	advance_types[3] = {INT8OID, INT8OID, TIMESTAMPTZOID};
	bool		forget_at_once = (aggr_dedup_window == 0);
	bool		pending;
	int64		upto = AggrEventsWatermark(&pending);
	int64		last = AggrEventsLastSeq(); /* read again under the lock */
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz forget_before = DT_NOBEGIN;
	int64		expired_upto;
	int64		forgotten_upto;
	int64		was_expired_upto;
	int64		was_forgotten_upto;
	bool		isnull;
	Datum		values[5];
	int			gucs;
	bool		distributed = AggrCitusRoleNow().distributed;
	const RowNaming *rows = distributed ? &by_key : &by_tid;
	const ExpiryMode *mode = forget_at_once ? &delete_events : &make_tombstones;
	SPIPlanPtr *expire_plan = forget_at_once ? &delete_plan[distributed] : &tombstone_plan[distributed];
	int64		walked_from;

	memset(result, 0, sizeof(*result));
	if (expire_limit <= 0)
		expire_before = DT_NOBEGIN;
	if (aggr_dedup_window != AGGR_DEDUP_FOREVER)
		forget_before = now - (TimestampTz) aggr_dedup_window * USECS_PER_SEC;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (distributed && !wait)
		PropagateToShards();
	gucs = PlanLikeABatch();

	if (SPI_execute_plan(AggrPreparedPlan(&marks_plan, "SELECT expired_upto, forgotten_upto "
										  "FROM aggr.expiry", 0, NULL),
						 NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "aggr expiry: could not read aggr.expiry");
	if (SPI_processed != 1)
		MissingRow();
	expired_upto = DatumGetInt64(Column(1, &isnull));
	values[0] = TimestampTzGetDatum(expire_before);
	values[1] = TimestampTzGetDatum(forget_before);
	values[2] = Int64GetDatum(expired_upto);
	values[3] = Int64GetDatum(upto);
	values[4] = Column(2, &isnull);
	if (SPI_execute_plan(AggrPreparedPlanWith(&due_plan, due_sql, 5, due_types,
											  CURSOR_OPT_CUSTOM_PLAN),
						 values, NULL, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "aggr expiry: could not tell whether expiry is due");

	/*
	 * marks above the sequence: it was restarted (TRUNCATE ... RESTART
	 * IDENTITY)
	 */
	if (!DatumGetBool(Column(1, &isnull)) && expired_upto <= last)
		goto done;

	/* expiries run one at a time; the worker does not wait for a caller's */
	if (SPI_execute_plan(wait ?
						 AggrPreparedPlan(&lock_plan, "SELECT expired_upto, forgotten_upto "
										  "FROM aggr.expiry FOR UPDATE", 0, NULL) :
						 AggrPreparedPlan(&lock_nowait_plan, "SELECT expired_upto, forgotten_upto "
										  "FROM aggr.expiry FOR UPDATE SKIP LOCKED", 0, NULL),
						 NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "aggr expiry: could not lock aggr.expiry");
	if (SPI_processed != 1)
	{
		if (wait)
			MissingRow();
		result->busy = true;
		goto done;
	}
	was_expired_upto = expired_upto = DatumGetInt64(Column(1, &isnull));
	was_forgotten_upto = forgotten_upto = DatumGetInt64(Column(2, &isnull));
	/* the time of the expiry is once it holds the lock, not before a wait */
	now = GetCurrentTimestamp();
	if (aggr_dedup_window != AGGR_DEDUP_FOREVER)
		forget_before = now - (TimestampTz) aggr_dedup_window * USECS_PER_SEC;
	/* a committed mark above the sequence's value now: it went back */
	last = AggrEventsLastSeq();
	if (expired_upto > last)
	{
		ereport(LOG,
				(errmsg("aggr expiry: aggr.events_seq_seq is at " INT64_FORMAT
						", below the " INT64_FORMAT " expiry had got to; starting again from 0",
						last, expired_upto)));
		expired_upto = forgotten_upto = 0;
	}

	/*
	 * The expiry walk runs even with nothing to expire (retention off, or
	 * this call's limit reached): with nothing old it only moves the mark
	 * over the tombstones before the first live event, which the forget walk
	 * goes no further than (after a restore the marks start at 0 below them).
	 */
	values[2] = Int64GetDatum(upto);
	values[3] = Int32GetDatum(Max(expire_limit, 1));
	values[4] = TimestampTzGetDatum(now);
	if (*expire_plan == NULL)
		(void) AggrPreparedPlanWith(expire_plan,
									psprintf(expire_sql_template, rows->columns, rows->doomed_columns,
											 mode->walked, mode->old,
											 psprintf(mode->change, rows->match)),
									5, walk_types, CURSOR_OPT_CUSTOM_PLAN);
	values[0] = TimestampTzGetDatum(expire_before);
	values[1] = Int64GetDatum(expired_upto);
	walked_from = expired_upto;
	result->expired = Walk(*expire_plan, values, &expired_upto, &result->more_to_expire);
	/* deleted, tombstones too, with none left below: nothing to forget */
	if (forget_at_once && forgotten_upto == walked_from)
		forgotten_upto = expired_upto;
	if (forget_before != DT_NOBEGIN && forgotten_upto < expired_upto)
	{
		values[0] = TimestampTzGetDatum(forget_before);
		values[1] = Int64GetDatum(forgotten_upto);
		values[2] = Int64GetDatum(expired_upto);
		values[3] = Int32GetDatum(AGGR_EXPIRE_BATCH);
		if (forget_plan[distributed] == NULL)
			(void) AggrPreparedPlanWith(&forget_plan[distributed],
										psprintf(forget_sql_template, rows->columns,
												 rows->doomed_columns, rows->match),
										5, walk_types, CURSOR_OPT_CUSTOM_PLAN);
		result->forgotten = Walk(forget_plan[distributed], values, &forgotten_upto,
								 &result->more_to_forget);
	}

	if (expired_upto != was_expired_upto || forgotten_upto != was_forgotten_upto)
	{
		values[0] = Int64GetDatum(expired_upto);
		values[1] = Int64GetDatum(forgotten_upto);
		values[2] = TimestampTzGetDatum(now);
		if (SPI_execute_plan(AggrPreparedPlan(&advance_plan,
											  "UPDATE aggr.expiry SET expired_upto = $1, "
											  "forgotten_upto = $2, last_run = $3", 3, advance_types),
							 values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not advance aggr.expiry");
	}
done:
	AtEOXact_GUC(true, gucs);
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
	TimestampTz cutoff = AggrRetentionCutoff(now);
	int			limit;
	int64		expired = 0;
	int64		forgotten = 0;
	AggrExpiryResult batch;
	MemoryContext batch_context;
	MemoryContext caller_context;

	if (PG_ARGISNULL(1) || PG_GETARG_INT32(1) < 1 || PG_GETARG_INT32(1) > AGGR_EXPIRE_MAX_LIMIT)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("limit must be between 1 and %d", AGGR_EXPIRE_MAX_LIMIT),
				errdetail("The limit given was %s.",
						  PG_ARGISNULL(1) ? "null" : psprintf("%d", PG_GETARG_INT32(1))));
	limit = PG_GETARG_INT32(1);
	if (RecoveryInProgress())
		ereport(ERROR,
				errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				errmsg("aggr_expire runs only on the primary"),
				errdetail("A standby is read-only; expiry on the primary reaches it by replication."));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				errmsg("aggr_expire runs only in READ COMMITTED transactions"),
				errdetail("A snapshot that outlives a statement may miss events committed since, and expiry would pass them for good."),
				errhint("Run it in a READ COMMITTED transaction (the default)."));
	AggrRequireNotCitusWorker("aggr expires events");

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
	}

	/* what a batch allocates (the lock table's copy) goes with it */
	batch_context = AllocSetContextCreate(CurrentMemoryContext, "aggr_expire batch",
										  ALLOCSET_DEFAULT_SIZES);
	caller_context = MemoryContextSwitchTo(batch_context);
	do
	{
		MemoryContextReset(batch_context);
		AggrExpireBatch(cutoff, (int) Min(AGGR_EXPIRE_BATCH, limit - expired),
						true, &batch);
		expired += batch.expired;
		forgotten += batch.forgotten;
	} while ((batch.more_to_expire && expired < limit) ||
			 (batch.more_to_forget && forgotten < limit));
	MemoryContextSwitchTo(caller_context);
	MemoryContextDelete(batch_context);
	PG_RETURN_INT64(expired);
}
