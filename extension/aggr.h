/*
 * aggr.h
 *		The settings of aggr (aggr.c) and which mode it runs in.  What each
 *		concern offers the others is in its own header: ingest.h (the
 *		validated batch and the ingest core), broker.h (publishing to Redis),
 *		queue.h (the queue protocol), bgworker/slots.h and consumer.h.
 */
#ifndef AGGR_H
#define AGGR_H

#include "postgres.h"

#include "storage/proc.h"

/*
 * Upper bound of aggr.max_request_events: whatever a session was allowed to
 * publish gets ingested.
 */
#define AGGR_MAX_REQUEST_EVENTS 1000000

/* Settings (aggr.c) */
extern int	aggr_max_request_events;
extern char *aggr_broker_url;
extern char *aggr_queue_key;
extern int	aggr_worker_count;
extern int	aggr_queue_maxsize;
extern int	aggr_poll_interval;
extern int	aggr_batch_size;
extern int	aggr_batch_bytes;	/* kB */
extern char *aggr_database;
extern int	aggr_test_crash_point;
extern int	aggr_test_backoff;
extern bool aggr_notify;
extern bool aggr_bulk_ingest;
extern int	aggr_test_bulk_pause;
extern int	aggr_retention;		/* s, 0: keep forever */
extern int	aggr_dedup_window;	/* s, AGGR_DEDUP_FOREVER: remember forever */

/* Broker mode: a preloaded aggr with aggr.broker_url set. */
extern bool AggrBrokerConfigured(void);
extern bool AggrBrokerWantedWithoutPreload(void);
extern void AggrRequirePreload(const char *what);

/*
 * This backend's local transaction id: what a once-per-transaction cache is
 * keyed by (watermark.c, citus.c).
 */
static inline LocalTransactionId
AggrLocalTransactionId(void)
{
#if PG_VERSION_NUM >= 170000
	return MyProc->vxid.lxid;
#else
	return MyProc->lxid;
#endif
}

#endif							/* AGGR_H */
