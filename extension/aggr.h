/*
 * aggr.h
 *		What crosses files in aggr: settings, the validated batch, the ingest
 *		core, the broker client and the shared state of the consumers.
 */
#ifndef AGGR_H
#define AGGR_H

#include "postgres.h"

#include "storage/lwlock.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* A string field (topic, event_id, source) holds 1 to this many characters. */
#define AGGR_FIELD_MAX_CHARS 128

/* Counter rows are spread over this many shards so writers rarely share one. */
#define AGGR_COUNTER_SHARDS 16

/*
 * Upper bound of aggr.max_request_events, and the largest envelope a consumer
 * accepts: whatever a session was allowed to publish gets ingested.
 */
#define AGGR_MAX_REQUEST_EVENTS 1000000

/* Upper bound of aggr.worker_count; shared memory is sized for it. */
#define AGGR_MAX_WORKERS 64

/* Settings (aggr.c) */
extern int	aggr_max_request_events;
extern char *aggr_broker_url;
extern char *aggr_queue_key;
extern int	aggr_worker_count;
extern int	aggr_queue_maxsize;
extern int	aggr_poll_interval;
extern int	aggr_batch_size;
extern char *aggr_database;
extern int	aggr_test_crash_point;

/*
 * A batch of validated events, column by column, as the ingest statement
 * takes them (text, text, timestamptz, text, jsonb).
 */
typedef struct AggrBatch
{
	int			nevents;
	int			capacity;
	bool		store;			/* false: events are only checked */
	Datum	   *topics;
	Datum	   *event_ids;
	Datum	   *timestamps;
	Datum	   *sources;
	Datum	   *payloads;
} AggrBatch;

typedef struct AggrIngestResult
{
	int64		received;
	int64		unique;
	int64		duplicates;
} AggrIngestResult;

/* validate.c */
extern void AggrBatchInit(AggrBatch *batch, int capacity, bool store);
extern void AggrBatchReserve(AggrBatch *batch, int more);
extern const char *AggrCheckEvent(JsonbContainer *event, AggrBatch *batch);
extern void AggrValidateRequest(Jsonb *request, AggrBatch *batch, bool store);

/* ingest.c */
#include "executor/spi.h"
extern SPIPlanPtr AggrPreparedPlan(SPIPlanPtr *cache, const char *sql, int nargs,
								   Oid *argtypes);
extern ErrorData *AggrTrySubtransaction(void (*fn) (void *arg), void *arg);
extern void AggrIngestBatch(const AggrBatch *batch, AggrIngestResult *result);

/*
 * Broker elements.  An element of the queue is one event (plain JSON, what
 * other producers push) or an envelope, what aggr_publish pushes for a request
 * of several events: {"aggr_events":N,"events":[...]}, starting with exactly
 * these bytes so the Lua scripts and the consumers can tell its event count.
 * The hash <queue>:envelopes counts aggr's envelopes in the queue (count) and
 * the events they hold beyond one each (extra_events): the queue's depth in
 * events is its LLEN plus extra_events, and while count is 0 a consumer
 * takes a run of plain events without reading them in Lua.
 */
#define AGGR_ENVELOPE_PREFIX "{\"aggr_events\":"
#define AGGR_ENVELOPES_SUFFIX ":envelopes"

/* broker.c */
struct redisContext;
extern struct redisContext *AggrRedisConnect(char **error);
extern char *AggrBrokerUrlForDisplay(void);
extern void AggrBrokerInit(void);
extern void AggrEnqueueBatch(Jsonb *request, int nevents, const char *json, int len);
extern bool AggrBrokerConfigured(void);
extern bool AggrBrokerWantedWithoutPreload(void);
extern void AggrRequirePreload(const char *what);
extern int64 AggrQueueDepth(char **error);
extern char *AggrEnvelopesKey(void);

/* shared state of the consumers (bgworker/consumer.c) */
typedef struct AggrWorkerSlot
{
	pid_t		pid;			/* 0 when not running */
	int64		batches;		/* committed batches since start of the slot */
	int64		events;			/* events stored or dead-lettered since start
								 * of the slot */
	int64		rejected;		/* elements sent to aggr.rejected */
	TimestampTz last_commit;
	TimestampTz started_at;
	bool		broker_up;
} AggrWorkerSlot;

typedef struct AggrSharedState
{
	LWLock	   *lock;
	AggrWorkerSlot workers[AGGR_MAX_WORKERS];
} AggrSharedState;

extern AggrSharedState *aggr_shared;
extern int	AggrLiveWorkerCount(void);
extern void AggrRegisterConsumers(void);

#endif							/* AGGR_H */
