/*
 * queue.h
 *		The Redis queue protocol of broker mode: what the publishing backends
 *		(broker.c) and the consumers (bgworker/consumer.c) call.  queue.c says
 *		the rules; the scripts are extension/lua/push.lua and take.lua.
 */
#ifndef AGGR_QUEUE_H
#define AGGR_QUEUE_H

#include "postgres.h"

#include "lib/stringinfo.h"

/* An open connection to aggr.broker_url, with what it has learned. */
typedef struct AggrQueue AggrQueue;

typedef enum AggrQueueStatus
{
	AGGR_QUEUE_OK,
	AGGR_QUEUE_FULL,			/* the push would pass the bound: nothing
								 * queued */
	AGGR_QUEUE_DOWN,			/* connection failed or lost before the
								 * command was sent; it is closed */
	AGGR_QUEUE_UNKNOWN,			/* lost after the command was sent: it may
								 * have run; the connection is closed */
	AGGR_QUEUE_REFUSED			/* Redis answered an error (a script error,
								 * out of memory, no permission) */
} AggrQueueStatus;

/* An element to push: one event's JSON, or an envelope of nevents > 1. */
typedef struct AggrQueueElement
{
	const char *data;
	size_t		length;
	int			nevents;
	char		envelope_id[33];	/* for an envelope: its id (hex) */
} AggrQueueElement;

/* One taken element; an oversize one is not copied, only its first bytes. */
typedef struct AggrTakenElement
{
	char	   *data;			/* NUL-terminated copy (the head if oversize) */
	int			length;
	int			nevents;		/* a registered envelope's events, else 1 */
	int64		oversize;		/* > 0: the element's size; it was not taken */
} AggrTakenElement;

typedef struct AggrTakenBatch
{
	bool		acknowledged;	/* the batch named by the ack token was */
	bool		fresh;			/* the token is new: never committed */
	int			attempts;		/* how often it was handed out, this one too,
								 * less those that failed transiently */
	char	   *token;			/* "" when nothing was taken */
	int			nelements;
	AggrTakenElement *elements;
} AggrTakenBatch;

/* How many bytes of an oversize element are kept for its dead letter. */
#define AGGR_QUEUE_HEAD_BYTES 256

/*
 * The largest element a consumer takes (as a batch of its own), and the
 * upper bound of aggr.batch_bytes, so nothing aggr_publish accepted is ever
 * cut to its head, whatever aggr.batch_bytes is later lowered to.
 */
#define AGGR_QUEUE_MAX_ELEMENT_BYTES (256 * 1024 * 1024)

/* transient_token of a take after a take whose answer was lost */
#define AGGR_QUEUE_ANY_TOKEN "*"

/* Connections (never raise; NULL and a message on failure). */
extern AggrQueue *AggrQueueConnect(bool check_eviction, char **error);
extern void AggrQueueClose(AggrQueue *queue);
extern bool AggrQueueClosedWhileIdle(AggrQueue *queue);
extern char *AggrBrokerUrlForDisplay(void);

/* Envelopes: BeginEnvelope writes the head and a fresh id, EndEnvelope the tail */
extern void AggrQueueBeginEnvelope(StringInfo element, char *id);
extern void AggrQueueEndEnvelope(StringInfo element);

/*
 * Publishing: every element or none, within aggr.queue_maxsize; *depth is the
 * depth after the push (or, when full, before it).  UNKNOWN: the answer was
 * lost, so the elements may have been queued.
 */
extern AggrQueueStatus AggrQueuePush(AggrQueue *queue, int nelements,
									 const AggrQueueElement *elements,
									 int64 *depth, char **error);
extern AggrQueueStatus AggrQueueDepth(AggrQueue *queue, int64 *depth, char **error);

/*
 * Consuming, for slot k: acknowledge ack_token's batch (if not NULL) and,
 * with move, take the next batch into the slot's processing list (at most
 * aggr.batch_size events and aggr.batch_bytes bytes); return what the list
 * holds, which is replayed as it is while it has a token; transient_token
 * names a batch whose last attempt failed for a transient reason, which
 * does not count as an attempt (AggrTakenBatch.attempts).  Wait blocks until
 * the queue has an element (*ready) or timeout_ms passes, calling on_latch
 * whenever the latch is set (it may raise, e.g. CHECK_FOR_INTERRUPTS).
 */
extern AggrQueueStatus AggrQueueTake(AggrQueue *queue, int slot, bool move,
									 const char *ack_token,
									 const char *transient_token,
									 AggrTakenBatch *batch, char **error);
extern AggrQueueStatus AggrQueueWait(AggrQueue *queue, int timeout_ms,
									 void (*on_latch) (void), bool *ready,
									 char **error);

#endif							/* AGGR_QUEUE_H */
