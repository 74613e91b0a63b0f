/*
 * bulk.h
 *		The bulk ingest path (bulk.c): a batch written to aggr.events with
 *		the table's multi-insert, as COPY writes, instead of one row at a time
 *		by an INSERT ... ON CONFLICT statement.
 *
 * The protocol, which keeps "the first version of a key wins, once":
 *
 * 1. Sort the batch by key, then by position; a key's later copies in the
 *	  batch are duplicates.
 * 2. Pre-check each key against the primary key with a dirty snapshot, as
 *	  ON CONFLICT does: a committed row, or one of this transaction, makes
 *	  the event a duplicate; a row of a transaction in progress is waited
 *	  for, then checked again.  Nothing of this batch is written yet, so
 *	  nobody can be waiting for it: this wait cannot close a deadlock.
 * 3. Insert the new rows' heap tuples in one multi-insert (one WAL record
 *	  per page), then their index entries, the primary key's with a partial
 *	  unique check: a writer that inserted one of the keys since step 2 is
 *	  noticed there, in the index page, under its lock, without waiting.
 * 4. If any was, the batch raises AGGR_BULK_CONFLICT; the caller runs every
 *	  batch in a subtransaction (ingest.c), whose rollback takes all of its
 *	  rows back, and ingests the batch again with the statement, whose
 *	  speculative insertion waits for the other writer.  Two bulk writers
 *	  that race for a key both notice it, both roll back: neither waits.
 *
 * The path is taken only where it is exactly the statement's equivalent.
 * What rules it out (a trigger or rule on aggr.events, row security, a
 * generated column, an exclusion constraint, a changed key or column, a
 * REPEATABLE READ snapshot) is named to the
 * caller, which then uses the statement; aggr.counters counts the events
 * the statement stores (bulk_fallback).
 */
#ifndef AGGR_BULK_H
#define AGGR_BULK_H

#include "postgres.h"

#include "ingest.h"

/* the message of the error step 4 raises, which the caller catches */
#define AGGR_BULK_CONFLICT "aggr bulk ingest met a concurrent writer of the same key"

/* What a bulk batch stored, per topic, in topic order ("C" collation). */
typedef struct AggrBulkCounts
{
	int			ntopics;
	Datum	   *topics;			/* text */
	int64	   *received;
	int64	   *stored;
	int64		stored_total;
} AggrBulkCounts;

/* Byte-wise order of two text Datums: the key columns' "C" collation. */
extern int	AggrCompareText(Datum a, Datum b);

/*
 * Writes the batch by the protocol above, in the current (sub)transaction.
 * Returns false, having written nothing, when the path cannot be taken, and
 * says why in *reason (a constant string).
 */
extern bool AggrBulkIngest(const AggrBatch *batch, AggrBulkCounts *counts,
						   const char **reason);

#endif							/* AGGR_BULK_H */
