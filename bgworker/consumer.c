/*
 * consumer.c
 *		The consumer background workers: take a batch of elements from the
 *		Redis queue, ingest it through the ingest core in one transaction,
 *		then acknowledge it.
 *
 * The loop of consumer k (the queue protocol itself is queue.c's):
 * 1. Take.  One script acknowledges k's last committed batch and moves the
 *    next one, at most aggr.batch_size events and aggr.batch_bytes bytes,
 *    into k's processing list under a fresh token.  When the queue is empty
 *    the consumer waits for an element, on the socket and the latch, so
 *    SIGTERM and SIGHUP are honoured at once.  A crash at any instant leaves
 *    every element in Redis.
 * 2. Ingest.  One transaction stores the events, dead-letters the elements
 *    that are not valid events into aggr.rejected, and records the token as
 *    aggr.consumers.last_token of slot k.  It commits with synchronous_commit
 *    on: an acknowledgement must never outlive a lost commit.
 * 3. Acknowledge, with the next take: one round trip per batch.
 * A batch that was taken but not acknowledged (the consumer died, or lost
 * Redis) is replayed as it is; if its token was committed, it is only
 * acknowledged, so a redelivery never counts an event twice.  A replay that
 * fails for a reason that is not transient (a data error, a limit) is tried
 * once more element by element, each in a subtransaction, so only what
 * fails alone is dead-lettered and the queue moves on; transient failures
 * (a restart, a deadlock, the broker down) are retried with backoff and
 * lose nothing.  Consumer 1 also adopts the lists of slots above
 * aggr.worker_count, left behind when the pool shrank.
 *
 * Memory: everything of one iteration lives in the loop context, which is
 * reset each time; after a commit or an abort (which leave
 * CurrentMemoryContext elsewhere) the caller's context is restored.
 */
#include "postgres.h"

#include "../extension/aggr.h"
#include "../extension/citus.h"
#include "../extension/ingest.h"
#include "../extension/queue.h"
#include "consumer.h"
#include "slots.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PGDLLEXPORT void AggrConsumerMain(Datum main_arg);

/* Longest wait between retries after a failure (aggr.test_backoff: shorter). */
#define AGGR_MAX_BACKOFF_MS 5000

/*
 * A batch handed out this often without committing, for reasons that were
 * not transient or not seen (a crash of the whole server, say), is ingested
 * element by element; handed out AGGR_DEAD_ATTEMPTS times, its elements are
 * dead-lettered as they are, unparsed (the parse may be what kills us).
 */
#define AGGR_WHOLE_ATTEMPTS 3
#define AGGR_DEAD_ATTEMPTS 10

static int	my_slot;			/* 1-based */
static AggrQueue *queue = NULL;
static bool broker_was_down = false;
static int	backoff_ms = 0;

/*
 * My last committed batch, acknowledged by the next take (one round trip
 * per batch instead of two).  Lives in TopMemoryContext.
 */
static char *unacked_token = NULL;

/* consumer 1 has yet to adopt the lists of slots beyond the pool */
static bool adopt_pending = false;

/* A batch, by its slot and token. */
typedef struct BatchRef
{
	int			slot;			/* 0: none */
	char	   *token;
} BatchRef;

/*
 * The batch being ingested (its token in the loop context); the one that
 * last failed for a reason that is not transient, whose replay goes element
 * by element; the one whose last attempt failed for a transient reason,
 * which the next take does not count as an attempt (both remembered in
 * TopMemoryContext).
 */
static BatchRef ingesting;
static BatchRef failed_for_good;
static BatchRef failed_transiently;

/* the last refusal of the broker that was logged, so each is logged once */
static char *logged_refusal = NULL;

static void
OnExit(int code, Datum arg)
{
	AggrQueueClose(queue);
	queue = NULL;
	AggrSlotExited(my_slot);
}

/* Logs a broker failure once per outage, drops the connection. */
static void
BrokerFailed(const char *what)
{
	if (!broker_was_down)
		ereport(LOG,
				(errmsg("aggr consumer %d: lost the broker: %s", my_slot, what),
				 errdetail("Taken elements stay in Redis; retrying with backoff.")));
	broker_was_down = true;
	adopt_pending = (my_slot == 1);
	AggrQueueClose(queue);
	queue = NULL;
	AggrSlotBrokerUp(my_slot, false);
}

/*
 * Logs an error answer of Redis (a script error, an ACL refusal, a key of
 * the wrong type) as what it is: the broker is up, the connection stays,
 * and the consumer retries with backoff.
 */
static void
BrokerRefused(const char *what)
{
	if (logged_refusal == NULL || strcmp(logged_refusal, what) != 0)
	{
		ereport(LOG,
				(errmsg("aggr consumer %d: the broker refused the queue script: %s", my_slot, what),
				 errdetail("This is an error of the script or of Redis's configuration (ACL, key types), not an outage; taken elements stay in Redis; retrying with backoff.")));
		if (logged_refusal)
			pfree(logged_refusal);
		logged_refusal = MemoryContextStrdup(TopMemoryContext, what);
	}
}

/* Handles a queue call's failure; true when it succeeded. */
static bool
QueueCallOk(AggrQueueStatus status, const char *error)
{
	if (status == AGGR_QUEUE_OK)
		return true;
	if (status == AGGR_QUEUE_DOWN || status == AGGR_QUEUE_UNKNOWN)
		BrokerFailed(error);
	else
		BrokerRefused(error);
	return false;
}

/* Applies a reload (SIGHUP) before the next batch, not after it. */
static void
ReloadIfPending(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* What set the latch during the wait for an element: SIGTERM or SIGHUP. */
static void
HandleLatch(void)
{
	CHECK_FOR_INTERRUPTS();
	ReloadIfPending();
}

/*
 * A cancel (pg_cancel_backend) between batches has nothing to cancel; outside
 * the loop's error handler it would end the worker.
 */
static void
IgnoreCancel(void)
{
	QueryCancelPending = false;
}

/* Sleeps on the latch, doubling the backoff up to its cap. */
static void
Backoff(void)
{
	int			cap = aggr_test_backoff > 0 ? aggr_test_backoff : AGGR_MAX_BACKOFF_MS;

	backoff_ms = Min(Max(backoff_ms * 2, Min(100, cap)), cap);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 backoff_ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	IgnoreCancel();
	CHECK_FOR_INTERRUPTS();
}

static bool
EnsureQueue(void)
{
	char	   *error;

	if (queue != NULL)
		return true;
	queue = AggrQueueConnect(true, &error);
	if (queue == NULL)
	{
		BrokerFailed(error);
		return false;
	}
	if (broker_was_down)
		ereport(LOG, (errmsg("aggr consumer %d: broker reachable again", my_slot)));
	broker_was_down = false;
	AggrSlotBrokerUp(my_slot, true);
	return true;
}

typedef struct Rejects
{
	MemoryContext context;		/* where they are kept */
	int			n;
	int			capacity;
	Datum	   *raw;			/* bytea */
	Datum	   *reason;			/* text */
} Rejects;

static void
AddReject(Rejects *rejects, const char *raw, int len, const char *reason)
{
	MemoryContext old = MemoryContextSwitchTo(rejects->context);
	bytea	   *b = palloc(VARHDRSZ + len);

	if (rejects->n == rejects->capacity)
	{
		rejects->capacity *= 2;
		rejects->raw = repalloc(rejects->raw, sizeof(Datum) * rejects->capacity);
		rejects->reason = repalloc(rejects->reason, sizeof(Datum) * rejects->capacity);
	}
	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), raw, len);
	rejects->raw[rejects->n] = PointerGetDatum(b);
	rejects->reason[rejects->n] = PointerGetDatum(cstring_to_text(reason));
	rejects->n++;
	MemoryContextSwitchTo(old);
}

/* Dead-letters one event of an envelope, as its own JSON text. */
static void
RejectEnvelopeEvent(Rejects *rejects, JsonbValue *event, int index, const char *reason)
{
	Jsonb	   *jb = JsonbValueToJsonb(event);
	char	   *text = JsonbToCString(NULL, &jb->root, VARSIZE(jb));

	AddReject(rejects, text, strlen(text), psprintf("envelope event %d: %s", index, reason));
}


/*
 * Turns one element into events of the batch; the bad events of an envelope
 * are dead-lettered one by one.  Returns why the element as a whole cannot be
 * used, or NULL.  jsonb_in may raise; the caller handles that.
 */
static const char *
ConvertElement(const AggrTakenElement *element, AggrBatch *batch, Rejects *rejects)
{
	int			nevents = element->nevents;
	Jsonb	   *jb;
	JsonbValue *events;

	if (element->oversize > 0)
		return psprintf("element of " INT64_FORMAT " bytes is larger than any batch (at most %d MB); only its first %d bytes are kept",
						element->oversize, AGGR_QUEUE_MAX_ELEMENT_BYTES / (1024 * 1024), element->length);
	if ((int) strlen(element->data) != element->length)
		return "element contains a NUL byte";
	if (!pg_verifymbstr(element->data, element->length, true))
		return "element is not valid in the database encoding";
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(element->data)));
	if (nevents == 1)
	{
		AggrBatchReserve(batch, 1);
		return AggrCheckEvent(&jb->root, batch);
	}

	/* an envelope aggr registered: {"aggr_envelope": id, "events": [...]} */
	events = getKeyJsonValueFromContainer(&jb->root, "events", 6, NULL);
	if (JsonContainerSize(&jb->root) != 2 || events == NULL || events->type != jbvBinary ||
		!JsonContainerIsArray(events->val.binary.data) ||
		JsonContainerSize(events->val.binary.data) != nevents)
		return psprintf("envelope must be {\"aggr_envelope\": id, \"events\": [%d events]}",
						nevents);
	AggrBatchReserve(batch, nevents);
	for (int i = 0; i < nevents; i++)
	{
		JsonbValue *event = getIthJsonbValueFromContainer(events->val.binary.data, i);
		const char *reason = (event->type == jbvBinary) ?
			AggrCheckEvent(event->val.binary.data, batch) : "must be a JSON object";

		if (reason != NULL)
			RejectEnvelopeEvent(rejects, event, i, reason);
	}
	return NULL;
}

typedef struct ConvertCall
{
	AggrTakenBatch *taken;
	AggrBatch  *batch;
	Rejects    *rejects;
	int			first;			/* elements first .. last - 1 */
	int			last;
	bool		ingest;			/* also store what was converted */
	AggrIngestResult result;
} ConvertCall;

static void
ConvertRange(void *arg)
{
	ConvertCall *call = arg;

	for (int i = call->first; i < call->last; i++)
	{
		AggrTakenElement *element = &call->taken->elements[i];
		const char *reason = ConvertElement(element, call->batch, call->rejects);

		if (reason != NULL)
			AddReject(call->rejects, element->data, element->length, reason);
	}
	if (call->ingest && call->batch->nevents > 0)
		AggrIngestBatch(call->batch, &call->result);
}

static void
InitConverted(AggrTakenBatch *taken, AggrBatch *batch, Rejects *rejects)
{
	int			capacity = taken->nelements + 1;

	rejects->context = CurrentMemoryContext;
	rejects->n = 0;
	rejects->capacity = capacity;
	rejects->raw = palloc(sizeof(Datum) * capacity);
	rejects->reason = palloc(sizeof(Datum) * capacity);
	AggrBatchInit(batch, capacity, true);
}

/*
 * Whether an error may go away by itself, so the batch is retried as it is:
 * a lost connection, a deadlock or serialization failure, a shutdown or
 * cancel, a lock timeout, a full disk, an I/O error.  Anything else (a data
 * error, a limit, out of memory, a user's trigger raising) would repeat.
 */
static bool
IsTransient(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_CONNECTION_EXCEPTION:
		case ERRCODE_TRANSACTION_ROLLBACK:
		case ERRCODE_OPERATOR_INTERVENTION:
			return true;
		case ERRCODE_INSUFFICIENT_RESOURCES:
			/* not out of memory, not temp_file_limit (53400) */
			return sqlerrcode == ERRCODE_DISK_FULL ||
				sqlerrcode == ERRCODE_INSUFFICIENT_RESOURCES ||
				sqlerrcode == ERRCODE_TOO_MANY_CONNECTIONS;
		default:
			return sqlerrcode == ERRCODE_IO_ERROR ||
				sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
	}
}

/*
 * Elements one at a time, each in a subtransaction of its own, so only what
 * fails alone is dead-lettered, with its error.  Without ingest their events
 * join the batch.  With ingest (the replay of a batch that failed as a
 * whole, perhaps for want of memory) each element's events are stored at
 * once and freed, batch only counts them, and a transient error is re-thrown
 * so that the batch is retried later.
 */
static void
ElementByElement(AggrTakenBatch *taken, AggrBatch *batch, Rejects *rejects, bool ingest)
{
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext element_context = AllocSetContextCreate(caller, "aggr consumer element",
														  ALLOCSET_DEFAULT_SIZES);
	ConvertCall call = {taken, batch, rejects, 0, 0, ingest};

	InitConverted(taken, batch, rejects);
	for (int i = 0; i < taken->nelements; i++)
	{
		int			nevents = batch->nevents;
		int			nrejects = rejects->n;
		AggrBatch	one;
		ErrorData  *error;

		if (ingest)
		{
			MemoryContextSwitchTo(element_context);
			AggrBatchInit(&one, 2, true);
			call.batch = &one;
		}
		call.first = i;
		call.last = i + 1;
		error = AggrTrySubtransaction(ConvertRange, &call);
		MemoryContextSwitchTo(caller);
		if (error != NULL)
		{
			if (ingest && IsTransient(error->sqlerrcode))
				ReThrowError(error);
			/* nothing of the failed element stays */
			batch->nevents = nevents;
			rejects->n = nrejects;
			AddReject(rejects, taken->elements[i].data, taken->elements[i].length,
					  error->message);
			FreeErrorData(error);
		}
		else if (ingest)
			batch->nevents += one.nevents;
		MemoryContextReset(element_context);
	}
	MemoryContextDelete(element_context);
}

/*
 * Converts every element.  The fast path runs them all in one subtransaction;
 * if anything raises (invalid JSON, say), it starts over element by element
 * so only the poison is dead-lettered.  The batch and the rejects grow with
 * the events the envelopes turn out to hold.
 */
static void
ConvertElements(AggrTakenBatch *taken, AggrBatch *batch, Rejects *rejects)
{
	ConvertCall call = {taken, batch, rejects, 0, taken->nelements, false};
	ErrorData  *error;

	InitConverted(taken, batch, rejects);
	if ((error = AggrTrySubtransaction(ConvertRange, &call)) == NULL)
		return;
	FreeErrorData(error);
	ElementByElement(taken, batch, rejects, false);
}

static SPIPlanPtr token_plan = NULL;
static SPIPlanPtr reject_plan = NULL;
static SPIPlanPtr progress_plan = NULL;

static bool
TokenCommitted(int slot, const char *token)
{
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2] = {Int32GetDatum(slot), CStringGetTextDatum(token)};
	int			ret = SPI_execute_plan(AggrPreparedPlan(&token_plan,
														"SELECT 1 FROM aggr.consumers"
														" WHERE consumer = $1 AND last_token = $2",
														2, types),
									   values, NULL, true, 1);

	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read aggr.consumers: %d", ret);
	return SPI_processed > 0;
}

static void
RecordBatch(int slot, const char *token, int nevents, const Rejects *rejects)
{
	Oid			types[3] = {INT4OID, TEXTOID, INT8OID};
	Datum		values[3] = {Int32GetDatum(slot), CStringGetTextDatum(token),
	Int64GetDatum(nevents)};

	if (rejects->n > 0)
	{
		Oid			rtypes[3] = {BYTEAARRAYOID, TEXTARRAYOID, INT4OID};
		Datum		rvalues[3] = {
			PointerGetDatum(construct_array(rejects->raw, rejects->n, BYTEAOID, -1, false, TYPALIGN_INT)),
			PointerGetDatum(construct_array(rejects->reason, rejects->n, TEXTOID, -1, false, TYPALIGN_INT)),
		Int32GetDatum(slot)};

		if (SPI_execute_plan(AggrPreparedPlan(&reject_plan,
											  "INSERT INTO aggr.rejected (raw, reason, consumer)"
											  " SELECT r.raw, r.reason, $3"
											  " FROM unnest($1, $2) AS r(raw, reason)",
											  3, rtypes),
							 rvalues, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not insert into aggr.rejected");
	}
	if (SPI_execute_plan(AggrPreparedPlan(&progress_plan,
										  "INSERT INTO aggr.consumers AS c"
										  " (consumer, last_token, batches, events, updated_at)"
										  " VALUES ($1, $2, 1, $3, pg_catalog.now())"
										  " ON CONFLICT (consumer) DO UPDATE SET"
										  " last_token = excluded.last_token, batches = c.batches + 1,"
										  " events = c.events + excluded.events,"
										  " updated_at = excluded.updated_at",
										  3, types),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not update aggr.consumers");
}

static void
MaybeCrash(int point)
{
	if (aggr_test_crash_point == point)
	{
		ereport(LOG, (errmsg("aggr consumer %d: exiting at test crash point %d", my_slot, point)));
		proc_exit(1);
	}
}


static void
Forget(BatchRef *ref)
{
	if (ref->token)
		pfree(ref->token);
	ref->slot = 0;
	ref->token = NULL;
}

static void
Remember(BatchRef *ref, const BatchRef *batch)
{
	Forget(ref);
	ref->slot = batch->slot;
	ref->token = MemoryContextStrdup(TopMemoryContext, batch->token);
}

static bool
Refers(const BatchRef *ref, int slot, const char *token)
{
	return ref->slot == slot && strcmp(ref->token, token) == 0;
}

/*
 * Ingests a taken batch of slot k (normally my own) in one transaction,
 * unless its token shows it was committed already.  The caller acknowledges.
 */
static void
ProcessBatch(int slot, AggrTakenBatch *taken)
{
	MemoryContext caller = CurrentMemoryContext;
	AggrBatch	batch;
	AggrIngestResult result = {0};
	Rejects		rejects = {0};
	bool		already;
	bool		split = (taken->attempts >= AGGR_WHOLE_ATTEMPTS ||
						 Refers(&failed_for_good, slot, taken->token));

	ingesting.slot = slot;
	ingesting.token = taken->token;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "aggr consumer: ingesting a batch");

	already = !taken->fresh && TokenCommitted(slot, taken->token);
	if (!already && taken->attempts >= AGGR_DEAD_ATTEMPTS)
	{
		ereport(LOG,
				(errmsg("aggr consumer %d: dead-lettering batch %s of slot %d as it is: handed out %d times without committing",
						my_slot, taken->token, slot, taken->attempts)));
		InitConverted(taken, &batch, &rejects);
		for (int i = 0; i < taken->nelements; i++)
			AddReject(&rejects, taken->elements[i].data, taken->elements[i].length,
					  psprintf("batch handed out %d times without committing; not parsed", taken->attempts));
	}
	else if (!already && split)
	{
		ereport(LOG,
				(errmsg("aggr consumer %d: ingesting batch %s of slot %d element by element after it failed as a whole",
						my_slot, taken->token, slot)));
		ElementByElement(taken, &batch, &rejects, true);
	}
	else if (!already)
	{
		ConvertElements(taken, &batch, &rejects);
		if (batch.nevents > 0)
			AggrIngestBatch(&batch, &result);
	}
	if (!already)
		RecordBatch(slot, taken->token, batch.nevents + rejects.n, &rejects);
	MaybeCrash(1);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	pgstat_report_activity(STATE_IDLE, NULL);
	ingesting.slot = 0;
	ingesting.token = NULL;
	if (split)
		Forget(&failed_for_good);
	MaybeCrash(2);

	if (already)
		ereport(LOG,
				(errmsg("aggr consumer %d: batch %s of slot %d was committed before; acknowledging it only",
						my_slot, taken->token, slot)));
	else
		AggrSlotCommitted(my_slot, batch.nevents + rejects.n, rejects.n);
}

/*
 * After an error: if a batch was being ingested and the error would repeat,
 * its next replay goes element by element; if it was transient, the replay
 * does not count as an attempt.
 */
static void
NoteFailure(ErrorData *error)
{
	if (ingesting.token == NULL)
		return;
	Remember(IsTransient(error->sqlerrcode) ? &failed_transiently : &failed_for_good,
			 &ingesting);
	ingesting.slot = 0;
	ingesting.token = NULL;
}

/*
 * Checks, in a transaction of its own, that CREATE EXTENSION aggr was run;
 * *citus_worker: this server is a Citus worker node (citus.h), where a
 * consumer would take from the lists of the coordinator's slots.
 */
static bool
ExtensionInstalled(bool *citus_worker)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		installed;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	installed = OidIsValid(get_extension_oid("aggr", true));
	*citus_worker = installed && AggrCitusRoleNow().worker;
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	return installed;
}

/*
 * AggrQueueTake for a slot, telling it when the slot's last attempt failed
 * transiently, or its last answer was lost (a hand-out this consumer never
 * saw): neither counts as an attempt.  False after a failure.
 */
static bool
Take(int slot, bool move, const char *ack_token, AggrTakenBatch *taken)
{
	char	   *error = NULL;
	AggrQueueStatus status;

	status = AggrQueueTake(queue, slot, move, ack_token,
						   failed_transiently.slot == slot ? failed_transiently.token : NULL,
						   taken, &error);
	if (status == AGGR_QUEUE_UNKNOWN)
	{
		BatchRef	any = {slot, AGGR_QUEUE_ANY_TOKEN};

		Remember(&failed_transiently, &any);
	}
	if (!QueueCallOk(status, error))
		return false;
	if (failed_transiently.slot == slot)
		Forget(&failed_transiently);
	return true;
}

/*
 * One step of the loop.  For my own slot: acknowledge my last batch and take
 * the next one in a single script (a list left with a token is replayed as it
 * is), or wait for an element when the queue is empty.  For an adopted slot:
 * replay what its list holds, then acknowledge it.  Returns false after a
 * failure of the broker (the caller backs off).
 */
static bool
ConsumeOnce(int slot, bool own)
{
	AggrTakenBatch taken;
	AggrQueueStatus status;
	char	   *error = NULL;
	bool		ready;

	if (!Take(slot, own, own ? unacked_token : NULL, &taken))
		return false;
	if (own && unacked_token != NULL)
	{
		/* acknowledged now, or the list is gone: nothing left to acknowledge */
		pfree(unacked_token);
		unacked_token = NULL;
		if (taken.acknowledged)
			MaybeCrash(3);
	}
	if (taken.nelements == 0)
	{
		if (!own)
			return true;
		status = AggrQueueWait(queue, aggr_poll_interval, HandleLatch, &ready, &error);
		if (!QueueCallOk(status, error))
			return false;
		if (!ready)
			return true;
		if (!Take(slot, true, NULL, &taken))
			return false;
		if (taken.nelements == 0)
			return true;
	}
	ProcessBatch(slot, &taken);
	if (own)
		unacked_token = MemoryContextStrdup(TopMemoryContext, taken.token);
	else
	{
		AggrTakenBatch rest;

		if (!Take(slot, false, taken.token, &rest))
			return false;
	}
	return true;
}

void
AggrConsumerMain(Datum main_arg)
{
	MemoryContext loop_context;
	volatile bool extension_ready = false;
	volatile bool warned_missing = false;
	bool		citus_worker;

	my_slot = DatumGetInt32(main_arg);
	adopt_pending = (my_slot == 1);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(aggr_database, NULL, 0);
	SetConfigOption("application_name", MyBgworkerEntry->bgw_name, PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname(MyBgworkerEntry->bgw_name);

	AggrSlotStarted(my_slot);
	on_shmem_exit(OnExit, (Datum) 0);

	loop_context = AllocSetContextCreate(TopMemoryContext, "aggr consumer loop",
										 ALLOCSET_DEFAULT_SIZES);
#ifdef __GLIBC__

	/*
	 * Every batch allocates and frees the same few megabytes; without this,
	 * glibc hands them back to the kernel and the next batch faults them in
	 * again (about a tenth of a consumer's CPU).  The memory stays bounded by
	 * one batch's peak.
	 */
	mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
	mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
#endif
	ereport(LOG, (errmsg("aggr consumer %d started on queue \"%s\" at %s", my_slot, aggr_queue_key,
						 AggrBrokerUrlForDisplay())));

	for (;;)
	{
		volatile bool failed = false;

		IgnoreCancel();
		CHECK_FOR_INTERRUPTS();
		ReloadIfPending();
		MemoryContextSwitchTo(loop_context);
		MemoryContextReset(loop_context);

		PG_TRY();
		{
			/*
			 * Before every batch: a server becomes a Citus worker node when
			 * the coordinator adds it, at any time.
			 */
			extension_ready = ExtensionInstalled(&citus_worker);
			if (citus_worker)
			{
				ereport(LOG,
						(errmsg("aggr consumer %d: this server is a Citus worker node; consumers run on the coordinator only, so this one stops",
								my_slot),
						 errhint("Set aggr.broker_url on the coordinator only.")));
				proc_exit(0);	/* exit code 0: not restarted */
			}
			if (!extension_ready && !warned_missing)
				ereport(LOG,
						(errmsg("aggr consumer %d: extension aggr is not installed in database \"%s\"; waiting",
								my_slot, aggr_database)));
			warned_missing = !extension_ready;
			failed = !extension_ready || !EnsureQueue();

			/*
			 * Consumer 1 adopts what slots beyond the pool left behind (the
			 * pool shrank across a restart): once at start, and again after
			 * each outage of the broker.
			 */
			if (!failed && adopt_pending)
			{
				for (int slot = aggr_worker_count + 1; slot <= AGGR_MAX_WORKERS && !failed; slot++)
					failed = !ConsumeOnce(slot, false);
				adopt_pending = failed;
			}
			if (!failed)
				failed = !ConsumeOnce(my_slot, true);
		}
		PG_CATCH();
		{
			ErrorData  *error;

			MemoryContextSwitchTo(loop_context);
			error = CopyErrorData();
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			MemoryContextSwitchTo(loop_context);
			pgstat_report_activity(STATE_IDLE, NULL);
			NoteFailure(error);

			/*
			 * The error may have come while a reply of Redis was still due (a
			 * cancel during the wait): the connection is not trusted again.
			 */
			AggrQueueClose(queue);
			queue = NULL;
			extension_ready = false;
			failed = true;
		}
		PG_END_TRY();

		if (failed)
			Backoff();
		else
			backoff_ms = 0;
	}
}

/* Registers aggr.worker_count consumers; called from _PG_init at preload. */
void
AggrRegisterConsumers(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "aggr");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "AggrConsumerMain");
	snprintf(worker.bgw_type, BGW_MAXLEN, "aggr consumer");
	for (int i = 1; i <= aggr_worker_count; i++)
	{
		snprintf(worker.bgw_name, BGW_MAXLEN, "aggr consumer %d", i);
		worker.bgw_main_arg = Int32GetDatum(i);
		RegisterBackgroundWorker(&worker);
	}
}
