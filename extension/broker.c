/*
 * broker.c
 *		The Redis client of aggr: connecting from a URL, and the publishing
 *		side of broker mode.
 *
 * aggr_publish() in broker mode validates the request, then keeps the events
 * in transaction memory; they are pushed at PRE_COMMIT, so a publish whose
 * transaction (or subtransaction) rolls back leaves nothing on the queue, and
 * a push that fails (queue full, broker down) aborts the transaction, so the
 * caller never sees success for events that are not in Redis.  The push is one
 * Lua script: the bound check and the RPUSH are atomic, and either every event
 * of the transaction is queued or none is.  A request of one event is pushed
 * as plain event JSON, exactly what other producers (Filebeat, Vector,
 * Logstash) push; a request of several events as one envelope (aggr.h), so
 * Redis and the consumers handle one element per request instead of one per
 * event.  The consumers need nothing more to count exactly (see consumer.c).
 */
#include "postgres.h"

#include "aggr.h"

#include <poll.h>
#include <hiredis/hiredis.h>

#include "access/xact.h"
#include "utils/memutils.h"

/* Backend-local connection for publishing and stats; reopened after errors. */
static redisContext *publish_conn = NULL;

/* One aggr_publish call's events, as one element, kept until PRE_COMMIT. */
typedef struct PendingEvents
{
	int			nest_level;		/* subtransaction that published them */
	int			nevents;
	char	   *element;		/* an event's JSON, or an envelope */
	size_t		length;
	struct PendingEvents *next;
} PendingEvents;

static PendingEvents *pending = NULL;	/* in TopTransactionContext */

/*
 * The bounded push.  KEYS: queue, its envelopes hash (aggr.h).  ARGV[1] bound
 * (0 = none), ARGV[2] the events the elements hold, ARGV[3] how many of the
 * elements are envelopes, ARGV[4..] the elements.  Returns the new depth in
 * events, or -(current depth) - 1 when full.  unpack() is chunked because
 * Lua's C stack holds about 8000 values.
 */
static const char *const push_script =
"local events = tonumber(ARGV[2]) "
"local depth = redis.call('LLEN', KEYS[1]) + "
"  (tonumber(redis.call('HGET', KEYS[2], 'extra_events')) or 0) "
"local bound = tonumber(ARGV[1]) "
"if bound > 0 and depth + events > bound then return -depth - 1 end "
"for i = 4, #ARGV, 1000 do "
"  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))) "
"end "
"if tonumber(ARGV[3]) > 0 then "
"  redis.call('HINCRBY', KEYS[2], 'count', ARGV[3]) "
"  redis.call('HINCRBY', KEYS[2], 'extra_events', events - (#ARGV - 3)) "
"end "
"return depth + events";

/* The queue's depth in events: its elements plus the envelopes' extra events. */
static const char *const depth_script =
"return redis.call('LLEN', KEYS[1]) + "
"  (tonumber(redis.call('HGET', KEYS[2], 'extra_events')) or 0)";

/* <queue>:envelopes, in the current memory context */
char *
AggrEnvelopesKey(void)
{
	return psprintf("%s" AGGR_ENVELOPES_SUFFIX, aggr_queue_key);
}

/*
 * aggr.broker_url as it may be shown in a log line (the consumers' start):
 * the password masked (redis://user:***@host:port/db).  A URL that is not
 * redis:// is not echoed at all, since where its password is cannot be told.
 */
char *
AggrBrokerUrlForDisplay(void)
{
	const char *url = aggr_broker_url ? aggr_broker_url : "";
	const char *rest;
	const char *at;
	const char *colon;

	if (strncmp(url, "redis://", 8) != 0)
		return pstrdup("(not a redis:// URL)");
	rest = url + 8;
	if ((at = strrchr(rest, '@')) == NULL)
		return pstrdup(url);
	colon = memchr(rest, ':', at - rest);
	if (colon == NULL)			/* redis://password@host */
		return psprintf("redis://***@%s", at + 1);
	return psprintf("redis://%.*s:***@%s", (int) (colon - rest), rest, at + 1);
}

/*
 * Connects to aggr.broker_url with bounded connect and command timeouts.
 * Returns NULL and a message on failure; never raises.
 */
redisContext *
AggrRedisConnect(char **error)
{
	char	   *url = pstrdup(aggr_broker_url);
	char	   *host = url;
	char	   *password = NULL;
	char	   *user = NULL;
	char	   *at;
	char	   *colon;
	char	   *slash;
	int			port = 6379;
	int			db = 0;
	struct timeval connect_timeout = {1, 0};
	struct timeval command_timeout = {5, 0};
	redisContext *c;
	redisReply *reply;

	if (strncmp(host, "redis://", 8) != 0)
	{
		*error = pstrdup("aggr.broker_url must be a redis:// URL");
		return NULL;
	}
	host += 8;
	if ((at = strrchr(host, '@')) != NULL)
	{
		*at = '\0';
		password = host;
		if ((colon = strchr(password, ':')) != NULL)
		{
			*colon = '\0';
			user = password[0] ? password : NULL;
			password = colon + 1;
		}
		host = at + 1;
	}
	if ((slash = strchr(host, '/')) != NULL)
	{
		*slash = '\0';
		if (slash[1] != '\0')
			db = atoi(slash + 1);
	}
	if ((colon = strrchr(host, ':')) != NULL)
	{
		*colon = '\0';
		port = atoi(colon + 1);
	}
	if (host[0] == '\0')
		host = "127.0.0.1";

	c = redisConnectWithTimeout(host, port, connect_timeout);
	if (c == NULL || c->err)
	{
		*error = psprintf("could not connect to Redis at %s:%d: %s", host, port,
						  c ? c->errstr : "out of memory");
		if (c)
			redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, command_timeout);
	redisEnableKeepAlive(c);

	reply = NULL;
	if (password != NULL && password[0] != '\0')
		reply = user ? redisCommand(c, "AUTH %s %s", user, password)
			: redisCommand(c, "AUTH %s", password);
	if (reply == NULL && password != NULL && password[0] != '\0')
		*error = psprintf("Redis AUTH failed: %s", c->errstr);
	else if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
		*error = psprintf("Redis AUTH failed: %s", reply->str);
	else
		*error = NULL;
	if (reply)
		freeReplyObject(reply);
	if (*error == NULL && db != 0)
	{
		reply = redisCommand(c, "SELECT %d", db);
		if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
			*error = psprintf("Redis SELECT %d failed: %s", db,
							  reply ? reply->str : c->errstr);
		if (reply)
			freeReplyObject(reply);
	}
	if (*error != NULL)
	{
		redisFree(c);
		return NULL;
	}
	return c;
}

/*
 * True when an idle connection has been closed by the server (Redis
 * restarted, a timeout): it then has EOF or an error waiting, where a live
 * idle connection has nothing to read.
 */
static bool
ConnectionClosed(redisContext *c)
{
	struct pollfd pfd = {.fd = c->fd,.events = POLLIN};

	return poll(&pfd, 1, 0) != 0;
}

/*
 * Runs one command on the publishing connection, opening it when there is
 * none and replacing it when the server closed it while idle.  A command is
 * never sent twice: a push whose reply is lost may have been applied, so
 * the caller reports the failure instead of retrying.  Returns the reply,
 * which the caller frees, or NULL with a message.
 */
static redisReply *
PublishCommand(char **error, int argc, const char **argv, const size_t *argvlen)
{
	redisReply *reply;

	if (publish_conn != NULL && ConnectionClosed(publish_conn))
	{
		redisFree(publish_conn);
		publish_conn = NULL;
	}
	if (publish_conn == NULL && (publish_conn = AggrRedisConnect(error)) == NULL)
		return NULL;
	reply = redisCommandArgv(publish_conn, argc, argv, argvlen);
	if (reply == NULL)
	{
		*error = psprintf("Redis command failed: %s", publish_conn->errstr);
		redisFree(publish_conn);
		publish_conn = NULL;
	}
	return reply;
}

/*
 * Depth of the queue in events, or -1 with a message when the broker is
 * unreachable.
 */
int64
AggrQueueDepth(char **error)
{
	const char *argv[5] = {"EVAL", depth_script, "2", aggr_queue_key, AggrEnvelopesKey()};
	redisReply *reply = PublishCommand(error, 5, argv, NULL);
	int64		depth = -1;

	if (reply == NULL)
		return -1;
	if (reply->type == REDIS_REPLY_INTEGER)
		depth = reply->integer;
	else
		*error = psprintf("unexpected reply to the depth script: %s",
						  reply->type == REDIS_REPLY_ERROR ? reply->str : "not an integer");
	freeReplyObject(reply);
	return depth;
}

/*
 * Queues a validated request: its events are kept until PRE_COMMIT, as one
 * element: one event printed from its parsed form, or an envelope.  json,
 * when not NULL, is the request as it was sent: an envelope wraps it as it
 * is, which saves printing the whole request again.  (A single event is
 * always printed: its own text might begin like an envelope.)
 */
void
AggrEnqueueBatch(Jsonb *request, int nevents, const char *json, int len)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	PendingEvents *chunk = palloc(sizeof(PendingEvents));
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
		appendStringInfo(&element, AGGR_ENVELOPE_PREFIX "%d,\"events\":", nevents);
	if (verbatim)
		appendBinaryStringInfo(&element, json, len);
	else
		JsonbToCString(&element, events, size);
	if (nevents > 1)
		appendStringInfoChar(&element, '}');

	chunk->nest_level = GetCurrentTransactionNestLevel();
	chunk->nevents = nevents;
	chunk->element = element.data;
	chunk->length = element.len;
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
	int			nenvelopes = 0;
	int			argc;
	const char **argv;
	size_t	   *argvlen;
	char		bound[16];
	char		events[16];
	char		envelopes[16];
	char	   *error = NULL;
	redisReply *reply;
	int			i;
	long long	result = 0;
	bool		ok = false;

	for (PendingEvents *chunk = pending; chunk != NULL; chunk = chunk->next)
	{
		nelements++;
		nevents += chunk->nevents;
		nenvelopes += (chunk->nevents > 1);
	}
	i = argc = 8 + nelements;
	argv = palloc(sizeof(char *) * argc);
	argvlen = palloc(sizeof(size_t) * argc);
	snprintf(bound, sizeof(bound), "%d", aggr_queue_maxsize);
	snprintf(events, sizeof(events), "%d", nevents);
	snprintf(envelopes, sizeof(envelopes), "%d", nenvelopes);
	argv[0] = "EVAL";
	argv[1] = push_script;
	argv[2] = "2";
	argv[3] = aggr_queue_key;
	argv[4] = AggrEnvelopesKey();
	argv[5] = bound;
	argv[6] = events;
	argv[7] = envelopes;
	for (int k = 0; k < 8; k++)
		argvlen[k] = strlen(argv[k]);

	/* the list holds the newest chunk first; elements keep publishing order */
	for (PendingEvents *chunk = pending; chunk != NULL; chunk = chunk->next)
	{
		i--;
		argv[i] = chunk->element;
		argvlen[i] = chunk->length;
	}
	Assert(i == 8);

	reply = PublishCommand(&error, argc, argv, argvlen);
	if (reply != NULL)
	{
		if (reply->type == REDIS_REPLY_INTEGER)
		{
			result = reply->integer;
			ok = true;
		}
		else
			error = psprintf("Redis refused the push: %s",
							 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
		freeReplyObject(reply);
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not queue %d events on the broker", nevents),
				 errdetail("%s", error),
				 errhint("Check that Redis is running at aggr.broker_url; nothing was queued.")));
	if (result < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("queue \"%s\" is full", aggr_queue_key),
				 errdetail("It holds %lld events; %d more would exceed aggr.queue_maxsize (%d).",
						   -result - 1, nevents, aggr_queue_maxsize),
				 errhint("Retry later, when the consumers have caught up; nothing was queued.")));
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
