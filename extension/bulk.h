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
 *	  for (no page pinned), then checked again.  Every writer, this path and
 *	  the statement, takes keys in the same ("C") order, so among
 *	  single-batch transactions such a wait cannot close a cycle.
 * 3. Insert the new rows' heap tuples in one multi-insert (one WAL record
 *	  per page), then their index entries, the primary key's with a partial
 *	  unique check: a writer that inserted one of the keys since step 2 is
 *	  noticed there, in the key's index page, under its lock, without
 *	  waiting.  Of two writers racing for a key, the later inserter notices.
 *	  Steps 2 and 3 go a chunk of rows at a time, to keep that window short.
 * 4. If a key was taken, the batch raises AGGR_BULK_CONFLICT; the caller
 *	  runs every batch in a subtransaction (ingest.c), whose rollback takes
 *	  all of its rows back, and tries it again: by this path once more,
 *	  whose pre-check now finds the other writer's row and waits for it,
 *	  then by the statement, whose speculative insertion waits by itself.
 *
 * The path is taken only where it is exactly the statement's equivalent.
 * What rules it out (a trigger, rule, CHECK constraint, generated column,
 * exclusion constraint or second unique index on aggr.events, row
 * security, a changed key or column, a volatile default, a REPEATABLE
 * READ snapshot) is named
 * to the caller, which then uses the statement; aggr.counters counts the
 * events the statement receives (bulk_fallback).
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
