/*
 * bulk.c
 *		The bulk ingest path: the protocol is in bulk.h.
 *
 * The rows are built here the way the INSERT statement builds them: the
 * batch fills topic, event_id, timestamp, source and payload, and every
 * other column gets its default (ingested_at's now(), seq's identity, and
 * whatever a user added), then NOT NULL and CHECK constraints are checked.
 * The table's own machinery does the rest: the access method's
 * multi-insert, and the executor's index insertion for every index.
 */
#include "postgres.h"

#include "aggr.h"
#include "bulk.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

/* the columns the batch fills, in the order of AggrBatch's arrays */
#define BATCH_COLUMNS 5
static const struct
{
	const char *name;
	Oid			type;
}			batch_columns[BATCH_COLUMNS] =

{
	{"topic", TEXTOID},
	{"event_id", TEXTOID},
	{"timestamp", TIMESTAMPTZOID},
	{"source", TEXTOID},
	{"payload", JSONBOID},
};

static int
CompareBytes(const char *x, int lx, const char *y, int ly)
{
	int			c = memcmp(x, y, Min(lx, ly));

	return c != 0 ? c : (lx > ly) - (lx < ly);
}

int
AggrCompareText(Datum a, Datum b)
{
	text	   *x = DatumGetTextPP(a);
	text	   *y = DatumGetTextPP(b);

	return CompareBytes(VARDATA_ANY(x), VARSIZE_ANY_EXHDR(x), VARDATA_ANY(y), VARSIZE_ANY_EXHDR(y));
}

/* An event's key, read once for the sort: the comparisons need no detoasting. */
typedef struct SortedEvent
{
	const char *topic;
	const char *event_id;
	int			topic_len;
	int			event_id_len;
	int			position;		/* in the batch */
} SortedEvent;

static int
CompareKeys(const SortedEvent *x, const SortedEvent *y)
{
	int			c = CompareBytes(x->topic, x->topic_len, y->topic, y->topic_len);

	return c != 0 ? c : CompareBytes(x->event_id, x->event_id_len, y->event_id, y->event_id_len);
}

/* The statement's order: key, then position in the batch. */
static int
CompareEvents(const void *a, const void *b)
{
	const SortedEvent *x = a,
			   *y = b;
	int			c = CompareKeys(x, y);

	return c != 0 ? c : (x->position > y->position) - (x->position < y->position);
}

/* Step 1: the batch's events in the statement's order. */
static SortedEvent *
SortBatch(const AggrBatch *batch)
{
	SortedEvent *sorted = palloc(batch->nevents * sizeof(SortedEvent));

	for (int i = 0; i < batch->nevents; i++)
	{
		text	   *topic = DatumGetTextPP(batch->topics[i]);
		text	   *event_id = DatumGetTextPP(batch->event_ids[i]);

		sorted[i].topic = VARDATA_ANY(topic);
		sorted[i].topic_len = VARSIZE_ANY_EXHDR(topic);
		sorted[i].event_id = VARDATA_ANY(event_id);
		sorted[i].event_id_len = VARSIZE_ANY_EXHDR(event_id);
		sorted[i].position = i;
	}
	qsort(sorted, batch->nevents, sizeof(SortedEvent), CompareEvents);
	return sorted;
}

/*
 * Why the table cannot take the bulk path, or NULL; fills columns[] with
 * the attribute numbers of the batch's columns.
 */
static const char *
TableUnsafeReason(Relation rel, AttrNumber *columns)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TriggerDesc *triggers = rel->trigdesc;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition ||
		rel->rd_tableam != GetHeapamTableAmRoutine())
		return "aggr.events is not a plain heap table";
	if (rel->rd_rules != NULL)
		return "aggr.events has a rule";
	if (triggers != NULL &&
		(triggers->trig_insert_before_row || triggers->trig_insert_after_row ||
		 triggers->trig_insert_instead_row || triggers->trig_insert_before_statement ||
		 triggers->trig_insert_after_statement || triggers->trig_insert_new_table))
		return "aggr.events has an insert trigger";
	if (rel->rd_rel->relrowsecurity)
		return "aggr.events has row security";

	/*
	 * The statement checks every event against a CHECK constraint, the
	 * duplicates too; the bulk path builds rows only for new events.
	 */
	if (rel->rd_rel->relchecks > 0)
		return "aggr.events has a check constraint";
	if (desc->constr != NULL && desc->constr->has_generated_stored)
		return "aggr.events has a generated column";
#if PG_VERSION_NUM >= 180000
	if (desc->constr != NULL && desc->constr->has_generated_virtual)
		return "aggr.events has a generated column";
#endif
	for (int c = 0; c < BATCH_COLUMNS; c++)
	{
		columns[c] = InvalidAttrNumber;
		for (int a = 0; a < desc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, a);

			if (!att->attisdropped && strcmp(NameStr(att->attname), batch_columns[c].name) == 0)
			{
				/* a typmod would need the statement's assignment coercion */
				if (att->atttypid == batch_columns[c].type && att->atttypmod == -1)
					columns[c] = att->attnum;
				break;
			}
		}
		if (columns[c] == InvalidAttrNumber)
			return "aggr.events' columns changed";
	}
	return NULL;
}

/*
 * Builds the default of every column the batch does not fill, as INSERT
 * does; why that cannot be done here, or NULL.
 */
static const char *
DefaultsUnsafeReason(Relation rel, const AttrNumber *columns, ExprState **defaults)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);
		Expr	   *expr;
		bool		filled = false;

		for (int c = 0; c < BATCH_COLUMNS; c++)
			filled |= (columns[c] == a + 1);
		if (filled || att->attisdropped)
			continue;
		expr = (Expr *) build_column_default(rel, a + 1);

		/*
		 * The statement evaluates defaults for every event, duplicates too,
		 * this path only for new ones: a volatile default (but seq's
		 * identity, whose values only order events) would get other values.
		 */
		if (expr != NULL && att->attidentity == '\0' && contain_volatile_functions((Node *) expr))
			return "a column of aggr.events has a volatile default";
		if (expr != NULL)
			defaults[a] = ExecInitExpr(expression_planner(expr), NULL);

		/*
		 * NULL: the statement would fail every event, duplicates too, or
		 * coerce the NULL to a domain.
		 */
		else if (att->attnotnull || get_typtype(att->atttypid) == TYPTYPE_DOMAIN)
			return "a column of aggr.events that events do not fill has no default";
	}
	return NULL;
}

/*
 * Step 1 sorts and deduplicates keys byte by byte: equal keys must be equal
 * bytes, as in a deterministic collation.
 */
static bool
KeyCollationIsBytewise(Oid collation)
{
	return OidIsValid(collation) && get_collation_isdeterministic(collation);
}

/*
 * Why the table's indexes rule the bulk path out, or NULL; *key: the
 * position in rri of the primary key on (topic, event_id), which step 2
 * reads.
 */
static const char *
IndexUnsafeReason(ResultRelInfo *rri, const AttrNumber *columns, int *key)
{
	*key = -1;
	for (int i = 0; i < rri->ri_NumIndices; i++)
	{
		Form_pg_index index = rri->ri_IndexRelationDescs[i]->rd_index;
		IndexInfo  *info = rri->ri_IndexRelationInfo[i];

		/* checked after the insert, which step 3 does not do */
		if (info->ii_ExclusionOps != NULL)
			return "aggr.events has an exclusion constraint";
		if (index->indisprimary)
		{
			if (!index->indimmediate || !index->indisvalid || index->indnkeyatts != 2 ||
				index->indkey.values[0] != columns[0] || index->indkey.values[1] != columns[1] ||
				info->ii_Expressions != NIL || info->ii_Predicate != NIL)
				return "aggr.events' primary key is not (topic, event_id), immediate";
			if (!KeyCollationIsBytewise(rri->ri_IndexRelationDescs[i]->rd_indcollation[0]) ||
				!KeyCollationIsBytewise(rri->ri_IndexRelationDescs[i]->rd_indcollation[1]))
				return "aggr.events' key is in a nondeterministic collation";
			*key = i;
		}

		/* step 2 reads the primary key only */
		else if (index->indisunique)
			return "aggr.events has a unique index besides its primary key";
	}
	return *key >= 0 ? NULL : "aggr.events has no primary key";
}

/* Why this transaction cannot take the bulk path, or NULL. */
static const char *
TransactionUnsafeReason(void)
{
	/*
	 * With one snapshot for the whole transaction, ON CONFLICT fails with a
	 * serialization error where the conflicting row is not in the snapshot;
	 * the pre-check would take it for a duplicate.
	 */
	if (IsolationUsesXactSnapshot())
		return "a REPEATABLE READ or SERIALIZABLE transaction";
	return NULL;
}

/* aggr.events open for the bulk path */
typedef struct BulkTarget
{
	Relation	rel;
	TupleDesc	desc;			/* a copy: slots of it need no pin */
	EState	   *estate;
	ResultRelInfo *rri;
	AttrNumber	columns[BATCH_COLUMNS];
	ExprState **defaults;		/* per attribute, NULL: filled or none */
	ExprContext *defaults_context;

	/* step 2: one scan of the primary key, rescanned for each key */
	Relation	key_index;
	IndexInfo  *key_info;
	SnapshotData dirty;
	ScanKeyData keys[2];
	IndexScanDesc scan;
	TupleTableSlot *existing;
} BulkTarget;

/* Ends step 2's scan: no index or heap page stays pinned. */
static void
EndProbe(BulkTarget *target)
{
	ExecClearTuple(target->existing);
	if (target->scan != NULL)
		index_endscan(target->scan);
	target->scan = NULL;
}

static void
CloseTarget(BulkTarget *target)
{
	if (target->existing != NULL)
	{
		EndProbe(target);
		ExecDropSingleTupleTableSlot(target->existing);
	}
	ExecCloseIndices(target->rri);
	FreeExecutorState(target->estate);
	table_close(target->rel, NoLock);
}

/* Opens aggr.events; NULL, or why the path cannot be taken (then closed). */
static const char *
OpenTarget(BulkTarget *target, Oid relid)
{
	const char *reason;
	int			key;
	Oid			counters;

	memset(target, 0, sizeof(*target));
	target->rel = table_open(relid, RowExclusiveLock);

	/*
	 * The counters are written last, but locked now, as the statement locks
	 * every table it writes before it starts: a session holding a lock on
	 * aggr.counters then stops this batch before it has inserted anything,
	 * which nobody can come to wait for.
	 */
	counters = get_relname_relid("counters", RelationGetNamespace(target->rel));
	if (OidIsValid(counters))
		LockRelationOid(counters, RowExclusiveLock);
	if (pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, RelationGetRelationName(target->rel));
	target->estate = CreateExecutorState();
	target->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(target->rri, target->rel, 0, NULL, 0);
	ExecOpenIndices(target->rri, true);
	target->defaults = palloc0(RelationGetDescr(target->rel)->natts * sizeof(ExprState *));
	if ((reason = TableUnsafeReason(target->rel, target->columns)) != NULL ||
		(reason = IndexUnsafeReason(target->rri, target->columns, &key)) != NULL ||
		(reason = DefaultsUnsafeReason(target->rel, target->columns, target->defaults)) != NULL)
	{
		CloseTarget(target);
		return reason;
	}
	target->desc = CreateTupleDescCopyConstr(RelationGetDescr(target->rel));
	target->defaults_context = CreateExprContext(target->estate);

	target->key_index = target->rri->ri_IndexRelationDescs[key];
	target->key_info = target->rri->ri_IndexRelationInfo[key];
	InitDirtySnapshot(target->dirty);
	for (int i = 0; i < 2; i++)
		ScanKeyEntryInitialize(&target->keys[i], 0, i + 1, target->key_info->ii_UniqueStrats[i],
							   InvalidOid, target->key_index->rd_indcollation[i],
							   target->key_info->ii_UniqueProcs[i], (Datum) 0);
	target->existing = MakeSingleTupleTableSlot(target->desc, table_slot_callbacks(target->rel));
	return NULL;
}

/*
 * Step 2 for one key: true when no row holds it, false when a committed row
 * or one of this transaction does.  A row that a transaction in progress
 * inserts or deletes is waited for, with the scan ended (no page pinned
 * while waiting), then the key is read again.
 */
static bool
KeyIsNew(BulkTarget *target, Datum topic, Datum event_id)
{
	for (;;)
	{
		TransactionId xwait;
		ItemPointerData tid;
		uint32		token;

		if (target->scan == NULL)
#if PG_VERSION_NUM >= 180000
			target->scan = index_beginscan(target->rel, target->key_index, &target->dirty,
										   NULL, 2, 0);
#else
			target->scan = index_beginscan(target->rel, target->key_index, &target->dirty,
										   2, 0);
#endif
		target->keys[0].sk_argument = topic;
		target->keys[1].sk_argument = event_id;
		index_rescan(target->scan, target->keys, 2, NULL, 0);
		if (!index_getnext_slot(target->scan, ForwardScanDirection, target->existing))
			return true;
		xwait = TransactionIdIsValid(target->dirty.xmin) ? target->dirty.xmin : target->dirty.xmax;
		if (!TransactionIdIsValid(xwait))
			return false;
		tid = target->existing->tts_tid;
		token = target->dirty.speculativeToken;
		EndProbe(target);
		if (token != 0)
			SpeculativeInsertionWait(xwait, token);
		else
			XactLockTableWait(xwait, target->rel, &tid, XLTW_InsertIndex);
	}
}

/* The row of event i: the batch's columns, then the defaults, checked. */
static void
FormRow(BulkTarget *target, const AggrBatch *batch, int i, TupleTableSlot *slot)
{
	TupleDesc	desc = target->desc;
	const AttrNumber *columns = target->columns;

	ExecClearTuple(slot);
	memset(slot->tts_isnull, true, desc->natts * sizeof(bool));
	slot->tts_values[columns[0] - 1] = batch->topics[i];
	slot->tts_values[columns[1] - 1] = batch->event_ids[i];
	slot->tts_values[columns[2] - 1] = batch->timestamps[i];
	slot->tts_values[columns[3] - 1] = batch->sources[i];
	slot->tts_values[columns[4] - 1] = batch->payloads[i];
	for (int c = 0; c < BATCH_COLUMNS; c++)
		slot->tts_isnull[columns[c] - 1] = false;
	for (int a = 0; a < desc->natts; a++)
		if (target->defaults[a] != NULL)
			slot->tts_values[a] = ExecEvalExprSwitchContext(target->defaults[a],
															target->defaults_context,
															&slot->tts_isnull[a]);
	ExecStoreVirtualTuple(slot);
	if (desc->constr != NULL)
		ExecConstraints(target->rri, slot, target->estate);
}

/* One index's entries for a chunk of rows; false if the key index's check failed. */
static bool
InsertIndexEntries(BulkTarget *target, int i, TupleTableSlot **slots, int n)
{
	Relation	index = target->rri->ri_IndexRelationDescs[i];
	IndexInfo  *info = target->rri->ri_IndexRelationInfo[i];
	ExprContext *econtext = GetPerTupleExprContext(target->estate);
	bool		is_key = (index == target->key_index);

	if (!info->ii_ReadyForInserts)
		return true;
	if (info->ii_Predicate != NIL && info->ii_PredicateState == NULL)
		info->ii_PredicateState = ExecPrepareQual(info->ii_Predicate, target->estate);
	for (int j = 0; j < n; j++)
	{
		Datum		values[INDEX_MAX_KEYS];
		bool		isnull[INDEX_MAX_KEYS];

		econtext->ecxt_scantuple = slots[j];
		if (info->ii_PredicateState != NULL && !ExecQual(info->ii_PredicateState, econtext))
			continue;
		FormIndexDatum(info, slots[j], target->estate, values, isnull);

		/*
		 * every other index is not unique: the bulk path is not taken
		 * otherwise
		 */
		if (!index_insert(index, values, isnull, &slots[j]->tts_tid, target->rel,
						  is_key ? UNIQUE_CHECK_PARTIAL : UNIQUE_CHECK_NO, false, info) &&
			is_key)
			return false;
	}
	return true;
}

/*
 * Step 3 for a chunk of new rows, and step 4 if a key is no longer new.  The
 * key's entries go first, so that a conflict is found before the other
 * indexes get entries; and index by index, each in the rows' order, which
 * is also each index's own (seq grows with the key), so that a descent
 * finds the last one's pages in the CPU's cache.
 */
static void
InsertRows(BulkTarget *target, TupleTableSlot **slots, int n)
{
	ResultRelInfo *rri = target->rri;
	int			key = -1;
	MemoryContext caller = MemoryContextSwitchTo(GetPerTupleMemoryContext(target->estate));

	/* what it allocates lasts until the chunk's reset, as in COPY */
	table_multi_insert(target->rel, slots, n, GetCurrentCommandId(true), 0, NULL);
	MemoryContextSwitchTo(caller);
	for (int i = 0; i < rri->ri_NumIndices; i++)
		if (rri->ri_IndexRelationDescs[i] == target->key_index)
			key = i;
	if (!InsertIndexEntries(target, key, slots, n))
		ereport(ERROR,
				errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				errmsg(AGGR_BULK_CONFLICT));
	for (int i = 0; i < rri->ri_NumIndices; i++)
		if (i != key)
			(void) InsertIndexEntries(target, i, slots, n);
}

/*
 * aggr.test_bulk_pause = N: the isolation specs hold pg_advisory_lock(N) to
 * stop a writer between its first chunk's pre-check and insert, where it
 * waits for the lock in share mode.
 */
static void
TestPause(void)
{
	LOCKTAG		tag;

	if (aggr_test_bulk_pause == 0)
		return;
	/* pg_advisory_lock(bigint)'s tag */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, (uint32) aggr_test_bulk_pause, 1);
	(void) LockAcquire(&tag, ShareLock, false, false);
	LockRelease(&tag, ShareLock, false);
}

/*
 * Rows go in chunks of this many: a chunk's keys are checked just before
 * they are inserted, so a concurrent writer of one of them rarely slips in
 * between (step 4), while the heap still gets a multi-insert.
 */
#define BULK_CHUNK_ROWS 50

bool
AggrBulkIngest(const AggrBatch *batch, AggrBulkCounts *counts, const char **reason)
{
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext context;
	Oid			relid;
	BulkTarget	target;
	int			n = batch->nevents;
	SortedEvent *sorted;
	bool	   *stored;
	TupleTableSlot *slots[BULK_CHUNK_ROWS];
	int			nslots = 0;
	int			nchunk = 0;
	int64		nstored = 0;

	if ((*reason = TransactionUnsafeReason()) != NULL)
		return false;
	relid = get_relname_relid("events", get_namespace_oid("aggr", false));
	if (!OidIsValid(relid))
	{
		*reason = "aggr.events is missing";
		return false;
	}
	/* in the (sub)transaction's context: an error frees it with its rollback */
	context = AllocSetContextCreate(CurTransactionContext, "aggr bulk ingest",
									ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(context);
	if ((*reason = OpenTarget(&target, relid)) != NULL)
	{
		MemoryContextSwitchTo(caller);
		MemoryContextDelete(context);
		return false;
	}

	sorted = SortBatch(batch);

	/* 2. and 3., chunk by chunk; seq is drawn only for new rows, in key order */
	stored = palloc0(n * sizeof(bool));
	for (int k = 0; k < n; k++)
	{
		int			i = sorted[k].position;

		CHECK_FOR_INTERRUPTS();
		if (!(k > 0 && CompareKeys(&sorted[k], &sorted[k - 1]) == 0) &&
			KeyIsNew(&target, batch->topics[i], batch->event_ids[i]))
		{
			if (nchunk == nslots)
				slots[nslots++] = MakeSingleTupleTableSlot(target.desc,
														   table_slot_callbacks(target.rel));
			FormRow(&target, batch, i, slots[nchunk++]);
			stored[k] = true;
		}
		if (nchunk == BULK_CHUNK_ROWS || (k == n - 1 && nchunk > 0))
		{
			EndProbe(&target);
			if (nstored == 0)
				TestPause();
			InsertRows(&target, slots, nchunk);
			nstored += nchunk;
			nchunk = 0;
			ResetExprContext(target.defaults_context);
			ResetPerTupleExprContext(target.estate);
		}
	}

	/* what was stored, per topic: the sort put each topic's events together */
	MemoryContextSwitchTo(caller);
	counts->ntopics = 0;
	counts->topics = palloc(n * sizeof(Datum));
	counts->received = palloc(n * sizeof(int64));
	counts->stored = palloc(n * sizeof(int64));
	counts->stored_total = nstored;
	for (int k = 0; k < n; k++)
	{
		int			i = sorted[k].position;
		int			t = counts->ntopics - 1;

		if (k == 0 || CompareBytes(sorted[k].topic, sorted[k].topic_len,
								   sorted[k - 1].topic, sorted[k - 1].topic_len) != 0)
		{
			t = counts->ntopics++;
			counts->topics[t] = batch->topics[i];
			counts->received[t] = 0;
			counts->stored[t] = 0;
		}
		counts->received[t]++;
		counts->stored[t] += stored[k];
	}

	for (int j = 0; j < nslots; j++)
		ExecDropSingleTupleTableSlot(slots[j]);
	CloseTarget(&target);
	MemoryContextDelete(context);
	return true;
}
