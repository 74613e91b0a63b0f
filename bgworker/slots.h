/*
 * slots.h
 *		The consumers' slots in shared memory: one per consumer, for what
 *		aggr_health() and aggr_stats() report about them.
 *
 * Locking rules: every field is read and written only under the one LWLock
 * of the "aggr" tranche.  A slot is written only by its own consumer (its
 * start and exit, broker state and committed batches); any backend reads
 * them, and only through AggrSlotsRead, which copies them under LW_SHARED.
 * Nothing here is needed for correctness: the counts that must be exact live
 * in the tables.
 */
#ifndef AGGR_SLOTS_H
#define AGGR_SLOTS_H

#include "postgres.h"

#include "utils/timestamp.h"

/* Upper bound of aggr.worker_count; shared memory is sized for it. */
#define AGGR_MAX_WORKERS 64

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

/* shared memory: from _PG_init at preload */
extern void AggrSlotsRequest(void);
extern void AggrSlotsStartup(void);
extern bool AggrSlotsAttached(void);

/* by consumer slot (1-based) for itself */
extern void AggrSlotStarted(int slot);
extern void AggrSlotExited(int slot);
extern void AggrSlotBrokerUp(int slot, bool up);
extern void AggrSlotCommitted(int slot, int64 events, int64 rejected);

/* by anyone: a copy of every slot; false when aggr is not preloaded */
extern bool AggrSlotsRead(AggrWorkerSlot *slots);
extern int	AggrLiveWorkerCount(void);

#endif							/* AGGR_SLOTS_H */
