/*
 * watermark.h
 *		Gapless paging of aggr.events by seq (watermark.c).
 *
 * seq is drawn when a row is inserted, not when it commits, so a reader can
 * see seq 12 committed while seq 11 is still in an open transaction; a
 * reader that paged past 12 would never see 11.  A page therefore ends at
 * the watermark: the highest seq below which every transaction that drew a
 * seq has ended.  The protocol:
 *
 * - A writer, once per transaction and before it draws its first seq, reads
 *	 the sequence's last value v and holds the lock (aggr watermark, v)
 *	 until its transaction ends.  Every seq it draws is greater than v (the
 *	 sequence has CACHE 1, so a later draw is above every earlier one).
 * - A reader first reads the last value L, then lists the watermark locks,
 *	 and returns W = min(L, every other transaction's v).  Then it reads
 *	 the page (seq <= W) with a snapshot taken after the list.
 *
 * Why nothing below W is missed: take a transaction T that drew s <= W.
 * If its lock was listed, s > v_T >= W, a contradiction.  If its lock was
 * taken after the list, T read v_T and drew s after the reader read L, so
 * s > L >= W, again a contradiction.  So T's lock was gone when the list
 * was taken: T had ended (locks are released after the commit is visible),
 * and the page's later snapshot sees all of T or none of it, forever.
 *
 * W is not monotonic: a writer that read v, then a reader that listed no
 * lock, then the writer's lock, makes the next W lower than the last.  A
 * page must therefore be cut and continued with one and the same W
 * (aggr_events_page() returns the W it cut at).
 *
 * A transaction holds the watermark from its first ingest to its end, so
 * one left open holds every reader's pages at it (by design: its events may
 * still commit).  Locks live on the primary, so a standby cannot page this
 * way; and a snapshot older than the list (REPEATABLE READ) cannot use W.
 */
#ifndef AGGR_WATERMARK_H
#define AGGR_WATERMARK_H

#include "postgres.h"

/* the channel notified after every commit that stored events */
#define AGGR_EVENTS_CHANNEL "aggr_events"

/* ingest: before the first seq of a transaction */
extern void AggrHoldWatermark(void);

/* readers and expiry: W, and the last seq handed out (0 before the first) */
extern int64 AggrEventsWatermark(bool *pending);
extern int64 AggrEventsLastSeq(void);

/* ingest: after a batch stored events */
extern void AggrNotifyEventsStored(void);

#endif							/* AGGR_WATERMARK_H */
