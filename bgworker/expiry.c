/*
 * expiry.c
 *		The expiry background worker: while aggr.retention or
 *		aggr.dedup_window asks for it, runs expiry batches in aggr.database,
 *		one short transaction each (extension/expire.h), back to back while a
 *		backlog lasts, then once a second.
 *
 * A reload applies before the next batch, in a backlog too.  The worker
 * does not wait for an aggr_expire() running meanwhile: it rests and tries
 * again.  A batch commits with synchronous_commit off: a batch lost in a
 * crash is only done again (the batch and its counts commit together, or not
 * at all).  Errors are logged and the batch is tried again after a pause.
 */
#include "postgres.h"

#include "../extension/aggr.h"
#include "../extension/expire.h"
#include "expiry.h"
#include "../extension/citus.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void AggrExpiryMain(Datum main_arg);

/* How long the worker rests when there is nothing to expire yet. */
#define AGGR_EXPIRY_NAP_MS 1000
/* ... when retention is off (a reload wakes it); after errors, up to */
#define AGGR_EXPIRY_IDLE_MS 60000
#define AGGR_EXPIRY_MAX_RETRY_MS 60000

/*
 * A backlog that took this long is reported in the log when it is done (a
 * steady stream, worked off every second, is not).
 */
#define AGGR_EXPIRY_REPORT_MS 10000

static void
ReloadIfPending(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

static void
Nap(int ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

typedef enum Schema
{
	SCHEMA_MISSING,				/* no CREATE EXTENSION aggr in aggr.database */
	SCHEMA_OLD,					/* an aggr before 0.4: ALTER EXTENSION aggr
								 * UPDATE */
	SCHEMA_CITUS_WORKER,		/* expiry runs on the coordinator (citus.h) */
	SCHEMA_READY
} Schema;

static Schema
CurrentSchema(void)
{
	Oid			namespace;

	if (!OidIsValid(get_extension_oid("aggr", true)))
		return SCHEMA_MISSING;
	namespace = get_namespace_oid("aggr", true);
	if (!OidIsValid(namespace) || !OidIsValid(get_relname_relid("expiry", namespace)))
		return SCHEMA_OLD;
	if (AggrCitusRoleNow().worker)
		return SCHEMA_CITUS_WORKER;
	return SCHEMA_READY;
}

/* One batch in a transaction of its own, unless aggr is not ready. */
static Schema
RunBatch(AggrExpiryResult *result)
{
	Schema		schema;

	/*
	 * A transaction block, as BEGIN opens: on a distributed aggr.events Citus
	 * sends the batch's SET LOCAL (its lock_timeout) to the nodes only inside
	 * one (expire.c, PropagateToShards).
	 */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	BeginTransactionBlock();
	CommitTransactionCommand();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	schema = CurrentSchema();
	if (schema == SCHEMA_READY)
	{
		pgstat_report_activity(STATE_RUNNING, "aggr expiry batch");
		AggrExpireBatch(AggrRetentionCutoff(GetCurrentTimestamp()), AGGR_EXPIRE_BATCH, false, result);
	}
	PopActiveSnapshot();
	(void) EndTransactionBlock(false);
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	return schema;
}

/*
 * RunBatch, its errors logged and rolled back (*failed); returns how long to
 * rest before the next batch (0: go on at once).
 */
static int
TryBatch(MemoryContext context, AggrExpiryResult *result, bool *failed)
{
	static Schema logged = SCHEMA_READY;
	static int	lock_waits = 0; /* batches in a row that met a lock */
	volatile int nap = AGGR_EXPIRY_NAP_MS;

	*failed = false;

	PG_TRY();
	{
		Schema		schema = RunBatch(result);

		lock_waits = 0;

		if (schema == SCHEMA_CITUS_WORKER)
		{
			ereport(LOG,
					(errmsg("aggr expiry: this server is a Citus worker node; expiry runs on the coordinator only, so this worker stops")));
			proc_exit(0);		/* exit code 0: not restarted */
		}
		if (schema != SCHEMA_READY && schema != logged)
			ereport(LOG,
					(errmsg(schema == SCHEMA_MISSING ?
							"aggr expiry: extension aggr is not installed in database \"%s\"; waiting" :
							"aggr expiry: extension aggr in database \"%s\" is older than 0.4; waiting",
							aggr_database),
					 schema == SCHEMA_OLD ? errhint("Run ALTER EXTENSION aggr UPDATE there.") : 0));
		logged = schema;
		if (schema != SCHEMA_READY)
			nap = AGGR_EXPIRY_IDLE_MS / 6;
		else if (!result->busy && (result->more_to_expire || result->more_to_forget))
			nap = 0;
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(context);
		error = CopyErrorData();

		/*
		 * An event locked by someone's open transaction: busy, not broken.
		 * Said after five batches in a row, then every sixty (each waits a
		 * second for the lock, then rests): expiry waits for whoever holds
		 * it, and that must not go unseen.
		 */
		if (error->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
		{
			EmitErrorReport();
			*failed = true;
		}
		else if (++lock_waits % 60 == 5)
			ereport(LOG,
					(errmsg("aggr expiry: waiting for a lock that another transaction holds, %d batches in a row",
							lock_waits),
					 errdetail_internal("%s", error->message),
					 errhint("Expiry goes on once that transaction ends; pg_locks shows who holds it.")));
		FlushErrorState();
		AbortOutOfAnyTransaction(); /* the block too */
		pgstat_report_activity(STATE_IDLE, NULL);
		memset(result, 0, sizeof(*result));
	}
	PG_END_TRY();
	MemoryContextSwitchTo(context);
	return nap;
}

void
AggrExpiryMain(Datum main_arg)
{
	MemoryContext batch_context;
	int64		backlog_expired = 0;
	int64		backlog_forgotten = 0;
	TimestampTz backlog_since = 0;
	int			retry_ms = AGGR_EXPIRY_NAP_MS;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(aggr_database, NULL, 0);
	SetConfigOption("application_name", MyBgworkerEntry->bgw_name, PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * a row someone keeps locked must not hold a batch, and its duplicates,
	 * long
	 */
	SetConfigOption("lock_timeout", "1s", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname(MyBgworkerEntry->bgw_name);
	batch_context = AllocSetContextCreate(TopMemoryContext, "aggr expiry batch",
										  ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("aggr expiry started in database \"%s\"", aggr_database)));

	for (;;)
	{
		AggrExpiryResult result = {0};
		int			nap;
		bool		failed;

		/*
		 * before every batch, so a new setting applies in the middle of a
		 * backlog too
		 */
		CHECK_FOR_INTERRUPTS();
		ReloadIfPending();
		if (!AggrRetentionEnabled())
		{
			Nap(AGGR_EXPIRY_IDLE_MS);
			continue;
		}
		MemoryContextSwitchTo(batch_context);
		MemoryContextReset(batch_context);
		nap = TryBatch(batch_context, &result, &failed);
		if (failed)
		{
			/* the same error again and again: back off, up to a minute */
			retry_ms = Min(retry_ms * 2, AGGR_EXPIRY_MAX_RETRY_MS);
			backlog_expired = backlog_forgotten = 0;
			backlog_since = 0;
			Nap(retry_ms);
			continue;
		}
		retry_ms = AGGR_EXPIRY_NAP_MS;
		if (backlog_since == 0)
			backlog_since = GetCurrentTimestamp();
		backlog_expired += result.expired;
		backlog_forgotten += result.forgotten;
		if (nap == 0)
			continue;
		if (TimestampDifferenceExceeds(backlog_since, GetCurrentTimestamp(), AGGR_EXPIRY_REPORT_MS))
			ereport(LOG,
					(errmsg("aggr expiry: caught up, having expired " INT64_FORMAT
							" events and forgotten " INT64_FORMAT " keys",
							backlog_expired, backlog_forgotten)));
		backlog_expired = backlog_forgotten = 0;
		backlog_since = 0;
		Nap(nap);
	}
}

/* Registers the expiry worker; called from _PG_init at preload. */
void
AggrRegisterExpiry(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "aggr");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "AggrExpiryMain");
	snprintf(worker.bgw_type, BGW_MAXLEN, "aggr expiry");
	snprintf(worker.bgw_name, BGW_MAXLEN, "aggr expiry");
	RegisterBackgroundWorker(&worker);
}
