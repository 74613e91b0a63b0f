/*
 * slots.c
 *		The consumers' slots in shared memory; slots.h states the locking
 *		rules.
 */
#include "postgres.h"

#include "slots.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

typedef struct AggrSharedSlots
{
	LWLock	   *lock;
	AggrWorkerSlot workers[AGGR_MAX_WORKERS];
} AggrSharedSlots;

static AggrSharedSlots *shared = NULL;

static Size
SlotsSize(void)
{
	return MAXALIGN(sizeof(AggrSharedSlots));
}

void
AggrSlotsRequest(void)
{
	RequestAddinShmemSpace(SlotsSize());
	RequestNamedLWLockTranche("aggr", 1);
}

void
AggrSlotsStartup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("aggr", SlotsSize(), &found);
	if (!found)
	{
		memset(shared, 0, SlotsSize());
		shared->lock = &(GetNamedLWLockTranche("aggr"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

bool
AggrSlotsAttached(void)
{
	return shared != NULL;
}

static AggrWorkerSlot *
SlotOf(int slot)
{
	Assert(shared != NULL && slot >= 1 && slot <= AGGR_MAX_WORKERS);
	return &shared->workers[slot - 1];
}

void
AggrSlotStarted(int slot)
{
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	SlotOf(slot)->pid = MyProcPid;
	SlotOf(slot)->started_at = GetCurrentTimestamp();
	LWLockRelease(shared->lock);
}

/* from on_shmem_exit, so also after an error that ends the process */
void
AggrSlotExited(int slot)
{
	if (shared == NULL)
		return;
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	SlotOf(slot)->pid = 0;
	LWLockRelease(shared->lock);
}

void
AggrSlotBrokerUp(int slot, bool up)
{
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	SlotOf(slot)->broker_up = up;
	LWLockRelease(shared->lock);
}

void
AggrSlotCommitted(int slot, int64 events, int64 rejected)
{
	AggrWorkerSlot *w = SlotOf(slot);

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	w->batches++;
	w->events += events;
	w->rejected += rejected;
	w->last_commit = GetCurrentTimestamp();
	LWLockRelease(shared->lock);
}

bool
AggrSlotsRead(AggrWorkerSlot *slots)
{
	if (shared == NULL)
		return false;
	LWLockAcquire(shared->lock, LW_SHARED);
	memcpy(slots, shared->workers, sizeof(shared->workers));
	LWLockRelease(shared->lock);
	return true;
}

/* Consumers running now; 0 when aggr is not preloaded. */
int
AggrLiveWorkerCount(void)
{
	AggrWorkerSlot slots[AGGR_MAX_WORKERS];
	int			live = 0;

	if (!AggrSlotsRead(slots))
		return 0;
	for (int i = 0; i < AGGR_MAX_WORKERS; i++)
		live += (slots[i].pid != 0);
	return live;
}
