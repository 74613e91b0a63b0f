/*
 * queue.c
 *		The Redis queue protocol of broker mode: key names, element formats,
 *		the event-count and depth rules, the scripts, and the connection.
 *
 * Keys, with Q = aggr.queue_key:
 *   Q                   the list; other producers RPUSH events onto it
 *   Q:envelope-ids      hash: id -> events, of aggr's envelopes waiting in Q
 *   Q:extra-events      the events those envelopes hold beyond one each
 *   Q:processing:k      elements consumer slot k has taken, not acknowledged
 *   Q:batch:k           hash naming that batch: token, its envelopes, or the
 *                       size and head of an oversize element (take.lua)
 * Elements: one event's JSON, or an envelope of aggr, made by aggr_publish
 * for a request of several events: {"aggr_envelope":"<id>","events":[...]}.
 * An element holds its envelope's events when the push registered its id
 * (push.lua) and the take claimed it (take.lua); any other element holds one
 * event, however it begins.  So the depth, LLEN Q + Q:extra-events, is the
 * number of events the consumers will ingest or dead-letter, whatever other
 * producers push, and a forged envelope is only an invalid event.
 *
 * The scripts are loaded with SCRIPT LOAD on first use and called by SHA1
 * (EVALSHA); after a Redis restart or SCRIPT FLUSH (NOSCRIPT) they are
 * loaded again and the call is repeated (NOSCRIPT means nothing ran).  A script's error comes back as AGGR_QUEUE_REFUSED with
 * Redis's message, distinct from a lost connection (AGGR_QUEUE_DOWN).
 */
#include "postgres.h"

#include "aggr.h"
#include "queue.h"

#include <poll.h>
#include <hiredis/hiredis.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

/* extension/lua/push.lua and take.lua, compiled in by tools/embed.pl */
extern const char aggr_lua_push[];
extern const size_t aggr_lua_push_len;
extern const char aggr_lua_take[];
extern const size_t aggr_lua_take_len;

#define ENVELOPE_HEAD "{\"aggr_envelope\":\""

struct AggrQueue
{
	redisContext *redis;
};

typedef struct Script
{
	const char *text;
	const size_t *length;
	char		sha1[41];		/* as SCRIPT LOAD answered; "" until then */
} Script;

static Script push_script = {aggr_lua_push, &aggr_lua_push_len, ""};
static Script take_script = {aggr_lua_take, &aggr_lua_take_len, ""};

/* Q:<what> or Q:<what>:<slot>, in the current memory context */
static char *
QueueKey(const char *what, int slot)
{
	if (slot > 0)
		return psprintf("%s:%s:%d", aggr_queue_key, what, slot);
	return psprintf("%s:%s", aggr_queue_key, what);
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
	{
		/*
		 * host[:port][/db] and nothing else: a misplaced password is not
		 * shown
		 */
		if (strspn(rest, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_[]:/") !=
			strlen(rest) || rest[0] == ':')
			return pstrdup("redis://(not shown: not host[:port][/db])");
		return pstrdup(url);
	}
	colon = memchr(rest, ':', at - rest);
	if (colon == NULL)			/* redis://password@host */
		return psprintf("redis://***@%s", at + 1);
	return psprintf("redis://%.*s:***@%s", (int) (colon - rest), rest, at + 1);
}

/*
 * Warns when Redis may evict keys: an evicted queue, processing list or
 * batch hash loses events that were acknowledged to their publishers.
 */
static void
CheckEvictionPolicy(redisContext *c)
{
	redisReply *reply = redisCommand(c, "INFO memory");
	const char *field;

	if (reply == NULL)
		return;
	if (reply->type == REDIS_REPLY_ERROR)
		ereport(LOG,
				(errmsg("aggr could not check the broker's maxmemory-policy: %s", reply->str),
				 errhint("Allow INFO to the broker user, or make sure maxmemory-policy is noeviction.")));
	else if (reply->type == REDIS_REPLY_STRING &&
			 (field = strstr(reply->str, "maxmemory_policy:")) != NULL)
	{
		const char *value = field + strlen("maxmemory_policy:");
		int			len = strcspn(value, "\r\n");

		/* LOG, which the server log shows at every log_min_messages up to LOG */
		if (len != strlen("noeviction") || strncmp(value, "noeviction", len) != 0)
			ereport(LOG,
					(errmsg("the broker's maxmemory-policy is %.*s, so Redis may evict aggr's queue",
							len, value),
					 errdetail("An evicted queue, processing list or batch hash loses events that were acknowledged to their publishers."),
					 errhint("Set maxmemory-policy noeviction on the Redis server (CONFIG SET maxmemory-policy noeviction, and in redis.conf).")));
	}
	freeReplyObject(reply);
}

/*
 * Connects to aggr.broker_url with bounded connect and command timeouts;
 * check_eviction warns about a maxmemory-policy that may evict the queue.
 * Returns NULL and a message on failure; never raises.
 */
AggrQueue *
AggrQueueConnect(bool check_eviction, char **error)
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

	/* a take may carry the largest element: at least 16 MB/s on top of 5 s */
	struct timeval command_timeout = {5 + AGGR_QUEUE_MAX_ELEMENT_BYTES / (16 * 1024 * 1024), 0};
	redisContext *c;
	redisReply *reply;
	AggrQueue  *queue;

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
	if (check_eviction)
		CheckEvictionPolicy(c);
	queue = MemoryContextAllocZero(TopMemoryContext, sizeof(AggrQueue));
	queue->redis = c;
	return queue;
}

void
AggrQueueClose(AggrQueue *queue)
{
	if (queue == NULL)
		return;
	if (queue->redis != NULL)
		redisFree(queue->redis);
	pfree(queue);
}

/*
 * True when an idle connection has been closed by the server (Redis
 * restarted, a timeout): it then has EOF or an error waiting, where a live
 * idle connection has nothing to read.
 */
bool
AggrQueueClosedWhileIdle(AggrQueue *queue)
{
	struct pollfd pfd = {.fd = queue->redis->fd,.events = POLLIN};

	return poll(&pfd, 1, 0) != 0;
}

/*
 * Marks the connection lost: every later call answers DOWN.  sent: the
 * command may have reached Redis, so whether it ran is unknown.
 */
static AggrQueueStatus
Lost(AggrQueue *queue, char **error, const char *why, bool sent)
{
	*error = psprintf("%s: %s", why, queue->redis ? queue->redis->errstr : "not connected");
	if (queue->redis != NULL)
		redisFree(queue->redis);
	queue->redis = NULL;
	return sent ? AGGR_QUEUE_UNKNOWN : AGGR_QUEUE_DOWN;
}

/*
 * An error reply that says Redis cannot run commands for now (it is loading
 * its data, busy in a long script, a replica without its master, in a
 * failover): the command did not run.  It is an outage to wait out, like a
 * lost connection, not a refusal of the command.
 */
static bool
RedisUnavailableNow(const redisReply *reply)
{
	static const char *const prefixes[] = {
		"LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN"
	};

	if (reply->type != REDIS_REPLY_ERROR)
		return false;
	for (int i = 0; i < lengthof(prefixes); i++)
	{
		size_t		n = strlen(prefixes[i]);

		if (strncmp(reply->str, prefixes[i], n) == 0 &&
			(reply->str[n] == ' ' || reply->str[n] == '\0'))
			return true;
	}
	return false;
}

/*
 * What an error reply means: an outage (RedisUnavailableNow; the connection
 * is closed, the next call connects again; ran: an earlier command of the
 * same round trip ran), else a refusal with Redis's message.
 */
static AggrQueueStatus
ErrorReply(AggrQueue *queue, char **error, const redisReply *reply, bool ran)
{
	if (!RedisUnavailableNow(reply))
	{
		*error = pstrdup(reply->str);
		return AGGR_QUEUE_REFUSED;
	}
	*error = psprintf("Redis cannot run commands now: %s", reply->str);
	redisFree(queue->redis);
	queue->redis = NULL;
	return ran ? AGGR_QUEUE_UNKNOWN : AGGR_QUEUE_DOWN;
}

/*
 * Loads a script (SCRIPT LOAD) and keeps the SHA1 Redis answers; after a
 * restart of Redis it is loaded again with the same SHA1.
 */
static AggrQueueStatus
LoadScript(AggrQueue *queue, Script *script, char **error)
{
	redisReply *load = redisCommand(queue->redis, "SCRIPT LOAD %b", script->text, *script->length);

	if (load == NULL)
		return Lost(queue, error, "Redis command failed", false);
	if (RedisUnavailableNow(load))
	{
		AggrQueueStatus status = ErrorReply(queue, error, load, false);

		freeReplyObject(load);
		return status;
	}
	if (load->type != REDIS_REPLY_STRING || load->len >= sizeof(script->sha1))
	{
		*error = psprintf("Redis refused to load a script of aggr: %s",
						  load->type == REDIS_REPLY_ERROR ? load->str : "unexpected reply");
		freeReplyObject(load);
		return AGGR_QUEUE_REFUSED;
	}
	memcpy(script->sha1, load->str, load->len);
	script->sha1[load->len] = '\0';
	freeReplyObject(load);
	return AGGR_QUEUE_OK;
}

/*
 * Runs a script by its SHA1 with keys and arguments argv[0..argc-1], then,
 * when list is not NULL, an LRANGE of that whole list in the same round
 * trip.  Loads the script and runs it again when Redis does not know it
 * (nothing ran).
 * replies[0] is the script's, replies[1] the LRANGE's; the caller frees
 * them.  A script error is REFUSED with Redis's message.
 */
static AggrQueueStatus
RunScript(AggrQueue *queue, Script *script, int nkeys, int argc, const char **argv,
		  const size_t *argvlen, const char *list, redisReply **replies,
		  char **error)
{
	int			total = argc + 3;
	const char **args = palloc(sizeof(char *) * total);
	size_t	   *lens = palloc(sizeof(size_t) * total);
	char		nkeys_buf[16];
	int			nreplies = list ? 2 : 1;

	AggrQueueStatus status;

	if (queue->redis == NULL)
		return Lost(queue, error, "not connected", false);
	if (script->sha1[0] == '\0' && (status = LoadScript(queue, script, error)) != AGGR_QUEUE_OK)
		return status;
	snprintf(nkeys_buf, sizeof(nkeys_buf), "%d", nkeys);
	args[0] = "EVALSHA";
	args[1] = script->sha1;
	args[2] = nkeys_buf;
	lens[0] = strlen(args[0]);
	lens[2] = strlen(args[2]);
	for (int i = 0; i < argc; i++)
	{
		args[i + 3] = argv[i];
		lens[i + 3] = argvlen ? argvlen[i] : strlen(argv[i]);
	}

	for (int attempt = 0;; attempt++)
	{
		lens[1] = strlen(script->sha1);
		replies[0] = replies[1] = NULL;
		if (redisAppendCommandArgv(queue->redis, total, args, lens) != REDIS_OK ||
			(list && redisAppendCommand(queue->redis, "LRANGE %s 0 -1", list) != REDIS_OK))
			return Lost(queue, error, "Redis command failed", false);
		for (int i = 0; i < nreplies; i++)
			if (redisGetReply(queue->redis, (void **) &replies[i]) != REDIS_OK)
			{
				for (int j = 0; j < i; j++)
					freeReplyObject(replies[j]);
				replies[0] = replies[1] = NULL;
				/* written, or partly: the script may have run */
				return Lost(queue, error, "Redis command failed", true);
			}
		if (attempt == 0 && replies[0]->type == REDIS_REPLY_ERROR &&
			strncmp(replies[0]->str, "NOSCRIPT", 8) == 0)
		{
			for (int i = 0; i < nreplies; i++)
				freeReplyObject(replies[i]);
			if ((status = LoadScript(queue, script, error)) != AGGR_QUEUE_OK)
				return status;
			continue;
		}
		break;
	}
	for (int i = 0; i < nreplies; i++)
		if (replies[i]->type == REDIS_REPLY_ERROR)
		{
			status = ErrorReply(queue, error, replies[i], i > 0);
			for (int j = 0; j < nreplies; j++)
				freeReplyObject(replies[j]);
			replies[0] = replies[1] = NULL;
			return status;
		}
	return AGGR_QUEUE_OK;
}

/* The value after name in a flat reply of name/value pairs, or NULL. */
static redisReply *
Field(redisReply *reply, const char *name)
{
	if (reply->type != REDIS_REPLY_ARRAY)
		return NULL;
	for (size_t i = 0; i + 1 < reply->elements; i += 2)
		if (reply->element[i]->type == REDIS_REPLY_STRING &&
			strcmp(reply->element[i]->str, name) == 0)
			return reply->element[i + 1];
	return NULL;
}

static int64
IntegerField(redisReply *reply, const char *name, bool *ok)
{
	redisReply *value = Field(reply, name);

	if (value != NULL && value->type == REDIS_REPLY_INTEGER)
		return value->integer;
	if (value != NULL && value->type == REDIS_REPLY_STRING)
		return strtoll(value->str, NULL, 10);
	*ok = false;
	return 0;
}

/* 32 random hex digits and a NUL: a batch token or an envelope id */
static void
RandomId(char *id)
{
	uint8		random_bytes[16];

	if (!pg_strong_random(random_bytes, sizeof(random_bytes)))
		elog(ERROR, "could not generate a random id");
	hex_encode((char *) random_bytes, sizeof(random_bytes), id);
	id[32] = '\0';
}

void
AggrQueueBeginEnvelope(StringInfo element, char *id)
{
	RandomId(id);
	appendStringInfo(element, ENVELOPE_HEAD "%s\",\"events\":", id);
}

void
AggrQueueEndEnvelope(StringInfo element)
{
	appendStringInfoChar(element, '}');
}

/* The push, or (with no elements) the depth; see push.lua. */
static AggrQueueStatus
RunPush(AggrQueue *queue, int nelements, const AggrQueueElement *elements,
		int64 *depth, char **error)
{
	int			nenvelopes = 0;
	int64		nevents = 0;
	int			argc;
	int			i;
	const char **argv;
	size_t	   *argvlen;
	char		bound[24];
	char		events[24];
	char		envelopes[16];
	char	   *counts;
	redisReply *replies[2];
	AggrQueueStatus status;
	bool		ok = true;
	int64		queued;

	for (i = 0; i < nelements; i++)
	{
		nevents += elements[i].nevents;
		nenvelopes += (elements[i].nevents > 1);
	}
	argc = 6 + 2 * nenvelopes + nelements;
	argv = palloc(sizeof(char *) * argc);
	argvlen = palloc(sizeof(size_t) * argc);
	counts = palloc(16 * Max(nenvelopes, 1));
	snprintf(bound, sizeof(bound), "%d", nelements > 0 ? aggr_queue_maxsize : 0);
	snprintf(events, sizeof(events), INT64_FORMAT, nevents);
	snprintf(envelopes, sizeof(envelopes), "%d", nenvelopes);
	argv[0] = aggr_queue_key;
	argv[1] = QueueKey("envelope-ids", 0);
	argv[2] = QueueKey("extra-events", 0);
	argv[3] = bound;
	argv[4] = events;
	argv[5] = envelopes;
	for (i = 0; i < 6; i++)
		argvlen[i] = strlen(argv[i]);
	for (int e = 0, pair = 6; e < nelements; e++)
		if (elements[e].nevents > 1)
		{
			char	   *count = counts + 16 * (pair - 6) / 2;

			snprintf(count, 16, "%d", elements[e].nevents);
			argv[pair] = elements[e].envelope_id;
			argvlen[pair++] = strlen(elements[e].envelope_id);
			argv[pair] = count;
			argvlen[pair++] = strlen(count);
		}
	for (int e = 0; e < nelements; e++)
	{
		argv[6 + 2 * nenvelopes + e] = elements[e].data;
		argvlen[6 + 2 * nenvelopes + e] = elements[e].length;
	}

	status = RunScript(queue, &push_script, 3, argc, argv, argvlen, NULL, replies, error);
	if (status != AGGR_QUEUE_OK)
		return status;
	queued = IntegerField(replies[0], "queued", &ok);
	*depth = IntegerField(replies[0], "depth", &ok);
	freeReplyObject(replies[0]);
	if (!ok)
	{
		*error = pstrdup("unexpected answer from the push script");
		return AGGR_QUEUE_REFUSED;
	}
	return (nelements > 0 && queued == 0) ? AGGR_QUEUE_FULL : AGGR_QUEUE_OK;
}

AggrQueueStatus
AggrQueuePush(AggrQueue *queue, int nelements, const AggrQueueElement *elements,
			  int64 *depth, char **error)
{
	Assert(nelements > 0);
	return RunPush(queue, nelements, elements, depth, error);
}

AggrQueueStatus
AggrQueueDepth(AggrQueue *queue, int64 *depth, char **error)
{
	return RunPush(queue, 0, NULL, depth, error);
}

/* A claimed envelope of a taken batch: 'envelope:<id>' = events. */
typedef struct Claim
{
	const char *id;
	int			nevents;
	bool		used;
} Claim;

static int
CompareClaims(const void *a, const void *b)
{
	return strcmp(((const Claim *) a)->id, ((const Claim *) b)->id);
}

/*
 * The events an element of a taken batch holds: its envelope's, if the batch
 * claimed that id and no earlier element used it (a copy of an envelope is
 * just an element), else 1.
 */
static int
ElementEvents(const char *data, int length, Claim *claims, int nclaims)
{
	const int	head = strlen(ENVELOPE_HEAD);
	char		id[33];
	int			n = 0;
	Claim		key;
	Claim	   *claim;

	if (nclaims == 0 || length <= head || memcmp(data, ENVELOPE_HEAD, head) != 0)
		return 1;
	while (n < 32 && head + n < length && isxdigit((unsigned char) data[head + n]))
	{
		id[n] = data[head + n];
		n++;
	}
	if (n == 0 || head + n >= length || data[head + n] != '"')
		return 1;
	id[n] = '\0';
	key.id = id;
	claim = bsearch(&key, claims, nclaims, sizeof(Claim), CompareClaims);
	if (claim == NULL || claim->used)
		return 1;
	claim->used = true;
	return claim->nevents;
}

/* Copies the take's answer out of hiredis memory; false if it is malformed. */
static bool
ReadTaken(redisReply *take, redisReply *list, AggrTakenBatch *batch)
{
	bool		ok = true;
	redisReply *hash = Field(take, "batch");
	redisReply *token;
	redisReply *head;
	int64		oversize = 0;
	int			nclaims = 0;
	Claim	   *claims;

	batch->acknowledged = IntegerField(take, "acknowledged", &ok) == 1;
	batch->fresh = IntegerField(take, "fresh", &ok) == 1;
	if (!ok || hash == NULL || hash->type != REDIS_REPLY_ARRAY || list->type != REDIS_REPLY_ARRAY)
		return false;
	batch->attempts = Field(hash, "attempts") ? (int) IntegerField(hash, "attempts", &ok) : 0;
	token = Field(hash, "token");
	batch->token = pstrdup(token && token->type == REDIS_REPLY_STRING ? token->str : "");
	if (Field(hash, "oversize") != NULL)
		oversize = IntegerField(hash, "oversize", &ok);

	claims = palloc(sizeof(Claim) * (hash->elements / 2 + 1));
	for (size_t i = 0; i + 1 < hash->elements; i += 2)
	{
		const char *name = hash->element[i]->str;

		if (hash->element[i]->type == REDIS_REPLY_STRING &&
			strncmp(name, "envelope:", 9) == 0 &&
			hash->element[i + 1]->type == REDIS_REPLY_STRING)
		{
			claims[nclaims].id = pstrdup(name + 9);
			claims[nclaims].nevents = atoi(hash->element[i + 1]->str);
			claims[nclaims].used = false;
			nclaims++;
		}
	}
	qsort(claims, nclaims, sizeof(Claim), CompareClaims);

	batch->nelements = list->elements + (oversize > 0);
	batch->elements = palloc0(sizeof(AggrTakenElement) * Max(batch->nelements, 1));
	for (size_t i = 0; i < list->elements; i++)
	{
		redisReply *e = list->element[i];
		AggrTakenElement *out = &batch->elements[i];

		if (e->type != REDIS_REPLY_STRING)
			return false;
		out->length = (int) e->len;
		out->data = palloc(e->len + 1);
		memcpy(out->data, e->str, e->len);
		out->data[e->len] = '\0';
		out->nevents = ElementEvents(out->data, out->length, claims, nclaims);
	}
	if (oversize > 0)
	{
		AggrTakenElement *out = &batch->elements[batch->nelements - 1];

		head = Field(hash, "head");
		out->oversize = oversize;
		out->length = head && head->type == REDIS_REPLY_STRING ? (int) head->len : 0;
		out->data = palloc(out->length + 1);
		if (out->length > 0)
			memcpy(out->data, head->str, out->length);
		out->data[out->length] = '\0';
		out->nevents = 1;
	}
	return ok;
}

AggrQueueStatus
AggrQueueTake(AggrQueue *queue, int slot, bool move, const char *ack_token,
			  const char *transient_token, AggrTakenBatch *batch, char **error)
{
	char		token[33];
	char		events[16];
	char		bytes[24];
	char		head[16];
	char		largest[24];
	char	   *processing = QueueKey("processing", slot);
	const char *argv[14];
	redisReply *replies[2];
	AggrQueueStatus status;
	volatile bool ok = false;

	RandomId(token);
	snprintf(events, sizeof(events), "%d", aggr_batch_size);
	snprintf(bytes, sizeof(bytes), INT64_FORMAT, (int64) aggr_batch_bytes * 1024);
	snprintf(head, sizeof(head), "%d", AGGR_QUEUE_HEAD_BYTES);
	snprintf(largest, sizeof(largest), "%d", AGGR_QUEUE_MAX_ELEMENT_BYTES);

	argv[0] = aggr_queue_key;
	argv[1] = QueueKey("envelope-ids", 0);
	argv[2] = QueueKey("extra-events", 0);
	argv[3] = processing;
	argv[4] = QueueKey("batch", slot);
	argv[5] = QueueKey("token", slot);
	argv[6] = token;
	argv[7] = events;
	argv[8] = bytes;
	argv[9] = move ? "1" : "0";
	argv[10] = ack_token ? ack_token : "";
	argv[11] = head;
	argv[12] = transient_token ? transient_token : "";
	argv[13] = largest;
	status = RunScript(queue, &take_script, 6, 14, argv, NULL,
					   processing, replies, error);
	if (status != AGGR_QUEUE_OK)
		return status;
	/* the copy may run out of memory: the replies are freed all the same */
	PG_TRY();
	{
		ok = ReadTaken(replies[0], replies[1], batch);
	}
	PG_FINALLY();
	{
		freeReplyObject(replies[0]);
		freeReplyObject(replies[1]);
	}
	PG_END_TRY();
	if (!ok)
		return Lost(queue, error, "unexpected answer from the take script", true);
	return AGGR_QUEUE_OK;
}

/*
 * Waits until the queue has an element: BLMOVE from the queue's tail to its
 * own tail, which blocks like BLPOP but moves nothing (the take moves a whole
 * batch next), sent without blocking, then a wait on the latch and the
 * socket; on_latch handles what set the latch (SIGTERM, SIGHUP), so they are
 * honoured at once.  A lost reply loses nothing.
 */
AggrQueueStatus
AggrQueueWait(AggrQueue *queue, int timeout_ms, void (*on_latch) (void),
			  bool *ready, char **error)
{
	int			done = 0;
	char		timeout_buf[32];
	void	   *reply = NULL;
	redisReply *r;

	*ready = false;
	if (queue->redis == NULL)
		return Lost(queue, error, "not connected", false);
	snprintf(timeout_buf, sizeof(timeout_buf), "%.3f", timeout_ms / 1000.0);
	if (redisAppendCommand(queue->redis, "BLMOVE %s %s RIGHT RIGHT %s", aggr_queue_key,
						   aggr_queue_key, timeout_buf) != REDIS_OK)
		return Lost(queue, error, "Redis command failed", false);
	while (!done)
		if (redisBufferWrite(queue->redis, &done) != REDIS_OK)
			return Lost(queue, error, "Redis command failed", false);

	for (;;)
	{
		int			rc;

		if (redisReaderGetReply(queue->redis->reader, &reply) != REDIS_OK)
			return Lost(queue, error, "unreadable reply to BLMOVE", false);
		if (reply != NULL)
			break;

		/* the server answers by timeout_ms; silence beyond means a lost reply */
		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_SOCKET_READABLE | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							   queue->redis->fd, timeout_ms + 5000, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			on_latch();
		}
		if (rc & WL_TIMEOUT)
			return Lost(queue, error, "no answer to BLMOVE", false);
		if ((rc & WL_SOCKET_READABLE) && redisBufferRead(queue->redis) != REDIS_OK)
			return Lost(queue, error, "Redis command failed", false);
	}

	r = reply;
	*ready = (r->type == REDIS_REPLY_STRING);
	if (r->type == REDIS_REPLY_ERROR)
	{
		AggrQueueStatus status = ErrorReply(queue, error, r, false);

		freeReplyObject(r);
		return status;
	}
	freeReplyObject(r);
	return AGGR_QUEUE_OK;
}
