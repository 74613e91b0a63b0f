/*
 * consumer.c
 *		The consumer background workers: take a batch of elements from the
 *		Redis queue, ingest it through the ingest core in one transaction,
 *		then acknowledge it.
 *
 * Protocol of consumer k, with Q = aggr.queue_key:
 *   Q:processing:k   elements k has taken and not yet acknowledged
 *   Q:token:k        the random token that names that batch
 * 1. Take.  One script moves up to aggr.batch_size elements from Q to the
 *    processing list and sets a token for them.  When Q is empty, a BLMOVE
 *    from Q's tail to its own tail (it moves nothing) first waits for an
 *    element, on the socket and the latch, so SIGTERM and SIGHUP are
 *    honoured at once.  A crash at any instant leaves every element in Redis.
 * 2. Ingest.  One transaction stores the events, dead-letters the elements
 *    that are not valid events into aggr.rejected, and records the token as
 *    aggr.consumers.last_token of slot k.  It commits with synchronous_commit
 *    on: an acknowledgement must never outlive a lost commit.
 * 3. Acknowledge.  The next take first deletes the processing list and the
 *    token, if the token is still the one that was ingested: one round trip
 *    per batch.
 * A consumer whose processing list is not empty (it died, or lost Redis, after
 * taking) first asks whether that token was committed: if so it only
 * acknowledges, so a redelivery never counts an event twice; if not it
 * ingests the list again.  Consumer 1 also adopts the lists of slots above
 * aggr.worker_count, left behind when the pool shrank.
 */
#include "postgres.h"

#include "../extension/aggr.h"

#include <hiredis/hiredis.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PGDLLEXPORT void AggrConsumerMain(Datum main_arg);

/* Longest wait between retries after a failure. */
#define AGGR_MAX_BACKOFF_MS 5000

/*
 * The take script.  KEYS: queue, processing list, token key, the queue's
 * envelopes hash (aggr.h).  ARGV: a fresh token, the batch size in events,
 * whether to move elements from the queue, the token of the batch to
 * acknowledge first ('' for none), and the largest envelope (an element
 * declaring more, or fewer than 2, counts as 1, as ElementEventCount says).
 *
 * Acknowledging means deleting the list and the token, if the token is still
 * that one.  Elements are moved only into an empty list without a token: a
 * list with a token may already be committed and is replayed exactly as it
 * is; a list without one (left by an older aggr, whose wait moved an
 * element into it) gets its token as it is.  A token without a list (someone
 * deleted the list) is dropped, so the list's next batch gets a new token.  Moving is SORT ... BY nosort
 * LIMIT ... STORE, which copies a range of the queue in C: no element goes
 * through Lua (about 1.5 ns a byte each way) and the AOF logs the command,
 * not the elements.  While the queue holds none of aggr's envelopes, a batch is the
 * first batch-size elements; otherwise the script reads the head to take a run
 * of plain events, or whole envelopes (at least one) while they fit.  The
 * envelopes leave the hash when their list gets its token, which happens once
 * per element.  Returns {token, acknowledged, fresh}; fresh = 1 when the token
 * was set just now, so the batch cannot have been committed.  The caller reads
 * the list with an LRANGE sent right behind the script.
 */
static const char *const take_script =
"local max = tonumber(ARGV[5]) "
"local function event_count(e) "
"  local n = tonumber(string.match(e, '^" AGGR_ENVELOPE_PREFIX "(%d+),')) "
"  if n and n >= 2 and n <= max then return n end "
"  return 1 "
"end "
"local acked = 0 "
"if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then "
"  redis.call('DEL', KEYS[2], KEYS[3]) acked = 1 "
"end "
"local tok = redis.call('GET', KEYS[3]) "
"local have = redis.call('LLEN', KEYS[2]) "
"if tok and have > 0 then return {tok, acked, 0} end "
"if tok then redis.call('DEL', KEYS[3]) end "
"local envelopes, extra = 0, 0 "
"if have > 0 then "
"  for _, e in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do "
"    local n = event_count(e) "
"    if n > 1 then envelopes = envelopes + 1 extra = extra + n - 1 end "
"  end "
"elseif ARGV[3] == '1' then "
"  local want = tonumber(ARGV[2]) "
"  local take = 0 "
"  if (tonumber(redis.call('HGET', KEYS[4], 'count')) or 0) <= 0 then "
"    take = want "
"  else "
"    local head = redis.call('LINDEX', KEYS[1], 0) "
"    if head and event_count(head) == 1 then "
"      for _, e in ipairs(redis.call('LRANGE', KEYS[1], 0, want - 1)) do "
"        if event_count(e) > 1 then break end "
"        take = take + 1 "
"      end "
"    elseif head then "
"      local events, e = 0, head "
"      while e do "
"        local n = event_count(e) "
"        if n == 1 or (events > 0 and events + n > want) then break end "
"        take = take + 1 events = events + n envelopes = envelopes + 1 extra = extra + n - 1 "
"        if events >= want then break end "
"        e = redis.call('LINDEX', KEYS[1], take) "
"      end "
"    end "
"  end "
"  if take > 0 then "
"    have = redis.call('SORT', KEYS[1], 'BY', 'nosort', 'LIMIT', 0, take, 'STORE', KEYS[2]) "
"    if have > 0 then redis.call('LTRIM', KEYS[1], have, -1) end "
"  end "
"end "
"if have == 0 then return {'', acked, 0} end "
"if envelopes > 0 then "
"  local count = (tonumber(redis.call('HGET', KEYS[4], 'count')) or 0) - envelopes "
"  local left = (tonumber(redis.call('HGET', KEYS[4], 'extra_events')) or 0) - extra "
"  if count > 0 and left > 0 then "
"    redis.call('HSET', KEYS[4], 'count', count, 'extra_events', left) "
"  else "
"    redis.call('DEL', KEYS[4]) "
"  end "
"end "
"redis.call('SET', KEYS[3], ARGV[1]) "
"return {ARGV[1], acked, 1}";

/* One taken batch, copied out of hiredis memory. */
typedef struct TakenBatch
{
	bool		acknowledged;	/* the batch named by the ack token was */
	bool		fresh;			/* the token is new: never committed */
	char	   *token;
	int			nelements;
	char	  **elements;
	int		   *lengths;
} TakenBatch;

static int	my_slot;			/* 1-based */
static redisContext *redis = NULL;
static bool broker_was_down = false;
static int	backoff_ms = 0;

/*
 * My last committed batch, acknowledged by the next take (one round trip
 * per batch instead of two).  Lives in TopMemoryContext.
 */
static char *unacked_token = NULL;

/* consumer 1 has yet to adopt the lists of slots beyond the pool */
static bool adopt_pending = false;

static void
CloseRedis(int code, Datum arg)
{
	if (redis != NULL)
		redisFree(redis);
	redis = NULL;
	if (aggr_shared != NULL)
	{
		LWLockAcquire(aggr_shared->lock, LW_EXCLUSIVE);
		aggr_shared->workers[my_slot - 1].pid = 0;
		LWLockRelease(aggr_shared->lock);
	}
}

static void
SetBrokerUp(bool up)
{
	LWLockAcquire(aggr_shared->lock, LW_EXCLUSIVE);
	aggr_shared->workers[my_slot - 1].broker_up = up;
	LWLockRelease(aggr_shared->lock);
}

/* Logs a broker failure once per outage, drops the connection. */
static void
BrokerFailed(const char *what)
{
	if (!broker_was_down)
		ereport(LOG,
				(errmsg("aggr consumer %d: lost the broker: %s", my_slot, what),
				 errdetail("Taken elements stay in Redis; retrying with backoff.")));
	broker_was_down = true;
	adopt_pending = (my_slot == 1);
	if (redis != NULL)
		redisFree(redis);
	redis = NULL;
	SetBrokerUp(false);
}

/* Applies a reload (SIGHUP) before the next batch, not after it. */
static void
ReloadIfPending(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* Sleeps on the latch, doubling the backoff up to its cap. */
static void
Backoff(void)
{
	backoff_ms = Min(Max(backoff_ms * 2, 100), AGGR_MAX_BACKOFF_MS);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 backoff_ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

static bool
EnsureRedis(void)
{
	char	   *error;

	if (redis != NULL)
		return true;
	redis = AggrRedisConnect(&error);
	if (redis == NULL)
	{
		BrokerFailed(error);
		return false;
	}
	if (broker_was_down)
		ereport(LOG, (errmsg("aggr consumer %d: broker reachable again", my_slot)));
	broker_was_down = false;
	SetBrokerUp(true);
	return true;
}

static char *
KeyFor(const char *what, int slot)
{
	return psprintf("%s:%s:%d", aggr_queue_key, what, slot);
}

/*
 * Runs the take script for a slot, and reads the processing list in the same
 * round trip: with move, the script first tops the list up from the queue.
 * Returns false when the broker failed.
 */
static bool
RunTake(int slot, bool move, const char *ack_token, TakenBatch *batch)
{
	char		token_buf[33];
	uint8		random_bytes[16];
	char		size_buf[16];
	char		max_buf[16];
	const char *processing = KeyFor("processing", slot);
	const char *argv[12];
	void	   *replies[2] = {NULL, NULL};
	redisReply *take;
	redisReply *list;
	char	   *why = NULL;

	if (!pg_strong_random(random_bytes, sizeof(random_bytes)))
		elog(ERROR, "could not generate a batch token");
	hex_encode((char *) random_bytes, sizeof(random_bytes), token_buf);
	token_buf[32] = '\0';
	snprintf(size_buf, sizeof(size_buf), "%d", aggr_batch_size);
	snprintf(max_buf, sizeof(max_buf), "%d", AGGR_MAX_REQUEST_EVENTS);

	argv[0] = "EVAL";
	argv[1] = take_script;
	argv[2] = "4";
	argv[3] = aggr_queue_key;
	argv[4] = processing;
	argv[5] = KeyFor("token", slot);
	argv[6] = AggrEnvelopesKey();
	argv[7] = token_buf;
	argv[8] = size_buf;
	argv[9] = move ? "1" : "0";
	argv[10] = ack_token ? ack_token : "";
	argv[11] = max_buf;
	if (redisAppendCommandArgv(redis, 12, argv, NULL) != REDIS_OK ||
		redisAppendCommand(redis, "LRANGE %s 0 -1", processing) != REDIS_OK)
		why = pstrdup(redis->errstr);
	for (int i = 0; i < 2 && why == NULL; i++)
		if (redisGetReply(redis, &replies[i]) != REDIS_OK)
			why = pstrdup(redis->errstr);
	take = replies[0];
	list = replies[1];
	if (why == NULL && (take->type != REDIS_REPLY_ARRAY || take->elements != 3 ||
						list->type != REDIS_REPLY_ARRAY))
		why = pstrdup(take->type == REDIS_REPLY_ERROR ? take->str :
					  list->type == REDIS_REPLY_ERROR ? list->str : "unexpected reply");
	if (why != NULL)
	{
		for (int i = 0; i < 2; i++)
			if (replies[i])
				freeReplyObject(replies[i]);
		BrokerFailed(why);
		return false;
	}

	/* copy out of hiredis memory before anything can raise */
	batch->acknowledged = (take->element[1]->integer == 1);
	batch->fresh = (take->element[2]->integer == 1);
	batch->token = pstrdup(take->element[0]->str);
	batch->nelements = list->elements;
	batch->elements = palloc(sizeof(char *) * Max(batch->nelements, 1));
	batch->lengths = palloc(sizeof(int) * Max(batch->nelements, 1));
	for (int i = 0; i < batch->nelements; i++)
	{
		redisReply *e = list->element[i];

		batch->lengths[i] = (int) e->len;
		batch->elements[i] = palloc(e->len + 1);
		memcpy(batch->elements[i], e->str, e->len);
		batch->elements[i][e->len] = '\0';
	}
	freeReplyObject(take);
	freeReplyObject(list);
	return true;
}

/*
 * Waits until the queue has an element: BLMOVE from the queue's tail to its
 * own tail, which blocks like BLPOP but moves nothing (the take script moves
 * a whole batch next), sent without blocking, then a wait on the latch and
 * the socket.  Returns true when the queue had an element, false on a
 * timeout, a signal or a broker failure (the caller loops).  A lost reply
 * loses nothing.
 */
static bool
WaitForElement(void)
{
	int			timeout_ms = aggr_poll_interval;
	int			done = 0;
	char		timeout_buf[32];
	void	   *reply = NULL;

	snprintf(timeout_buf, sizeof(timeout_buf), "%.3f", timeout_ms / 1000.0);
	if (redisAppendCommand(redis, "BLMOVE %s %s RIGHT RIGHT %s", aggr_queue_key,
						   aggr_queue_key, timeout_buf) != REDIS_OK)
	{
		BrokerFailed(redis->errstr);
		return false;
	}
	while (!done)
		if (redisBufferWrite(redis, &done) != REDIS_OK)
		{
			BrokerFailed(redis->errstr);
			return false;
		}

	for (;;)
	{
		int			rc;

		if (redisReaderGetReply(redis->reader, &reply) != REDIS_OK)
		{
			BrokerFailed("unreadable reply to BLMOVE");
			return false;
		}
		if (reply != NULL)
			break;

		/*
		 * the server answers by timeout_ms; silence for longer means a lost
		 * reply
		 */
		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_SOCKET_READABLE | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							   redis->fd, timeout_ms + 5000, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			ReloadIfPending();
		}
		if (rc & WL_TIMEOUT)
		{
			BrokerFailed("no answer to BLMOVE");
			return false;
		}
		if ((rc & WL_SOCKET_READABLE) && redisBufferRead(redis) != REDIS_OK)
		{
			BrokerFailed(redis->errstr);
			return false;
		}
	}

	{
		redisReply *r = reply;
		bool		got = (r->type == REDIS_REPLY_STRING);
		bool		failed = (r->type == REDIS_REPLY_ERROR);
		char	   *why = failed ? pstrdup(r->str) : NULL;

		freeReplyObject(r);
		if (failed)
			BrokerFailed(why);
		return got;
	}
}

typedef struct Rejects
{
	int			n;
	int			capacity;
	Datum	   *raw;			/* bytea */
	Datum	   *reason;			/* text */
} Rejects;

static void
AddReject(Rejects *rejects, const char *raw, int len, const char *reason)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	if (rejects->n == rejects->capacity)
	{
		rejects->capacity *= 2;
		rejects->raw = repalloc(rejects->raw, sizeof(Datum) * rejects->capacity);
		rejects->reason = repalloc(rejects->reason, sizeof(Datum) * rejects->capacity);
	}
	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), raw, len);
	rejects->raw[rejects->n] = PointerGetDatum(b);
	rejects->reason[rejects->n] = PointerGetDatum(cstring_to_text(reason));
	rejects->n++;
}

/*
 * How many events an element holds: an envelope's count (aggr.h), else 1;
 * -1 for an envelope declaring more than AGGR_MAX_REQUEST_EVENTS, which is
 * dead-lettered whole.  The take script's event_count agrees, except that it
 * counts that one as 1.
 */
static int
ElementEventCount(const char *raw, int len)
{
	const int	prefix = strlen(AGGR_ENVELOPE_PREFIX);
	int			n = 0;
	int			i;

	if (len <= prefix || memcmp(raw, AGGR_ENVELOPE_PREFIX, prefix) != 0)
		return 1;
	for (i = prefix; i < len && raw[i] >= '0' && raw[i] <= '9'; i++)
		n = Min(n * 10 + (raw[i] - '0'), AGGR_MAX_REQUEST_EVENTS + 1);
	if (i == prefix || i == len || raw[i] != ',' || n < 2)
		return 1;
	return n > AGGR_MAX_REQUEST_EVENTS ? -1 : n;
}

/* Dead-letters one event of an envelope, as its own JSON text. */
static void
RejectEnvelopeEvent(Rejects *rejects, JsonbValue *event, int index, const char *reason)
{
	Jsonb	   *jb = JsonbValueToJsonb(event);
	char	   *text = JsonbToCString(NULL, &jb->root, VARSIZE(jb));

	AddReject(rejects, text, strlen(text), psprintf("envelope event %d: %s", index, reason));
}

/*
 * Turns one element into events of the batch; the bad events of an envelope
 * are dead-lettered one by one.  Returns why the element as a whole cannot be
 * used, or NULL.  jsonb_in may raise; the caller handles that.
 */
static const char *
ConvertElement(const char *raw, int len, AggrBatch *batch, Rejects *rejects)
{
	int			nevents = ElementEventCount(raw, len);
	Jsonb	   *jb;
	JsonbValue *events;

	if ((int) strlen(raw) != len)
		return "element contains a NUL byte";
	if (!pg_verifymbstr(raw, len, true))
		return "element is not valid in the database encoding";
	if (nevents < 0)
		return psprintf("envelope declares more than %d events", AGGR_MAX_REQUEST_EVENTS);
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(raw)));
	if (nevents == 1)
	{
		AggrBatchReserve(batch, 1);
		return AggrCheckEvent(&jb->root, batch);
	}

	events = getKeyJsonValueFromContainer(&jb->root, "events", 6, NULL);
	if (JsonContainerSize(&jb->root) != 2 || events == NULL || events->type != jbvBinary ||
		!JsonContainerIsArray(events->val.binary.data) ||
		JsonContainerSize(events->val.binary.data) != nevents)
		return psprintf("envelope must be {\"aggr_events\": %d, \"events\": [%d events]}",
						nevents, nevents);
	AggrBatchReserve(batch, nevents);
	for (int i = 0; i < nevents; i++)
	{
		JsonbValue *event = getIthJsonbValueFromContainer(events->val.binary.data, i);
		const char *reason = (event->type == jbvBinary) ?
			AggrCheckEvent(event->val.binary.data, batch) : "must be a JSON object";

		if (reason != NULL)
			RejectEnvelopeEvent(rejects, event, i, reason);
	}
	return NULL;
}

typedef struct ConvertCall
{
	TakenBatch *taken;
	AggrBatch  *batch;
	Rejects    *rejects;
	int			first;			/* elements first .. last - 1 */
	int			last;
} ConvertCall;

static void
ConvertRange(void *arg)
{
	ConvertCall *call = arg;
	TakenBatch *taken = call->taken;

	for (int i = call->first; i < call->last; i++)
	{
		const char *reason = ConvertElement(taken->elements[i], taken->lengths[i],
											call->batch, call->rejects);

		if (reason != NULL)
			AddReject(call->rejects, taken->elements[i], taken->lengths[i], reason);
	}
}

/*
 * Converts every element.  The fast path runs them all in one subtransaction;
 * if anything raises (invalid JSON, say), it starts over with one
 * subtransaction per element so only the poison is dead-lettered.  The batch
 * and the rejects grow with the events the envelopes turn out to hold.
 */
static void
ConvertElements(TakenBatch *taken, AggrBatch *batch, Rejects *rejects)
{
	ConvertCall call = {taken, batch, rejects, 0, taken->nelements};
	ErrorData  *error;
	int			capacity = taken->nelements + 1;

	rejects->capacity = capacity;
	rejects->raw = palloc(sizeof(Datum) * capacity);
	rejects->reason = palloc(sizeof(Datum) * capacity);
	AggrBatchInit(batch, capacity, true);
	rejects->n = 0;
	if ((error = AggrTrySubtransaction(ConvertRange, &call)) == NULL)
		return;
	FreeErrorData(error);

	AggrBatchInit(batch, capacity, true);
	rejects->n = 0;
	for (int i = 0; i < taken->nelements; i++)
	{
		int			nevents = batch->nevents;
		int			nrejects = rejects->n;

		call.first = i;
		call.last = i + 1;
		if ((error = AggrTrySubtransaction(ConvertRange, &call)) != NULL)
		{
			/* nothing of the failed element stays */
			batch->nevents = nevents;
			rejects->n = nrejects;
			AddReject(rejects, taken->elements[i], taken->lengths[i], error->message);
			FreeErrorData(error);
		}
	}
}

static SPIPlanPtr token_plan = NULL;
static SPIPlanPtr reject_plan = NULL;
static SPIPlanPtr progress_plan = NULL;

static bool
TokenCommitted(int slot, const char *token)
{
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2] = {Int32GetDatum(slot), CStringGetTextDatum(token)};
	int			ret = SPI_execute_plan(AggrPreparedPlan(&token_plan,
														"SELECT 1 FROM aggr.consumers"
														" WHERE consumer = $1 AND last_token = $2",
														2, types),
									   values, NULL, true, 1);

	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read aggr.consumers: %d", ret);
	return SPI_processed > 0;
}

static void
RecordBatch(int slot, const char *token, int nevents, const Rejects *rejects)
{
	Oid			types[3] = {INT4OID, TEXTOID, INT8OID};
	Datum		values[3] = {Int32GetDatum(slot), CStringGetTextDatum(token),
	Int64GetDatum(nevents)};

	if (rejects->n > 0)
	{
		Oid			rtypes[3] = {BYTEAARRAYOID, TEXTARRAYOID, INT4OID};
		Datum		rvalues[3] = {
			PointerGetDatum(construct_array(rejects->raw, rejects->n, BYTEAOID, -1, false, TYPALIGN_INT)),
			PointerGetDatum(construct_array(rejects->reason, rejects->n, TEXTOID, -1, false, TYPALIGN_INT)),
		Int32GetDatum(slot)};

		if (SPI_execute_plan(AggrPreparedPlan(&reject_plan,
											  "INSERT INTO aggr.rejected (raw, reason, consumer)"
											  " SELECT r.raw, r.reason, $3"
											  " FROM unnest($1, $2) AS r(raw, reason)",
											  3, rtypes),
							 rvalues, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not insert into aggr.rejected");
	}
	if (SPI_execute_plan(AggrPreparedPlan(&progress_plan,
										  "INSERT INTO aggr.consumers AS c"
										  " (consumer, last_token, batches, events, updated_at)"
										  " VALUES ($1, $2, 1, $3, pg_catalog.now())"
										  " ON CONFLICT (consumer) DO UPDATE SET"
										  " last_token = excluded.last_token, batches = c.batches + 1,"
										  " events = c.events + excluded.events,"
										  " updated_at = excluded.updated_at",
										  3, types),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not update aggr.consumers");
}

static void
MaybeCrash(int point)
{
	if (aggr_test_crash_point == point)
	{
		ereport(LOG, (errmsg("aggr consumer %d: exiting at test crash point %d", my_slot, point)));
		proc_exit(1);
	}
}

/*
 * Ingests a taken batch of slot k (normally my own) in one transaction,
 * unless its token shows it was committed already.  The caller acknowledges.
 */
static void
ProcessBatch(int slot, TakenBatch *taken)
{
	AggrBatch	batch;
	AggrIngestResult result = {0};
	Rejects		rejects = {0};
	bool		already;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "aggr consumer: ingesting a batch");

	already = !taken->fresh && TokenCommitted(slot, taken->token);
	if (!already)
	{
		ConvertElements(taken, &batch, &rejects);
		if (batch.nevents > 0)
			AggrIngestBatch(&batch, &result);
		RecordBatch(slot, taken->token, batch.nevents + rejects.n, &rejects);
	}
	MaybeCrash(1);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	MaybeCrash(2);

	if (already)
		ereport(LOG,
				(errmsg("aggr consumer %d: batch %s of slot %d was committed before; acknowledging it only",
						my_slot, taken->token, slot)));
	else
	{
		AggrWorkerSlot *w = &aggr_shared->workers[my_slot - 1];

		LWLockAcquire(aggr_shared->lock, LW_EXCLUSIVE);
		w->batches++;
		w->events += batch.nevents + rejects.n;
		w->rejected += rejects.n;
		w->last_commit = GetCurrentTimestamp();
		LWLockRelease(aggr_shared->lock);
	}
}

/* Checks, in a transaction of its own, that CREATE EXTENSION aggr was run. */
static bool
ExtensionInstalled(void)
{
	bool		installed;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	installed = OidIsValid(get_extension_oid("aggr", true));
	CommitTransactionCommand();
	return installed;
}

/*
 * One step of the loop.  For my own slot: acknowledge my last batch and take
 * the next one in a single script (a list left with a token is replayed as it
 * is), or wait for an element when the queue is empty.  For an adopted slot:
 * replay what its list holds, then acknowledge it.
 */
static void
ConsumeOnce(int slot, bool own)
{
	TakenBatch	taken;

	if (!RunTake(slot, own, own ? unacked_token : NULL, &taken))
		return;
	if (own && unacked_token != NULL)
	{
		/* acknowledged now, or the list is gone: nothing left to acknowledge */
		pfree(unacked_token);
		unacked_token = NULL;
		if (taken.acknowledged)
			MaybeCrash(3);
	}
	if (taken.nelements == 0)
	{
		if (!own || !WaitForElement() || !RunTake(slot, true, NULL, &taken) ||
			taken.nelements == 0)
			return;
	}
	ProcessBatch(slot, &taken);
	if (own)
		unacked_token = MemoryContextStrdup(TopMemoryContext, taken.token);
	else
	{
		TakenBatch	rest;

		(void) RunTake(slot, false, taken.token, &rest);
	}
}

void
AggrConsumerMain(Datum main_arg)
{
	MemoryContext loop_context;
	volatile bool extension_ready = false;
	volatile bool warned_missing = false;

	my_slot = DatumGetInt32(main_arg);
	adopt_pending = (my_slot == 1);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(aggr_database, NULL, 0);
	SetConfigOption("application_name", MyBgworkerEntry->bgw_name, PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname(MyBgworkerEntry->bgw_name);

	LWLockAcquire(aggr_shared->lock, LW_EXCLUSIVE);
	aggr_shared->workers[my_slot - 1].pid = MyProcPid;
	aggr_shared->workers[my_slot - 1].started_at = GetCurrentTimestamp();
	LWLockRelease(aggr_shared->lock);
	on_shmem_exit(CloseRedis, (Datum) 0);

	loop_context = AllocSetContextCreate(TopMemoryContext, "aggr consumer loop",
										 ALLOCSET_DEFAULT_SIZES);
#ifdef __GLIBC__

	/*
	 * Every batch allocates and frees the same few megabytes; without this,
	 * glibc hands them back to the kernel and the next batch faults them in
	 * again (about a tenth of a consumer's CPU).  The memory stays bounded by
	 * one batch's peak.
	 */
	mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
	mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
#endif
	ereport(LOG, (errmsg("aggr consumer %d started on queue \"%s\" at %s", my_slot, aggr_queue_key,
						 AggrBrokerUrlForDisplay())));

	for (;;)
	{
		volatile bool failed = false;

		CHECK_FOR_INTERRUPTS();
		ReloadIfPending();
		MemoryContextSwitchTo(loop_context);
		MemoryContextReset(loop_context);

		PG_TRY();
		{
			if (!extension_ready)
			{
				extension_ready = ExtensionInstalled();
				if (!extension_ready && !warned_missing)
					ereport(LOG,
							(errmsg("aggr consumer %d: extension aggr is not installed in database \"%s\"; waiting",
									my_slot, aggr_database)));
				warned_missing = !extension_ready;
			}
			if (extension_ready && EnsureRedis())
			{
				/*
				 * Consumer 1 adopts what slots beyond the pool left behind
				 * (the pool shrank across a restart): once at start, and
				 * again after each outage of the broker.
				 */
				if (adopt_pending)
				{
					for (int slot = aggr_worker_count + 1; slot <= AGGR_MAX_WORKERS && redis; slot++)
						ConsumeOnce(slot, false);
					adopt_pending = (redis == NULL);
				}
				if (redis)
					ConsumeOnce(my_slot, true);
			}
			failed = (!extension_ready || redis == NULL);
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(loop_context);
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			pgstat_report_activity(STATE_IDLE, NULL);
			extension_ready = false;
			failed = true;
		}
		PG_END_TRY();

		if (failed)
			Backoff();
		else
			backoff_ms = 0;
	}
}

/* Registers aggr.worker_count consumers; called from _PG_init at preload. */
void
AggrRegisterConsumers(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "aggr");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "AggrConsumerMain");
	snprintf(worker.bgw_type, BGW_MAXLEN, "aggr consumer");
	for (int i = 1; i <= aggr_worker_count; i++)
	{
		snprintf(worker.bgw_name, BGW_MAXLEN, "aggr consumer %d", i);
		worker.bgw_main_arg = Int32GetDatum(i);
		RegisterBackgroundWorker(&worker);
	}
}
