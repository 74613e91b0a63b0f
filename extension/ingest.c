/*
 * ingest.c
 *		The ingest core, the one code path every event takes into the table,
 *		and the SQL entry points aggr_ingest(), aggr_publish() and its text
 *		and NDJSON forms.
 *
 * A batch is written by the bulk path (bulk.h) where it can be taken, else
 * by ONE statement that inserts the events in key order with ON CONFLICT DO
 * NOTHING (the first version of a key wins), counts what was stored from
 * the rows the insert RETURNS, and adds the per-topic counts to this
 * backend's counter shard, all in the caller's transaction.  Both insert in
 * key order and update counters last, in topic order, which keeps two
 * overlapping batches from deadlocking; a deadlock that still happens (say,
 * between two multi-batch transactions) is retried in a subtransaction, and
 * so is a bulk batch that met a concurrent writer of one of its keys, by the
 * statement.
 */
#include "postgres.h"

#include "aggr.h"
#include "broker.h"
#include "bulk.h"
#include "citus.h"
#include "ingest.h"
#include "watermark.h"
#include "../bgworker/slots.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#if PG_VERSION_NUM >= 170000
#include "storage/procnumber.h"
#define AGGR_MY_BACKEND_NUMBER MyProcNumber
#else
#include "storage/backendid.h"
#define AGGR_MY_BACKEND_NUMBER MyBackendId
#endif
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

PG_FUNCTION_INFO_V1(aggr_ingest);
PG_FUNCTION_INFO_V1(aggr_publish);
PG_FUNCTION_INFO_V1(aggr_publish_text);
PG_FUNCTION_INFO_V1(aggr_publish_ndjson);

/* How often a batch is tried when it loses a deadlock. */
#define AGGR_INGEST_ATTEMPTS 5

/* How often a batch is tried by the bulk path when it meets a concurrent writer. */
#define AGGR_BULK_ATTEMPTS 2

static const char *const ingest_sql =
"WITH batch AS ("
"  SELECT * FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[],"
"      $3::pg_catalog.timestamptz[], $4::pg_catalog.text[], $5::pg_catalog.jsonb[])"
"    WITH ORDINALITY AS b(topic, event_id, ts, source, payload, ord)"
"), stored AS ("
"  INSERT INTO aggr.events (topic, event_id, \"timestamp\", source, payload)"
"  SELECT topic, event_id, ts, source, payload FROM batch"
"  ORDER BY topic COLLATE \"C\", event_id COLLATE \"C\", ord"
"  ON CONFLICT (topic, event_id) DO NOTHING"
"  RETURNING topic"
"), per_topic AS ("
"  SELECT b.topic, b.received, coalesce(s.stored, 0) AS stored"
"  FROM (SELECT topic, pg_catalog.count(*) AS received FROM batch GROUP BY topic) b"
"  LEFT JOIN (SELECT topic, pg_catalog.count(*) AS stored FROM stored GROUP BY topic) s"
"    USING (topic)"
"), counted AS ("
"  INSERT INTO aggr.counters AS c"
"      (topic, shard, received, unique_processed, duplicate_dropped)"
"  SELECT topic, $6, received, stored, received - stored FROM per_topic"
"  ORDER BY topic COLLATE \"C\""
"  ON CONFLICT (topic, shard) DO UPDATE SET"
"    received = c.received + excluded.received,"
"    unique_processed = c.unique_processed + excluded.unique_processed,"
"    duplicate_dropped = c.duplicate_dropped + excluded.duplicate_dropped"
")"
"SELECT coalesce(pg_catalog.sum(stored), 0)::pg_catalog.int8 FROM per_topic";

static SPIPlanPtr ingest_plan = NULL;

/*
 * The saved plan of a statement, prepared on first use (inside SPI).  Saved
 * plans are revalidated by PostgreSQL after DDL, so they survive a
 * DROP/CREATE EXTENSION in the same session.  options: SPI_prepare_cursor's
 * (CURSOR_OPT_CUSTOM_PLAN: planned again for each execution).
 */
SPIPlanPtr
AggrPreparedPlanWith(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes, int options)
{
	if (*cache == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes, options);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s: %s", SPI_result_code_string(SPI_result), sql);
		SPI_keepplan(plan);
		*cache = plan;
	}
	return *cache;
}

SPIPlanPtr
AggrPreparedPlan(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	return AggrPreparedPlanWith(cache, sql, nargs, argtypes, 0);
}

/*
 * The same batch into a distributed aggr.events (citus.h).  Citus runs each
 * CTE of the statement as a sub-plan of its own, and one that is read twice
 * is shipped to the nodes as an intermediate result; so here the batch is
 * read once, by the insert, and each topic's received count comes from C
 * ($7, $8, in topic order).  aggr.counters stays on the coordinator: a local
 * upsert.  On a 1+2 cluster on one machine (one client, a batch per
 * transaction) it stored 33 k events/s where ingest_sql stored 25 k.
 */
static const char *const ingest_distributed_sql =
"WITH stored AS ("
"  INSERT INTO aggr.events (topic, event_id, \"timestamp\", source, payload)"
"  SELECT topic, event_id, ts, source, payload"
"  FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.timestamptz[],"
"      $4::pg_catalog.text[], $5::pg_catalog.jsonb[])"
"    WITH ORDINALITY AS b(topic, event_id, ts, source, payload, ord)"
"  ORDER BY topic COLLATE \"C\", event_id COLLATE \"C\", ord"
"  ON CONFLICT (topic, event_id) DO NOTHING"
"  RETURNING topic"
"), counted AS ("
"  INSERT INTO aggr.counters AS c"
"      (topic, shard, received, unique_processed, duplicate_dropped)"
"  SELECT r.topic, $6, r.received, coalesce(s.stored, 0), r.received - coalesce(s.stored, 0)"
"  FROM unnest($7::pg_catalog.text[], $8::pg_catalog.int8[]) AS r(topic, received)"
"  LEFT JOIN (SELECT topic, pg_catalog.count(*) AS stored FROM stored GROUP BY topic) s"
"    USING (topic)"
"  ORDER BY r.topic COLLATE \"C\""
"  ON CONFLICT (topic, shard) DO UPDATE SET"
"    received = c.received + excluded.received,"
"    unique_processed = c.unique_processed + excluded.unique_processed,"
"    duplicate_dropped = c.duplicate_dropped + excluded.duplicate_dropped"
")"
"SELECT pg_catalog.count(*) FROM stored";

static SPIPlanPtr ingest_distributed_plan = NULL;

static int
CompareTopics(const void *a, const void *b)
{
	return AggrCompareText(*(const Datum *) a, *(const Datum *) b);
}

/* Statement parameters: arrays of n text (or jsonb) and int8 Datums. */
static Datum
VarlenaArray(Datum *elements, int n, Oid type)
{
	return PointerGetDatum(construct_array(elements, n, type, -1, false, TYPALIGN_INT));
}

static Datum
Int8Array(Datum *elements, int n)
{
	return PointerGetDatum(construct_array(elements, n, INT8OID, sizeof(int64),
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Each topic of the batch once, in "C" order, and its count: $7 and $8 of
 * ingest_distributed_sql, and what CountFallback adds up.
 */
static void
CountTopics(const AggrBatch *batch, Datum *topics_array, Datum *counts_array)
{
	int			n = batch->nevents,
				ntopics = 0;
	Datum	   *topics = palloc(n * sizeof(Datum));
	Datum	   *counts = palloc(n * sizeof(Datum));

	memcpy(topics, batch->topics, n * sizeof(Datum));
	qsort(topics, n, sizeof(Datum), CompareTopics);
	for (int i = 0; i < n; i++)
	{
		if (ntopics > 0 && CompareTopics(&topics[i], &topics[ntopics - 1]) == 0)
			counts[ntopics - 1] = Int64GetDatum(DatumGetInt64(counts[ntopics - 1]) + 1);
		else
		{
			topics[ntopics] = topics[i];
			counts[ntopics++] = Int64GetDatum(1);
		}
	}
	*topics_array = VarlenaArray(topics, ntopics, TEXTOID);
	*counts_array = Int8Array(counts, ntopics);
}

/*
 * Runs the ingest statement once; returns how many events were stored.
 * topics, counts: CountTopics' arrays of the batch.
 */
static int64
RunIngestStatement(const AggrBatch *batch, Datum topics, Datum counts)
{
	static Oid	argtypes[8] = {TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
	TEXTARRAYOID, JSONBARRAYOID, INT2OID, TEXTARRAYOID, INT8ARRAYOID};
	Datum		values[8];
	int			n = batch->nevents;
	bool		isnull;
	int64		stored;
	int			ret;
	SPIPlanPtr	plan;

	values[0] = VarlenaArray(batch->topics, n, TEXTOID);
	values[1] = VarlenaArray(batch->event_ids, n, TEXTOID);
	values[2] = PointerGetDatum(construct_array(batch->timestamps, n, TIMESTAMPTZOID,
												sizeof(TimestampTz), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = VarlenaArray(batch->sources, n, TEXTOID);
	values[4] = VarlenaArray(batch->payloads, n, JSONBOID);
	values[5] = Int16GetDatum(AGGR_MY_BACKEND_NUMBER % AGGR_COUNTER_SHARDS);
	values[6] = topics;
	values[7] = counts;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (AggrCitusRoleNow().distributed)
		plan = AggrPreparedPlan(&ingest_distributed_plan, ingest_distributed_sql, 8, argtypes);
	else
		plan = AggrPreparedPlan(&ingest_plan, ingest_sql, 6, argtypes);
	ret = SPI_execute_plan(plan, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "ingest statement returned %d", ret);
	stored = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return stored;
}

/*
 * Runs fn(arg) in a subtransaction of its own.  Returns NULL when it
 * succeeded (its work joins the caller's transaction), or the error it
 * raised, copied into the caller's memory context, once the subtransaction
 * is rolled back: the caller re-throws it or carries on without that work.
 */
ErrorData *
AggrTrySubtransaction(void (*fn) (void *arg), void *arg)
{
	MemoryContext context = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile error = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(context);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(context);
		error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(context);
	CurrentResourceOwner = owner;
	return error;
}

/*
 * What the bulk path adds to this backend's counter shard ($4): each topic
 * ($1, in "C" order), how many events it received ($2) and stored ($3).
 */
static const char *const bulk_counters_sql =
"INSERT INTO aggr.counters AS c"
"    (topic, shard, received, unique_processed, duplicate_dropped)"
" SELECT t.topic, $4, t.received, t.stored, t.received - t.stored"
" FROM unnest($1::pg_catalog.text[], $2::pg_catalog.int8[], $3::pg_catalog.int8[])"
"   AS t(topic, received, stored)"
" ORDER BY t.topic COLLATE \"C\""
" ON CONFLICT (topic, shard) DO UPDATE SET"
"  received = c.received + excluded.received,"
"  unique_processed = c.unique_processed + excluded.unique_processed,"
"  duplicate_dropped = c.duplicate_dropped + excluded.duplicate_dropped";

static SPIPlanPtr bulk_counters_plan = NULL;

static void
CountBulkBatch(const AggrBulkCounts *counts)
{
	static Oid	argtypes[4] = {TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID, INT2OID};
	Datum		values[4];
	Datum	   *received = palloc(counts->ntopics * sizeof(Datum));
	Datum	   *stored = palloc(counts->ntopics * sizeof(Datum));
	int			ret;

	for (int t = 0; t < counts->ntopics; t++)
	{
		received[t] = Int64GetDatum(counts->received[t]);
		stored[t] = Int64GetDatum(counts->stored[t]);
	}
	values[0] = VarlenaArray(counts->topics, counts->ntopics, TEXTOID);
	values[1] = Int8Array(received, counts->ntopics);
	values[2] = Int8Array(stored, counts->ntopics);
	values[3] = Int16GetDatum(AGGR_MY_BACKEND_NUMBER % AGGR_COUNTER_SHARDS);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_plan(AggrPreparedPlan(&bulk_counters_plan, bulk_counters_sql, 4, argtypes),
						   values, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "counter statement returned %d", ret);
	SPI_finish();
}

/*
 * The statement's events go to aggr.counters.bulk_fallback too: $1, $2 are
 * each topic and its count, $3 this backend's shard, whose rows the
 * statement has just written (and locked).  A separate statement, so that
 * the statement itself stays as in every version, and runs on a 0.5 schema
 * (the library updated, ALTER EXTENSION not yet run), counting nothing.
 */
static const char *const fallback_counters_sql =
"UPDATE aggr.counters AS c SET bulk_fallback = c.bulk_fallback + t.received"
" FROM unnest($1::pg_catalog.text[], $2::pg_catalog.int8[]) AS t(topic, received)"
" WHERE c.topic = t.topic AND c.shard = $3";

static SPIPlanPtr fallback_counters_plan = NULL;

static void
CountFallback(Datum topics, Datum counts)
{
	static Oid	argtypes[3] = {TEXTARRAYOID, INT8ARRAYOID, INT2OID};
	Datum		values[3] = {topics, counts};
	Oid			counters = get_relname_relid("counters", get_namespace_oid("aggr", false));

	if (get_attnum(counters, "bulk_fallback") == InvalidAttrNumber)
		return;
	values[2] = Int16GetDatum(AGGR_MY_BACKEND_NUMBER % AGGR_COUNTER_SHARDS);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_plan(AggrPreparedPlan(&fallback_counters_plan, fallback_counters_sql, 3, argtypes),
						 values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "fallback counter statement failed");
	SPI_finish();
}

typedef struct IngestCall
{
	const AggrBatch *batch;
	bool		bulk;			/* try the bulk path first */
	bool		in_bulk;		/* an error came from inside the bulk path */
	int64		stored;
} IngestCall;

/*
 * Says, once per backend and reason, why batches take the statement: a
 * user who added a trigger to aggr.events sees why ingest slowed down.
 */
static void
LogFallback(const char *reason)
{
	static const char *logged[16];
	static int	nlogged = 0;
	bool		seen = false;

	for (int i = 0; i < nlogged; i++)
		seen |= (logged[i] == reason);
	ereport(seen ? DEBUG1 : LOG,
			errmsg("aggr: batches take the INSERT statement, not the bulk path: %s", reason));
	if (!seen && nlogged < lengthof(logged))
		logged[nlogged++] = reason;
}

static void
RunIngestCall(void *arg)
{
	IngestCall *call = arg;
	AggrBulkCounts counts;
	const char *reason = NULL;
	Datum		topics_array;
	Datum		counts_array;

	call->in_bulk = false;
	if (call->bulk)
	{
		bool		stored;

		if (AggrCitusRoleNow().distributed)
			reason = "aggr.events is distributed by Citus";
		else
		{
			call->in_bulk = true;
			stored = AggrBulkIngest(call->batch, &counts, &reason);
			call->in_bulk = false;
			if (stored)
			{
				CountBulkBatch(&counts);
				call->stored = counts.stored_total;
				return;
			}
		}
		LogFallback(reason);
	}
	CountTopics(call->batch, &topics_array, &counts_array);
	call->stored = RunIngestStatement(call->batch, topics_array, counts_array);
	CountFallback(topics_array, counts_array);
}

/*
 * Stores a validated batch and updates the counters, inside the current
 * transaction.  Deadlocks are retried in a subtransaction, which undoes the
 * lost attempt without touching the caller's earlier work; so is a bulk
 * batch that met a concurrent writer of its keys (bulk.h), by the statement.
 */
void
AggrIngestBatch(const AggrBatch *batch, AggrIngestResult *result)
{
	IngestCall	call = {batch, aggr_bulk_ingest, false, 0};
	int			bulk_conflicts = 0;

	AggrRequireNotCitusWorker("aggr ingests");
	PreventCommandIfReadOnly("INSERT INTO aggr.events");
	AggrHoldWatermark();
	for (int attempt = 1;; attempt++)
	{
		ErrorData  *error = AggrTrySubtransaction(RunIngestCall, &call);

		if (error == NULL)
			break;

		/*
		 * A bulk batch that met a concurrent writer of one of its keys: its
		 * next try's pre-check finds the other writer's row and waits for it;
		 * after two, the statement, whose speculative insertion waits where
		 * this path gives up.
		 */
		if (call.in_bulk && error->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE &&
			strcmp(error->message, AGGR_BULK_CONFLICT) == 0)
		{
			call.bulk = ++bulk_conflicts < AGGR_BULK_ATTEMPTS;
			ereport(DEBUG1,
					(errmsg("aggr: a batch of %d events again, by the %s: %s", batch->nevents,
							call.bulk ? "bulk path" : "INSERT statement", error->message)));
			FreeErrorData(error);
			attempt--;
			continue;
		}

		/*
		 * Under REPEATABLE READ or SERIALIZABLE the snapshot stays, so a
		 * serialization failure would only repeat: the caller retries.
		 */
		if (attempt < AGGR_INGEST_ATTEMPTS &&
			(error->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
			 (error->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE &&
			  !IsolationUsesXactSnapshot())))
		{
			ereport(LOG,
					(errmsg("aggr: retrying a batch of %d events after: %s",
							batch->nevents, error->message)));
			FreeErrorData(error);
			continue;
		}
		ReThrowError(error);
	}

	if (call.stored > 0)
		AggrNotifyEventsStored();
	result->received = batch->nevents;
	result->unique = call.stored;
	result->duplicates = batch->nevents - call.stored;
}

/*
 * The answer of aggr_ingest (accepted < 0) and aggr_publish: direct mode
 * reports what was stored, queue mode only what was accepted.
 */
static Jsonb *
AggrIngestResultJsonb(const AggrIngestResult *result, int64 accepted, bool queued)
{
	char	   *json;

	if (accepted < 0)
		json = psprintf("{\"received\": " INT64_FORMAT ", \"unique\": " INT64_FORMAT
						", \"duplicates\": " INT64_FORMAT "}",
						result->received, result->unique, result->duplicates);
	else if (queued)
		json = psprintf("{\"accepted\": " INT64_FORMAT ", \"worker_count\": %d}",
						accepted, AggrLiveWorkerCount());
	else
		json = psprintf("{\"accepted\": " INT64_FORMAT ", \"worker_count\": %d, \"unique\": "
						INT64_FORMAT ", \"duplicates\": " INT64_FORMAT "}",
						accepted, AggrLiveWorkerCount(), result->unique,
						result->duplicates);
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/* aggr_ingest(jsonb) -> jsonb: validate and store, in the caller's transaction. */
Datum
aggr_ingest(PG_FUNCTION_ARGS)
{
	Jsonb	   *request = PG_GETARG_JSONB_P(0);
	AggrBatch	batch;
	AggrIngestResult result;

	AggrValidateRequest(request, &batch, true);
	AggrIngestBatch(&batch, &result);
	PG_RETURN_JSONB_P(AggrIngestResultJsonb(&result, -1, false));
}

/*
 * Queued events are stored where the consumers ingest, aggr.database: a
 * publish in another database would be acknowledged and never be seen in
 * this one (or never stored at all, where aggr is not installed there).
 */
static void
RequireConsumersDatabase(void)
{
	static bool consumers_here = false; /* a backend keeps its database */
	char	   *here;

	if (consumers_here)
		return;
	here = get_database_name(MyDatabaseId);
	consumers_here = here != NULL && strcmp(here, aggr_database) == 0;
	if (!consumers_here)
		ereport(ERROR,
				errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				errmsg("broker mode queues events for the consumers of database \"%s\" (aggr.database), not this database \"%s\"",
					   aggr_database, here ? here : "?"),
				errdetail("Nothing was queued: the events would be stored there, not here."),
				errhint("Publish in database \"%s\", or set aggr.database = '%s' and restart the server.",
						aggr_database, here ? here : "?"));
}

/*
 * The publish path: validate, then either queue the events on the broker
 * (aggr.broker_url set) or ingest them directly.  json is the request's
 * text as sent, when the caller has it (an envelope wraps it), or NULL.
 */
static Jsonb *
Publish(Jsonb *request, const char *json, int len)
{
	AggrBatch	batch;
	AggrIngestResult result = {0};

	AggrRequireNotCitusWorker("aggr ingests");
	if (AggrBrokerWantedWithoutPreload())
		AggrRequirePreload("broker mode");
	AggrValidateRequest(request, &batch, !AggrBrokerConfigured());
	if (AggrBrokerConfigured())
	{
		RequireConsumersDatabase();
		AggrEnqueueBatch(request, batch.nevents, json, len);
		return AggrIngestResultJsonb(&result, batch.nevents, true);
	}
	AggrIngestBatch(&batch, &result);

	/*
	 * The answer is an acknowledgement: the commit that follows is flushed to
	 * disk even where synchronous_commit is off (the server's, the role's or
	 * the session's setting).
	 */
	ForceSyncCommit();
	return AggrIngestResultJsonb(&result, batch.nevents, false);
}

/* aggr_publish(jsonb) -> jsonb */
Datum
aggr_publish(PG_FUNCTION_ARGS)
{
	PG_RETURN_JSONB_P(Publish(PG_GETARG_JSONB_P(0), NULL, 0));
}

/*
 * aggr_publish_text(text) -> jsonb: aggr_publish of JSON text, parsed here
 * (same errors as a jsonb cast).  What the sidecar calls: in broker mode the
 * text of a request of several events is queued as it came, instead of being
 * printed again from the parsed form.
 */
Datum
aggr_publish_text(PG_FUNCTION_ARGS)
{
	text	   *body = PG_GETARG_TEXT_PP(0);
	char	   *json = text_to_cstring(body);
	Jsonb	   *request = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));

	PG_RETURN_JSONB_P(Publish(request, json, VARSIZE_ANY_EXHDR(body)));
}

/*
 * One NDJSON line as jsonb.  A parse error is raised again with the line's
 * number first, so the caller (a log shipper's operator) can find it.
 */
static Jsonb *
ParseNdjsonLine(const char *line, int len, int number)
{
	MemoryContext context = CurrentMemoryContext;
	char	   *copy = pnstrdup(line, len);
	Jsonb	   *value = NULL;

	PG_TRY();
	{
		value = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(copy)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				errcode(edata->sqlerrcode),
				errmsg("line %d: %s", number, edata->message),
				edata->detail ? errdetail("%s", edata->detail) : 0);
	}
	PG_END_TRY();
	pfree(copy);
	return value;
}

/*
 * aggr_publish_ndjson(text) -> jsonb: aggr_publish of newline-delimited JSON,
 * one event per line, as log shippers send it (Vector's and Fluent Bit's http
 * outputs).  Line k (from 1) is event k - 1 of the request, so a validation
 * error's "event N" is line N + 1.  Lines may end in CRLF; a line that is
 * empty is an error, except after the last event.
 */
Datum
aggr_publish_ndjson(PG_FUNCTION_ARGS)
{
	text	   *body = PG_GETARG_TEXT_PP(0);
	const char *p = VARDATA_ANY(body);
	const char *end = p + VARSIZE_ANY_EXHDR(body);
	JsonbParseState *state = NULL;
	int			nlines = 0;
	int			number = 0;

	/* the trailing newlines end the last line; they are no lines of their own */
	while (end > p && (end[-1] == '\n' || end[-1] == '\r'))
		end--;
	for (const char *q = p; q < end; q++)
		nlines += (*q == '\n');
	if (end > p && nlines + 1 > aggr_max_request_events)
		ereport(ERROR,
				errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				errmsg("request holds %d events, more than aggr.max_request_events (%d)",
					   nlines + 1, aggr_max_request_events),
				errhint("Split the request into smaller batches."));

	pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
	while (p < end)
	{
		const char *eol = memchr(p, '\n', end - p);
		int			len = (eol ? eol : end) - p;
		JsonbValue	element;
		Jsonb	   *value;

		number++;
		if (len > 0 && p[len - 1] == '\r')
			len--;
		if (len == 0)
			ereport(ERROR,
					errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					errmsg("line %d is empty", number),
					errdetail("NDJSON holds one event per line."));
		value = ParseNdjsonLine(p, len, number);
		if (JB_ROOT_IS_SCALAR(value))
			(void) JsonbExtractScalar(&value->root, &element);	/* validation refuses it */
		else
		{
			element.type = jbvBinary;
			element.val.binary.data = &value->root;
			element.val.binary.len = VARSIZE(value) - VARHDRSZ;
		}
		pushJsonbValue(&state, WJB_ELEM, &element);
		p = eol ? eol + 1 : end;
	}
	PG_RETURN_JSONB_P(Publish(JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_ARRAY, NULL)),
							  NULL, 0));
}
