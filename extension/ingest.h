/*
 * ingest.h
 *		The validated batch (validate.c) and the ingest core (ingest.c), the
 *		one code path every event takes into aggr.events.
 */
#ifndef AGGR_INGEST_H
#define AGGR_INGEST_H

#include "postgres.h"

#include "executor/spi.h"
#include "utils/jsonb.h"

/* A string field (topic, event_id, source) holds 1 to this many characters. */
#define AGGR_FIELD_MAX_CHARS 128

/* Counter rows are spread over this many shards so writers rarely share one. */
#define AGGR_COUNTER_SHARDS 16

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
extern SPIPlanPtr AggrPreparedPlan(SPIPlanPtr *cache, const char *sql, int nargs,
								   Oid *argtypes);
extern SPIPlanPtr AggrPreparedPlanWith(SPIPlanPtr *cache, const char *sql, int nargs,
									   Oid *argtypes, int options);
extern ErrorData *AggrTrySubtransaction(void (*fn) (void *arg), void *arg);
extern void AggrIngestBatch(const AggrBatch *batch, AggrIngestResult *result);

#endif							/* AGGR_INGEST_H */
