/*
 * send.h
 *		The two ways aggr-publisher delivers a run: HTTP POST /publish
 *		(send_http.c) and RPUSH onto a Redis list (send_redis.c).
 */
#ifndef AGGR_SEND_H
#define AGGR_SEND_H

#include <stdbool.h>

#include "run.h"
#include "util.h"

/* ---- send_http.c ---- */

/* Initialise/clean up libcurl once per process. */
extern bool AggrHttpGlobalInit(void);
extern void AggrHttpGlobalCleanup(void);

/*
 * GET base_url + path.  Returns false on a transport error (described in
 * err); otherwise *status and body hold the answer.
 */
extern bool AggrHttpGet(const char *base_url, const char *path, const char *token,
						double timeout_ms, long *status, AggrBuf *body,
						char *err, size_t errlen);

/* POST every batch of the run to base_url/publish; false on a setup error. */
extern bool AggrSendHttp(AggrRun *run, const char *base_url, char *err, size_t errlen);

/* ---- send_redis.c ---- */

typedef struct AggrRedisTarget
{
	char		host[256];
	int			port;
	int			db;
	char		user[128];		/* empty: AUTH with the password only */
	char		password[256];	/* empty: no AUTH */
} AggrRedisTarget;

/* Parse redis://[[user]:password@]host[:port][/db]. */
extern bool AggrRedisParseUrl(const char *url, AggrRedisTarget *target,
							  char *err, size_t errlen);

/* Connect and PING; false with the reason in err. */
extern bool AggrRedisPing(const AggrRedisTarget *target, double timeout_ms,
						  char *err, size_t errlen);

/* RPUSH every event of the run, one list element each, onto key. */
extern void AggrSendRedis(AggrRun *run, const AggrRedisTarget *target,
						  const char *key);

#endif							/* AGGR_SEND_H */
