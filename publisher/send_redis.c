/*
 * send_redis.c
 *		Delivering a run onto a Redis list with hiredis (--via redis://...).
 *
 * Each event is its own list element, the plain event JSON, pushed with one
 * RPUSH per batch; up to --concurrency RPUSH commands are pipelined on one
 * connection.  An integer reply acknowledges the batch.  If the connection
 * breaks, every pipelined batch "may have been applied" (RPUSH is not
 * idempotent: a retry can put an event on the list twice, which aggr then
 * counts as a duplicate) and is retried on a new connection with backoff.
 * Error replies such as LOADING or OOM are transient; others are definitive.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "send.h"

typedef struct InFlight
{
	int			batch;
	double		started_ms;
} InFlight;

static bool
CopyPart(char *dst, size_t dstlen, const char *src, size_t len)
{
	if (len >= dstlen)
		return false;
	memcpy(dst, src, len);
	dst[len] = '\0';
	return true;
}

bool
AggrRedisParseUrl(const char *url, AggrRedisTarget *t, char *err, size_t errlen)
{
	const char *p;
	const char *at;
	const char *hostend;
	const char *slash;
	char	   *end;
	long		v;

	memset(t, 0, sizeof(*t));
	t->port = 6379;
	if (strncmp(url, "redis://", 8) != 0)
	{
		snprintf(err, errlen, "a Redis URL starts with redis://");
		return false;
	}
	p = url + 8;
	slash = strchr(p, '/');
	if (slash == NULL)
		slash = p + strlen(p);
	at = memchr(p, '@', (size_t) (slash - p));
	if (at)
	{
		const char *colon = memchr(p, ':', (size_t) (at - p));

		if (colon == NULL ||
			!CopyPart(t->user, sizeof(t->user), p, (size_t) (colon - p)) ||
			!CopyPart(t->password, sizeof(t->password), colon + 1, (size_t) (at - colon - 1)))
		{
			snprintf(err, errlen, "credentials in a Redis URL are [user]:password@");
			return false;
		}
		p = at + 1;
	}
	if (*p == '[')
	{
		hostend = memchr(p, ']', (size_t) (slash - p));
		if (hostend == NULL || !CopyPart(t->host, sizeof(t->host), p + 1, (size_t) (hostend - p - 1)))
		{
			snprintf(err, errlen, "unterminated IPv6 address in Redis URL");
			return false;
		}
		hostend++;
	}
	else
	{
		hostend = memchr(p, ':', (size_t) (slash - p));
		if (hostend == NULL)
			hostend = slash;
		if (!CopyPart(t->host, sizeof(t->host), p, (size_t) (hostend - p)))
		{
			snprintf(err, errlen, "host name too long in Redis URL");
			return false;
		}
	}
	if (t->host[0] == '\0')
	{
		snprintf(err, errlen, "no host in Redis URL");
		return false;
	}
	if (hostend < slash)
	{
		if (*hostend != ':' || hostend + 1 == slash)
		{
			snprintf(err, errlen, "bad port in Redis URL");
			return false;
		}
		v = strtol(hostend + 1, &end, 10);
		if (end != slash || v < 1 || v > 65535)
		{
			snprintf(err, errlen, "bad port in Redis URL");
			return false;
		}
		t->port = (int) v;
	}
	if (*slash == '/' && slash[1] != '\0')
	{
		v = strtol(slash + 1, &end, 10);
		if (*end != '\0' || v < 0 || v > 1000000 || end == slash + 1)
		{
			snprintf(err, errlen, "bad database number in Redis URL");
			return false;
		}
		t->db = (int) v;
	}
	return true;
}

static struct timeval
Timeval(double ms)
{
	struct timeval tv;

	tv.tv_sec = (time_t) (ms / 1000);
	tv.tv_usec = (suseconds_t) ((ms - tv.tv_sec * 1000.0) * 1000);
	return tv;
}

/* Run a setup command (AUTH, SELECT); false with the reason in err. */
static bool
SetupCommand(redisContext *c, int argc, const char **argv, char *err, size_t errlen)
{
	redisReply *r = redisCommandArgv(c, argc, argv, NULL);
	bool		ok = (r != NULL && r->type != REDIS_REPLY_ERROR);

	if (r == NULL)
		snprintf(err, errlen, "%s: %s", argv[0], c->errstr);
	else if (!ok)
		snprintf(err, errlen, "%s: %s", argv[0], r->str);
	if (r)
		freeReplyObject(r);
	return ok;
}

/*
 * Connect, authenticate and select the database.  NULL on failure, with
 * *refused saying whether the failure was the server's definitive answer.
 */
static redisContext *
Connect(const AggrRedisTarget *t, double timeout_ms, bool *refused, char *err, size_t errlen)
{
	redisContext *c = redisConnectWithTimeout(t->host, t->port, Timeval(timeout_ms < 5000 ? timeout_ms : 5000));
	char		db[16];
	const char *auth_user[] = {"AUTH", t->user, t->password};
	const char *auth[] = {"AUTH", t->password};
	const char *select[] = {"SELECT", db};

	*refused = false;
	if (c == NULL || c->err)
	{
		snprintf(err, errlen, "could not connect to Redis at %s:%d: %s",
				 t->host, t->port, c ? c->errstr : "out of memory");
		if (c)
			redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, Timeval(timeout_ms));
	redisEnableKeepAlive(c);
	snprintf(db, sizeof(db), "%d", t->db);
	if ((t->password[0] &&
		 !(t->user[0]
		   ? SetupCommand(c, 3, auth_user, err, errlen)
		   : SetupCommand(c, 2, auth, err, errlen))) ||
		(t->db != 0 && !SetupCommand(c, 2, select, err, errlen)))
	{
		*refused = (c->err == 0);
		redisFree(c);
		return NULL;
	}
	return c;
}

bool
AggrRedisPing(const AggrRedisTarget *target, double timeout_ms, char *err, size_t errlen)
{
	bool		refused;
	redisContext *c = Connect(target, timeout_ms, &refused, err, errlen);
	const char *ping[] = {"PING"};
	bool		ok;

	if (c == NULL)
		return false;
	ok = SetupCommand(c, 1, ping, err, errlen);
	redisFree(c);
	return ok;
}

/* Settle the answer to the oldest pipelined batch. */
static void
HandleReply(AggrRun *run, InFlight *f, redisReply *r, double now_ms)
{
	const AggrBatch *batch = &run->stream->batches[f->batch];
	AggrAnswer	answer = {batch->count, -1, -1};
	char		error[200];

	if (r->type == REDIS_REPLY_INTEGER)
	{
		AggrRunFinished(run, f->batch, AGGR_ATTEMPT_ACKED, now_ms,
						now_ms - f->started_ms, -1, NULL, &answer);
		return;
	}
	if (r->type == REDIS_REPLY_ERROR)
		snprintf(error, sizeof(error), "Redis error: %.150s", r->str);
	else
		snprintf(error, sizeof(error), "unexpected Redis reply type %d", r->type);
	AggrRunFinished(run, f->batch,
					r->type == REDIS_REPLY_ERROR ? AggrClassifyRedisError(r->str) : AGGR_ATTEMPT_REJECTED,
					now_ms, now_ms - f->started_ms, -1, error, NULL);
}

void
AggrSendRedis(AggrRun *run, const AggrRedisTarget *target, const char *key)
{
	const AggrStream *stream = run->stream;
	size_t		maxargs = (size_t) stream->batch_size + 2;
	const char **argv = AggrMalloc(sizeof(char *) * maxargs);
	size_t	   *argvlen = AggrMalloc(sizeof(size_t) * maxargs);
	InFlight   *pipe = AggrMalloc(sizeof(InFlight) * (size_t) run->concurrency);
	int			head = 0;		/* pipe is a ring of n_pipe entries from head */
	int			n_pipe = 0;
	redisContext *c = NULL;

	argv[0] = "RPUSH";
	argvlen[0] = 5;
	argv[1] = key;
	argvlen[1] = strlen(key);

	AggrRunBegin(run);
	while (!AggrRunDone(run))
	{
		double		now = AggrNowMs();
		double		wait = -1;
		int			b;
		redisReply *r;

		while (n_pipe < run->concurrency && (b = AggrRunNext(run, now, &wait)) >= 0)
		{
			const AggrBatch *batch = &stream->batches[b];
			char		cerr[256];
			bool		refused;

			AggrRunStarted(run, b);
			if (c == NULL && (c = Connect(target, run->timeout_ms, &refused, cerr, sizeof(cerr))) == NULL)
			{
				AggrRunFinished(run, b, refused ? AGGR_ATTEMPT_REJECTED : AGGR_ATTEMPT_NOT_APPLIED,
								now, AggrNowMs() - now, -1, cerr, NULL);
				now = AggrNowMs();
				continue;
			}
			for (int i = 0; i < batch->count; i++)
				argv[i + 2] = AggrGenEventJson(stream, batch->first + i, &argvlen[i + 2]);
			if (redisAppendCommandArgv(c, batch->count + 2, argv, argvlen) != REDIS_OK)
			{
				/* only buffered, never sent: certainly not applied */
				AggrRunFinished(run, b, AGGR_ATTEMPT_NOT_APPLIED, now, 0, -1,
								"could not buffer the RPUSH command", NULL);
				continue;
			}
			pipe[(head + n_pipe) % run->concurrency].batch = b;
			pipe[(head + n_pipe) % run->concurrency].started_ms = now;
			n_pipe++;
		}
		if (n_pipe == 0)
		{
			/* nothing in flight: wait for the next retry to come due */
			double		ms = (wait >= 0 && wait < 100) ? wait : 100;
			struct timespec ts = {0, (long) (ms * 1e6)};

			AggrRunProgress(run, now, false);
			nanosleep(&ts, NULL);
			continue;
		}
		if (redisGetReply(c, (void **) &r) != REDIS_OK)
		{
			char		error[200];

			snprintf(error, sizeof(error), "Redis connection lost: %.150s", c->errstr);
			for (; n_pipe > 0; n_pipe--, head = (head + 1) % run->concurrency)
				AggrRunFinished(run, pipe[head].batch, AGGR_ATTEMPT_MAYBE_APPLIED,
								AggrNowMs(), AggrNowMs() - pipe[head].started_ms, -1, error, NULL);
			redisFree(c);
			c = NULL;
		}
		else
		{
			HandleReply(run, &pipe[head], r, AggrNowMs());
			freeReplyObject(r);
			head = (head + 1) % run->concurrency;
			n_pipe--;
		}
		AggrRunProgress(run, AggrNowMs(), false);
	}
	AggrRunProgress(run, AggrNowMs(), true);
	if (c)
		redisFree(c);
	free(pipe);
	free(argvlen);
	free(argv);
}
