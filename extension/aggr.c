/*
 * aggr.c
 *		Module magic, settings (aggr.*), and the shared memory the consumer
 *		workers report their progress in.
 *
 * The broker settings take effect at server start: publishers and consumers
 * must agree on where the queue is, and consumers are registered only when
 * aggr is in shared_preload_libraries and a broker is configured.
 */
#include "postgres.h"

#include "aggr.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

int			aggr_max_request_events = 10000;
char	   *aggr_broker_url = NULL;
char	   *aggr_queue_key = NULL;
int			aggr_worker_count = 4;
int			aggr_queue_maxsize = 5000;
int			aggr_poll_interval = 2000;
int			aggr_batch_size = 500;
char	   *aggr_database = NULL;
int			aggr_test_crash_point = 0;

AggrSharedState *aggr_shared = NULL;

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

static void
DefineSettings(void)
{
	DefineCustomIntVariable("aggr.max_request_events",
							"Largest number of events one aggr_publish or aggr_ingest call accepts.",
							NULL, &aggr_max_request_events, 10000, 1, AGGR_MAX_REQUEST_EVENTS,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("aggr.broker_url",
							   "Redis URL of the queue (redis://[:password@]host:port/db); empty means direct ingest.",
							   NULL, &aggr_broker_url, "",
							   PGC_POSTMASTER, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("aggr.queue_key",
							   "Redis list that holds queued events.",
							   NULL, &aggr_queue_key, "aggregator:events",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.worker_count",
							"Number of consumer background workers in broker mode.",
							NULL, &aggr_worker_count, 4, 1, AGGR_MAX_WORKERS,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.queue_maxsize",
							"Most events the queue may hold; a publish that would exceed it is refused (0 = no bound).",
							NULL, &aggr_queue_maxsize, 5000, 0, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.poll_interval",
							"How long a consumer waits on an empty queue before polling again.",
							NULL, &aggr_poll_interval, 2000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("aggr.batch_size",
							"Most queue elements a consumer ingests in one transaction.",
							NULL, &aggr_batch_size, 500, 1, 5000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("aggr.database",
							   "Database the consumer workers ingest into.",
							   NULL, &aggr_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("aggr.test_crash_point",
							 "Test only: make a consumer exit at this point of its batch protocol.",
							 NULL, &aggr_test_crash_point, 0, crash_point_options,
							 PGC_SIGHUP, GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	MarkGUCPrefixReserved("aggr");
}

static Size
AggrShmemSize(void)
{
	return MAXALIGN(sizeof(AggrSharedState));
}

static void
AggrShmemRequest(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(AggrShmemSize());
	RequestNamedLWLockTranche("aggr", 1);
}

static void
AggrShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	aggr_shared = ShmemInitStruct("aggr", AggrShmemSize(), &found);
	if (!found)
	{
		memset(aggr_shared, 0, AggrShmemSize());
		aggr_shared->lock = &(GetNamedLWLockTranche("aggr"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Consumers running now; 0 when aggr is not preloaded. */
int
AggrLiveWorkerCount(void)
{
	int			live = 0;

	if (aggr_shared == NULL)
		return 0;
	LWLockAcquire(aggr_shared->lock, LW_SHARED);
	for (int i = 0; i < AGGR_MAX_WORKERS; i++)
		if (aggr_shared->workers[i].pid != 0)
			live++;
	LWLockRelease(aggr_shared->lock);
	return live;
}

bool
AggrBrokerConfigured(void)
{
	return aggr_broker_url != NULL && aggr_broker_url[0] != '\0';
}

void
_PG_init(void)
{
	DefineSettings();
	AggrBrokerInit();

	if (!process_shared_preload_libraries_in_progress)
		return;

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
}
