/*
 * aggr.c
 *		Module magic, settings (aggr.*), and what _PG_init sets up: the
 *		broker's transaction callbacks, and at preload the consumers' slots
 *		in shared memory (bgworker/slots.c) and the consumers.
 *
 * The broker settings take effect at server start: publishers and consumers
 * must agree on where the queue is, and consumers are registered only when
 * aggr is in shared_preload_libraries and a broker is configured.  Without the
 * preload (a stock server, a Citus worker node) aggr runs in direct mode, and
 * what needs the preload answers 55000 (AggrRequirePreload).
 */
#include "postgres.h"

#include "aggr.h"
#include "broker.h"
#include "expire.h"
#include "queue.h"
#include "../bgworker/consumer.h"
#include "../bgworker/expiry.h"
#include "../bgworker/slots.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

/* 18 and later show the module's name and version in pg_get_loaded_modules() */
#ifdef PG_MODULE_MAGIC_EXT
PG_MODULE_MAGIC_EXT(.name = "aggr",.version = AGGR_VERSION);
#else
PG_MODULE_MAGIC;
#endif

/*
 * A burst of a million events (about 300 MB of Redis memory at 300 bytes an
 * event, 50 times the demo's 20,000) queues without a 503; the bound is there
 * to stop a runaway, not to pace normal work.
 */
#define AGGR_DEFAULT_QUEUE_MAXSIZE 1000000

void		_PG_init(void);

int			aggr_max_request_events = 10000;
char	   *aggr_broker_url = NULL;
char	   *aggr_queue_key = NULL;
int			aggr_worker_count = 4;
int			aggr_queue_maxsize = AGGR_DEFAULT_QUEUE_MAXSIZE;
int			aggr_poll_interval = 2000;
int			aggr_batch_size = 500;
int			aggr_batch_bytes = 32 * 1024;
char	   *aggr_database = NULL;
int			aggr_test_crash_point = 0;
int			aggr_test_backoff = 0;
bool		aggr_notify = true;
bool		aggr_bulk_ingest = true;
int			aggr_test_bulk_pause = 0;
int			aggr_retention = 0;
int			aggr_dedup_window = AGGR_DEDUP_FOREVER;

/* Loaded by shared_preload_libraries (true in the postmaster and its children). */
static bool preloaded = false;

static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif

static const struct config_enum_entry crash_point_options[] = {
	{"none", 0, false},
	{"before_commit", 1, false},
	{"after_commit", 2, false},
	{"after_ack", 3, false},
	{NULL, 0, false}
};

/*
 * Settings any session may define: those read per call or per batch.  Defined
 * whether or not aggr is preloaded, so direct mode works on a stock server.
 */
static void
DefineSessionSettings(void)
{
	DefineCustomIntVariable("aggr.max_request_events",
							"Largest number of events one aggr_publish or aggr_ingest call accepts.",
							NULL, &aggr_max_request_events, 10000, 1, AGGR_MAX_REQUEST_EVENTS,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.queue_maxsize",
							"Most events the queue may hold; a publish that would exceed it is refused (0 = no bound).",
							NULL, &aggr_queue_maxsize, AGGR_DEFAULT_QUEUE_MAXSIZE, 0, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.poll_interval",
							"How long a consumer waits on an empty queue before polling again.",
							NULL, &aggr_poll_interval, 2000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.batch_size",
							"Most queue elements a consumer ingests in one transaction.",
							NULL, &aggr_batch_size, 500, 1, 5000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.batch_bytes",
							"Most bytes of queue elements a consumer ingests in one transaction.",
							"aggr_publish refuses a request whose element is longer; a longer element is a batch of its own, and one above 256 MB is dead-lettered with its size and first bytes.",
							&aggr_batch_bytes, 32 * 1024, 64, AGGR_QUEUE_MAX_ELEMENT_BYTES / 1024,
							PGC_SIGHUP, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomBoolVariable("aggr.notify",
							 "Notify channel aggr_events at each commit that stored events.",
							 "NOTIFY serializes the commits of notifying transactions and a transaction that notified cannot PREPARE: turn it off for two-phase commit, or where nobody follows new events.",
							 &aggr_notify, true, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("aggr.bulk_ingest",
							 "Write batches with the bulk path (a multi-insert) where it can be taken.",
							 "Off: every batch takes the INSERT ... ON CONFLICT statement, counted in aggr_stats()'s bulk_fallback_events.",
							 &aggr_bulk_ingest, true, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.retention",
							"How long an event is kept after its ingest before it expires (0 = forever).",
							"The expiry worker (aggr preloaded) or aggr_expire() expires events ingested longer ago; their keys are remembered for aggr.dedup_window more.",
							&aggr_retention, 0, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.dedup_window",
							"How long the key of an expired event is remembered, so that the event re-sent is a duplicate (-1 = forever).",
							"After it, the key is forgotten and the event, if sent again, is stored as new; 0 deletes an event when it expires.",
							&aggr_dedup_window, AGGR_DEDUP_FOREVER, AGGR_DEDUP_FOREVER, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.test_backoff",
							"Test only: the longest wait of a consumer between retries (0 = 5 s).",
							NULL, &aggr_test_backoff, 0, 0, 5000,
							PGC_SIGHUP, GUC_UNIT_MS | GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.test_bulk_pause",
							"Test only: the bulk path waits for pg_advisory_lock(this) between its first pre-check and insert (0 = never).",
							NULL, &aggr_test_bulk_pause, 0, 0, INT_MAX,
							PGC_SUSET, GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	DefineCustomEnumVariable("aggr.test_crash_point",
							 "Test only: make a consumer exit at this point of its batch protocol.",
							 NULL, &aggr_test_crash_point, 0, crash_point_options,
							 PGC_SIGHUP, GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
}

/*
 * aggr.broker_url: restart-only when preloading.  In a late load PostgreSQL
 * refuses to define a PGC_POSTMASTER setting (FATAL), yet the URL, which may
 * hold a password, must stay hidden from non-superusers; so a late load
 * defines it superuser-only and unused (its only effect is the 55000 of
 * AggrRequirePreload), rather than leaving it a placeholder anyone can SHOW.
 */
static void
DefineBrokerUrl(GucContext context)
{
	DefineCustomStringVariable("aggr.broker_url",
							   "Redis URL of the queue (redis://[:password@]host:port/db); empty means direct ingest.",
							   context == PGC_POSTMASTER ? NULL :
							   "Unused: broker mode needs aggr in shared_preload_libraries.",
							   &aggr_broker_url, "",
							   context, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
}

/*
 * The other settings that take effect at server start (PGC_POSTMASTER): they
 * exist only in a preloaded aggr; a server restarted with the preload picks
 * up their values from postgresql.conf.
 */
static void
DefineServerStartSettings(void)
{
	DefineCustomStringVariable("aggr.queue_key",
							   "Redis list that holds queued events.",
							   NULL, &aggr_queue_key, "aggregator:events",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.worker_count",
							"Number of consumer background workers in broker mode.",
							NULL, &aggr_worker_count, 4, 1, AGGR_MAX_WORKERS,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("aggr.database",
							   "Database the consumer workers ingest into.",
							   NULL, &aggr_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
}

static void
AggrShmemRequest(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	AggrSlotsRequest();
}

static void
AggrShmemStartup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	AggrSlotsStartup();
}

static bool
BrokerUrlSet(void)
{
	return aggr_broker_url != NULL && aggr_broker_url[0] != '\0';
}

/* Broker mode: a preloaded aggr with aggr.broker_url set. */
bool
AggrBrokerConfigured(void)
{
	return preloaded && BrokerUrlSet();
}

/*
 * True when a broker is asked for (postgresql.conf, ALTER SYSTEM or SET) but
 * aggr was loaded late, so broker mode cannot run.
 */
bool
AggrBrokerWantedWithoutPreload(void)
{
	return !preloaded && BrokerUrlSet();
}

/* The 55000 error of whatever needs aggr in shared_preload_libraries. */
void
AggrRequirePreload(const char *what)
{
	ereport(ERROR,
			errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			errmsg("%s needs aggr in shared_preload_libraries", what),
			errdetail("aggr.broker_url is set, but aggr was loaded after server start, so the broker settings and the consumers do not exist."),
			errhint("Add aggr to shared_preload_libraries and restart the server, or reset aggr.broker_url to ingest directly."));
}

/*
 * Loaded by shared_preload_libraries: every setting, shared memory and the
 * consumers.  Loaded by a session (CREATE EXTENSION or the first call on a
 * stock server): the session settings only, which is all direct mode needs.
 * The prefix is reserved only when preloading; reserving it late would turn
 * each restart-only line of postgresql.conf into a WARNING in every session.
 */
void
_PG_init(void)
{
	DefineSessionSettings();
	AggrBrokerInit();

	if (!process_shared_preload_libraries_in_progress)
	{
		DefineBrokerUrl(PGC_SUSET);
		return;
	}

	preloaded = true;
	DefineBrokerUrl(PGC_POSTMASTER);
	DefineServerStartSettings();
	MarkGUCPrefixReserved("aggr");

#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = AggrShmemRequest;
#else
	AggrShmemRequest();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = AggrShmemStartup;

	if (AggrBrokerConfigured())
		AggrRegisterConsumers();
	AggrRegisterExpiry();
}
