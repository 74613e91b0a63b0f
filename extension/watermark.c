/*
 * watermark.c
 *		Gapless paging: the writers' watermark locks, the readers' watermark
 *		(aggr_events_watermark()), and the notification of new events.
 *		watermark.h states the protocol and why it holds.
 */
#include "postgres.h"

#include "aggr.h"
#include "watermark.h"

#include "catalog/namespace.h"
#include "commands/async.h"
#include "commands/sequence.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"

PG_FUNCTION_INFO_V1(aggr_events_watermark);

/*
 * Our locks are advisory locks of a kind no SQL call takes (pg_advisory_*
 * use 1 and 2 here), so they never meet a user's: pg_locks shows them as
 * locktype advisory, objsubid 24935 ("ag"), the key split over classid and
 * objid.  Writers share them: two writers may read the same last value.
 */
#define AGGR_WATERMARK_LOCK_KIND 0x6167
#define AGGR_WATERMARK_LOCKMODE AccessShareLock

/* the local transaction that holds its watermark lock already */
static LocalTransactionId held_in = InvalidLocalTransactionId;

/* the last value aggr.events' seq handed out, 0 before the first */
int64
AggrEventsLastSeq(void)
{
	Oid			seq = get_relname_relid("events_seq_seq", get_namespace_oid("aggr", false));

	LOCAL_FCINFO(fcinfo, 1);
	Datum		last;

	if (!OidIsValid(seq))
		elog(ERROR, "aggr.events_seq_seq is missing");
	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = ObjectIdGetDatum(seq);
	fcinfo->args[0].isnull = false;
	last = pg_sequence_last_value(fcinfo);
	return fcinfo->isnull ? 0 : DatumGetInt64(last);
}

static void
SetWatermarkTag(LOCKTAG *tag, int64 v)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) ((uint64) v >> 32),
						 (uint32) v, AGGR_WATERMARK_LOCK_KIND);
}

/*
 * Called before a transaction's first seq is drawn (every ingest calls it;
 * only the first in a transaction takes the lock).  The lock belongs to the
 * top transaction, so a subtransaction's rollback (a retried deadlock, a
 * consumer's element-by-element replay) does not drop it.
 */
void
AggrHoldWatermark(void)
{
	ResourceOwner owner = CurrentResourceOwner;
	LOCKTAG		tag;

	if (held_in == AggrLocalTransactionId())
		return;
	SetWatermarkTag(&tag, AggrEventsLastSeq());
	CurrentResourceOwner = TopTransactionResourceOwner;
	(void) LockAcquire(&tag, AGGR_WATERMARK_LOCKMODE, false, false);
	CurrentResourceOwner = owner;
	held_in = AggrLocalTransactionId();
}

/*
 * The watermark W (watermark.h): every event with seq <= W that will ever
 * commit has committed.  *pending: some seq above W was drawn already, so
 * W rises when the transactions holding it end, whether they commit or not.
 * Our own transaction's lock is left out: what it stored is ours to see.
 */
int64
AggrEventsWatermark(bool *pending)
{
	int64		last = AggrEventsLastSeq();
	int64		upto = last;
	LockData   *locks = GetLockStatusData();

	for (int i = 0; i < locks->nelements; i++)
	{
		const LockInstanceData *lock = &locks->locks[i];
		const LOCKTAG *tag = &lock->locktag;

		if (tag->locktag_type == LOCKTAG_ADVISORY &&
			tag->locktag_field4 == AGGR_WATERMARK_LOCK_KIND &&
			tag->locktag_field1 == MyDatabaseId &&
			lock->holdMask != 0 && lock->pid != MyProcPid)
		{
			int64		v = (int64) (((uint64) tag->locktag_field2 << 32) | tag->locktag_field3);

			upto = Min(upto, v);
		}
	}
	*pending = upto < last;
	return upto;
}

/*
 * After a batch stored events: LISTEN aggr_events hears of it once the
 * transaction commits (one notification per transaction, however many
 * batches; none if it rolls back), unless aggr.notify is off.
 */
void
AggrNotifyEventsStored(void)
{
	if (aggr_notify)
		Async_Notify(AGGR_EVENTS_CHANNEL, "");
}

/* aggr_events_watermark(OUT upto bigint, OUT pending boolean) */
Datum
aggr_events_watermark(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	bool		pending;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "aggr_events_watermark must return a record");
	values[0] = Int64GetDatum(AggrEventsWatermark(&pending));
	values[1] = BoolGetDatum(pending);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
