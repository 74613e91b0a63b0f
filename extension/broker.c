/*
 * broker.c
 *		The publishing side of broker mode: aggr_publish's events wait in
 *		transaction memory and are pushed onto the queue at commit.
 *
 * aggr_publish() in broker mode validates the request, then keeps the events
 * in transaction memory; they are pushed at PRE_COMMIT, so a publish whose
 * transaction (or subtransaction) rolls back leaves nothing on the queue, and
 * a push that fails (queue full, broker down) aborts the transaction, so the
 * caller never sees success for events that are not in Redis.  The push is
 * atomic and bounded (queue.c): either every event of the transaction is
 * queued or none is.  A request of one event is pushed as plain event JSON,
 * exactly what other producers (Filebeat, Vector, Logstash) push; a request
 * of several events as one envelope, so Redis and the consumers handle one
 * element per request instead of one per event.
 */
#include "postgres.h"

#include "aggr.h"
#include "broker.h"
#include "queue.h"

#include "access/xact.h"
#include "utils/memutils.h"

/* Backend-local connection for publishing and stats; reopened after errors. */
static AggrQueue *publish_conn = NULL;

/* One aggr_publish call's events, as one element, kept until PRE_COMMIT. */
typedef struct PendingEvents
{
	int			nest_level;		/* subtransaction that published them */
	AggrQueueElement element;
	struct PendingEvents *next;
} PendingEvents;

static PendingEvents *pending = NULL;	/* in TopTransactionContext */

/*
 * The publishing connection, opened when there is none and replaced when the
 * server closed it while idle; NULL with a message when Redis is unreachable.
 */
static AggrQueue *
PublishConnection(char **error)
{
	if (publish_conn != NULL && AggrQueueClosedWhileIdle(publish_conn))
	{
		AggrQueueClose(publish_conn);
		publish_conn = NULL;
	}
	if (publish_conn == NULL)
		publish_conn = AggrQueueConnect(false, error);
	return publish_conn;
}

/* After a failed command: a lost connection is not used again. */
static void
ForgetLostConnection(AggrQueueStatus status)
{
	if (status == AGGR_QUEUE_DOWN || status == AGGR_QUEUE_UNKNOWN)
	{
		AggrQueueClose(publish_conn);
		publish_conn = NULL;
	}
}

/*
 * Depth of the queue in events, or -1 with a message when the broker is
 * unreachable or refuses.
 */
int64
AggrBrokerQueueDepth(char **error)
{
	AggrQueue  *queue = PublishConnection(error);
	AggrQueueStatus status;
	int64		depth = -1;

	if (queue == NULL)
		return -1;
	status = AggrQueueDepth(queue, &depth, error);
	ForgetLostConnection(status);
	if (status == AGGR_QUEUE_REFUSED)
		*error = psprintf("Redis refused the queue script: %s", *error);
	return status == AGGR_QUEUE_OK ? depth : -1;
}

/*
 * Queues a validated request: its events are kept until PRE_COMMIT, as one
 * element: one event printed from its parsed form, or an envelope.  json,
 * when not NULL, is the request as it was sent: an envelope wraps it as it
 * is, which saves printing the whole request again.  An element longer than
 * aggr.batch_bytes could never be taken whole, so it is refused here.
 */
void
AggrEnqueueBatch(Jsonb *request, int nevents, const char *json, int len)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	PendingEvents *chunk = palloc0(sizeof(PendingEvents));
	JsonbContainer *events = &request->root;
	int			size = VARSIZE(request);
	bool		verbatim = (json != NULL && nevents > 1);
	StringInfoData element;

	if (JB_ROOT_IS_ARRAY(request) && nevents == 1)
	{
		JsonbValue *only = getIthJsonbValueFromContainer(&request->root, 0);

		events = only->val.binary.data;
		size = only->val.binary.len;
	}

	/* the binary size is a good first guess of the text's */
	initStringInfo(&element);
	enlargeStringInfo(&element, (verbatim ? len : size) + 64);
	if (nevents > 1)
		AggrQueueBeginEnvelope(&element, chunk->element.envelope_id);
	if (verbatim)
		appendBinaryStringInfo(&element, json, len);
	else
		JsonbToCString(&element, events, size);
	if (nevents > 1)
		AggrQueueEndEnvelope(&element);
	if ((int64) element.len > (int64) aggr_batch_bytes * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("request is too large for the queue"),
				 errdetail("Its %d events take %d bytes on the queue; aggr.batch_bytes is %d kB.",
						   nevents, element.len, aggr_batch_bytes),
				 errhint("Publish fewer or smaller events per request, or raise aggr.batch_bytes.")));

	chunk->nest_level = GetCurrentTransactionNestLevel();
	chunk->element.nevents = nevents;
	chunk->element.data = element.data;
	chunk->element.length = element.len;
	chunk->next = pending;
	pending = chunk;
	MemoryContextSwitchTo(old);
}

/* Pushes everything the transaction published, or raises. */
static void
PushPending(void)
{
	int			nelements = 0;
	int			nevents = 0;
	int			i;
	AggrQueueElement *elements;
	AggrQueue  *queue;
	AggrQueueStatus status = AGGR_QUEUE_DOWN;
	char	   *error = NULL;
	int64		depth = 0;

	for (PendingEvents *chunk = pending; chunk != NULL; chunk = chunk->next)
	{
		nelements++;
		nevents += chunk->element.nevents;
	}
	/* the list holds the newest chunk first; elements keep publishing order */
	elements = palloc(sizeof(AggrQueueElement) * nelements);
	i = nelements;
	for (PendingEvents *chunk = pending; chunk != NULL; chunk = chunk->next)
		elements[--i] = chunk->element;

	if ((queue = PublishConnection(&error)) != NULL)
	{
		status = AggrQueuePush(queue, nelements, elements, &depth, &error);
		ForgetLostConnection(status);
	}
	switch (status)
	{
		case AGGR_QUEUE_OK:
			return;
		case AGGR_QUEUE_FULL:
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("queue \"%s\" is full", aggr_queue_key),
					 errdetail("It holds " INT64_FORMAT " events; %d more would exceed aggr.queue_maxsize (%d).",
							   depth, nevents, aggr_queue_maxsize),
					 errhint("Retry later, when the consumers have caught up; nothing was queued.")));
			break;
		case AGGR_QUEUE_REFUSED:
			if (strncmp(error, "OOM", 3) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
						 errmsg("the broker is out of memory"),
						 errdetail("Redis refused to queue %d events: %s", nevents, error),
						 errhint("Retry later, or give Redis more maxmemory; nothing was queued.")));
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("the broker refused to queue %d events", nevents),
					 errdetail("Redis answered: %s", error),
					 errhint("This is an error of the queue script or of Redis's configuration (ACL, key types), not an outage; nothing was queued.")));
			break;
		case AGGR_QUEUE_UNKNOWN:

			/*
			 * 08007, transaction resolution unknown: the caller must not take
			 * this for "nothing queued" (a retry is safe, as aggr
			 * deduplicates; the sidecar answers "outcome": "unknown")
			 */
			ereport(ERROR,
					(errcode(ERRCODE_TRANSACTION_RESOLUTION_UNKNOWN),
					 errmsg("lost the broker while queueing %d events; they may have been queued", nevents),
					 errdetail("%s", error),
					 errhint("A retry is safe: aggr stores each event once (received and duplicate_dropped may count it twice).")));
			break;
		case AGGR_QUEUE_DOWN:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not queue %d events on the broker", nevents),
					 errdetail("%s", error),
					 errhint("Check that Redis is running at aggr.broker_url; nothing was queued.")));
			break;
	}
}

static void
BrokerXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (pending != NULL)
				PushPending();
			pending = NULL;
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (pending != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that published events to the broker")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			/* the memory went with TopTransactionContext */
			pending = NULL;
			break;
		default:
			break;
	}
}

/* A rolled-back subtransaction takes its publishes with it. */
static void
BrokerSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		while (pending != NULL && pending->nest_level >= level)
		{
			pending = pending->next;
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (PendingEvents *chunk = pending; chunk != NULL; chunk = chunk->next)
			if (chunk->nest_level >= level)
				chunk->nest_level = level - 1;
	}
}

void
AggrBrokerInit(void)
{
	RegisterXactCallback(BrokerXactCallback, NULL);
	RegisterSubXactCallback(BrokerSubXactCallback, NULL);
}
