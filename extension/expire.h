/*
 * expire.h
 *		Retention (expire.c): events ingested longer ago than aggr.retention
 *		expire, and the keys of expired events are forgotten once
 *		aggr.dedup_window has passed.  The background worker
 *		(bgworker/expiry.c) and aggr_expire() run the same batches.
 *
 * An event expires in place: one UPDATE empties its payload and sets
 * expired_at.  The row, now a tombstone, keeps its key in the primary key, so
 * a re-sent event meets it there through ingest's ON CONFLICT DO NOTHING
 * exactly as before expiry: there is no moment at which the key is in neither
 * place, hence no race with ingest.  Once aggr.dedup_window has passed since
 * expired_at, the tombstone is deleted and the key forgotten: an event
 * re-sent after that is stored as new.  With aggr.dedup_window = 0, expiry
 * deletes the event at once.  No index holds payload or expired_at, so the
 * UPDATE is a HOT one (no index entry added) where the page has room: at
 * the default fillfactor of 100 few are; set to 80, most are.
 *
 * Order.  A batch locks aggr.expiry's row (so expiries run one at a time),
 * reads the watermark W (watermark.h), then takes the live events after
 * aggr.expiry.expired_upto, up to W, in seq order.  Every transaction that
 * drew a seq <= W has ended, so the batch's snapshot, taken after W, holds
 * every event with seq <= W that will ever exist.  The batch expires the
 * prefix ingested before the cutoff, stops at the first younger event, and
 * moves expired_upto to the last seq it expired (to W when it took every
 * event up to W): every event at or below it is expired, so the next batch
 * starts there, and so do readers (aggr_events_page), who never walk
 * tombstones.  TRUNCATE aggr.events sets the marks back to 0 (a trigger); a
 * mark above the sequence's value (the sequence restarted by hand) makes the
 * next batch start again from 0.  Forgetting walks the tombstones between
 * forgotten_upto and expired_upto the same
 * way.  An event is therefore expired no sooner than aggr.retention after
 * its ingest (later when an older transaction holds W, or when younger
 * events sit before it in seq), and forgotten no sooner than
 * aggr.dedup_window after its expiry.
 *
 * Counts.  The statement that expires also adds what it expired to counter
 * shard -1, which no ingest writes, so unique_processed = live events +
 * expired at every commit.  Expiry never waits for an ingest: no ingest locks
 * a committed event, shard -1 or aggr.expiry.  An ingest of a duplicate of an
 * event being expired waits for that one batch to commit.
 */
#ifndef AGGR_EXPIRE_H
#define AGGR_EXPIRE_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* Events (and tombstones) one batch handles: a short transaction. */
#define AGGR_EXPIRE_BATCH 1000

/* aggr.dedup_window's value for "remember keys forever" */
#define AGGR_DEDUP_FOREVER (-1)

typedef struct AggrExpiryResult
{
	int64		expired;
	int64		forgotten;
	bool		more_to_expire; /* the batch was full: call again at once */
	bool		more_to_forget;
	bool		busy;			/* another expiry holds aggr.expiry (wait =
								 * false) */
} AggrExpiryResult;

/* True when aggr.retention or aggr.dedup_window gives expiry work to do. */
extern bool AggrRetentionEnabled(void);

/* Events ingested before this expire per aggr.retention (DT_NOBEGIN: none). */
extern TimestampTz AggrRetentionCutoff(TimestampTz now);

/*
 * One batch in the current transaction, which must be READ COMMITTED:
 * expire up to expire_limit live events ingested before expire_before
 * (DT_NOBEGIN: none), then forget up to AGGR_EXPIRE_BATCH tombstones per
 * aggr.dedup_window.  wait: wait for another expiry's batch to end, or else
 * return busy.  When nothing is due it writes nothing.
 */
extern void AggrExpireBatch(TimestampTz expire_before, int expire_limit, bool wait,
							AggrExpiryResult *result);

#endif							/* AGGR_EXPIRE_H */
