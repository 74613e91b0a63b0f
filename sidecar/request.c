/*-------------------------------------------------------------------------
 *
 * request.c
 *	  One request of aggr-sidecar, from parsed HTTP to its answer: the
 *	  route and method, the POST headers (bearer token, framing,
 *	  Content-Length against --max-body), the body collected up to
 *	  --max-body within the --max-buffered budget shared by all requests,
 *	  the /events parameters, one SQL call, and the answer built from its
 *	  result or from the SQLSTATE of its failure.
 *
 *	  Everything here touches untrusted bytes and nothing here touches a
 *	  socket or a database connection: the headers and query parameters
 *	  come through AggrRequestIn's lookups and the SQL call goes through an
 *	  AggrDbExecFunc, so the fuzz harness (fuzz_request.c) runs this file
 *	  as the server does, with a recorder in place of PostgreSQL.
 *
 *	  Order kept: AggrRequestStart (headers only, no body byte read yet),
 *	  AggrRequestAppend per body chunk, AggrRequestFinish once the body is
 *	  complete, then AggrRequestRun only when Finish returned true.  A step
 *	  that answers sets req->answered; later steps then do nothing more.
 *	  AggrRequestFree gives back what the request counted in the budget.
 *
 *-------------------------------------------------------------------------
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <zlib.h>

#include "sidecar.h"

#define EVENTS_DEFAULT_LIMIT 100
#define BODY_FIRST_RESERVE (64 * 1024)
#define INFLATE_STEP (64 * 1024)
#define HEALTH_STALE_GRACE_US (2 * 1000000)	/* while a refresh runs */	/* output room added per
																		 * inflate() call */
#define EVENTS_MAX_LIMIT 10000

typedef struct RouteDef
{
	const char *path;
	AggrRoute	route;
	bool		post;			/* POST, else GET and HEAD */
	bool		reads_events;	/* guarded by --read-token */
} RouteDef;

/* /healthz and /metrics stay open: they name no event and no secret */
static const RouteDef routes[] = {
	{"/publish", AGGR_ROUTE_PUBLISH, true, false},
	{"/events", AGGR_ROUTE_EVENTS, false, true},
	{"/events/stream", AGGR_ROUTE_STREAM, false, true},
	{"/stats", AGGR_ROUTE_STATS, false, true},
	{"/healthz", AGGR_ROUTE_HEALTHZ, false, false},
	{"/metrics", AGGR_ROUTE_METRICS, false, false},
	{"/openapi.json", AGGR_ROUTE_OPENAPI, false, false},
};

static atomic_size_t buffered;	/* body bytes reserved by all requests */

static const char json_type[] = "application/json";

/* body bytes all live requests hold in the --max-buffered budget */
size_t
AggrRequestBuffered(void)
{
	return atomic_load(&buffered);
}

/* the answer: status, type and body (copied) */
static void
Answer(AggrRequest *req, int status, const char *content_type,
	   const char *body, size_t len)
{
	req->answer.status = status;
	req->answer.content_type = content_type;
	AggrBufAppend(&req->answer.body, body, len);
	req->answered = true;
}

/* answer {"error": message} */
static void
AnswerError(AggrRequest *req, int status, const char *message)
{
	AggrBuf    *body = &req->answer.body;

	AggrBufAppendStr(body, "{\"error\":");
	AggrBufJsonString(body, message);
	AggrBufAppendStr(body, "}");
	Answer(req, status, json_type, "", 0);
}

/* the status, Retry-After and body that a failed SQL call earns */
static void
AnswerDbError(AggrRequest *req, const AggrDbError *err)
{
	const AggrErrorMap *map = AggrSqlstateLookup(err->sqlstate);

	AggrDbErrorJson(&req->answer.body, err);
	req->answer.retry_after = map->retry_after;
	Answer(req, map->http_status, json_type, "", 0);
}

/* ---- POST /publish ---- */

/* a bearer token, compared in time independent of where it differs */
static bool
TokenMatches(const char *token, const char *auth)
{
	size_t		tlen = strlen(token);
	size_t		alen;
	unsigned char diff = 0;

	if (auth == NULL || strncasecmp(auth, "Bearer ", 7) != 0)
		return false;
	auth += 7;
	while (*auth == ' ')
		auth++;
	alen = strlen(auth);
	/* compare every byte whatever the first difference */
	for (size_t i = 0; i < tlen; i++)
		diff |= (unsigned char) token[i] ^ (unsigned char) (i < alen ? auth[i] : 0);
	return diff == 0 && alen == tlen;
}

/*
 * Count bytes of body buffer against --max-buffered; false, with nothing
 * counted, when they do not fit.
 */
static bool
ReserveBody(AggrRequest *req, size_t bytes)
{
	if (atomic_fetch_add(&buffered, bytes) + bytes > aggr_config.max_buffered)
	{
		atomic_fetch_sub(&buffered, bytes);
		return false;
	}
	req->reserved += bytes;
	return true;
}

/*
 * What a body counts in the budget before its first byte: only a first piece,
 * the rest as it arrives, so a client that declares 8 MB and sends a byte now
 * and then holds 64 KB of --max-buffered, not 8 MB.
 */
static size_t
FirstReserve(int64_t content_length)
{
	if (content_length < 0)
		return 4096 + 1;		/* chunked: unknown */
	return (content_length < BODY_FIRST_RESERVE ? (size_t) content_length : BODY_FIRST_RESERVE) + 1;
}

/* a media type is name, optionally followed by parameters (";...") */
static bool
IsMediaType(const char *value, const char *name)
{
	size_t		n = strlen(name);

	return value != NULL && strncasecmp(value, name, n) == 0 &&
		(value[n] == '\0' || value[n] == ';' || value[n] == ' ');
}

/*
 * Content-Type and Content-Encoding: NDJSON (one event per line, what log
 * shippers send) or JSON; gzip or zlib-wrapped deflate, inflated as it
 * arrives (--max-body then bounds the inflated size too), or identity.
 * False, answered 415, for another encoding.
 */
static bool
PublishFormat(AggrRequest *req, const AggrRequestIn *in)
{
	const char *type = in->header(in->arg, "Content-Type");
	const char *encoding = in->header(in->arg, "Content-Encoding");

	req->ndjson = IsMediaType(type, "application/x-ndjson") ||
		IsMediaType(type, "application/ndjson");
	if (encoding == NULL || strcasecmp(encoding, "identity") == 0)
		return true;
	if (strcasecmp(encoding, "gzip") != 0 && strcasecmp(encoding, "x-gzip") != 0 &&
		strcasecmp(encoding, "deflate") != 0)
	{
		AnswerError(req, 415, "unsupported Content-Encoding; gzip, deflate or identity are accepted");
		return false;
	}
	/* window bits 15 + 32: either a gzip or a zlib header */
	req->inflater = AggrCalloc(1, sizeof(z_stream));
	if (inflateInit2(req->inflater, 15 + 32) != Z_OK)
		abort();				/* only out of memory */
	return true;
}

/*
 * Decisions taken from the headers alone, before any body byte is read;
 * answers the request when one of them refuses it.
 */
static void
PublishHeaders(AggrRequest *req, const AggrRequestIn *in)
{
	const char *cl;
	const char *te;
	int64_t		len = -1;

	if (aggr_config.token &&
		!TokenMatches(aggr_config.token, in->header(in->arg, "Authorization")))
	{
		req->answer.www_authenticate = true;
		AnswerError(req, 401, "missing or wrong bearer token");
		return;
	}

	cl = in->header(in->arg, "Content-Length");
	te = in->header(in->arg, "Transfer-Encoding");
	if (in->header_count(in->arg, "Content-Length") > 1)
		AnswerError(req, 400, "more than one Content-Length header");
	else if (cl && te)
		AnswerError(req, 400, "both Content-Length and Transfer-Encoding");
	else if (te && strcasecmp(te, "chunked") != 0)
		/* MHD reads such a body to the end of the connection: refuse it now */
		AnswerError(req, 400, "unsupported Transfer-Encoding; only chunked is accepted");
	else if (cl && (!AggrParseInt64(cl, &len) || len < 0))
		AnswerError(req, 400, "invalid Content-Length");
	else if (len > (int64_t) aggr_config.max_body)
		AnswerError(req, 413, "request body too large");
	else if (!PublishFormat(req, in))
		return;
	else if (!ReserveBody(req, FirstReserve(len)))
	{
		req->answer.retry_after = true;
		AnswerError(req, 503, "too many request bodies in flight");
	}
	else
	{
		req->body_cap = req->reserved;
		req->body = AggrMalloc(req->body_cap);
		req->body_since_us = AggrNowUs();
	}
}

/*
 * A body must average --min-body-rate once --timeout seconds have passed:
 * each trickled byte resets the idle timeout, so without this a client
 * could hold its part of --max-buffered for as long as it liked.
 */
static bool
BodyTooSlow(const AggrRequest *req, size_t received)
{
	int64_t		grace_us = (int64_t) aggr_config.client_timeout * 1000000;
	int64_t		late_us;

	if (aggr_config.min_body_rate == 0)
		return false;
	late_us = AggrNowUs() - req->body_since_us - grace_us;
	return late_us > 0 && (double) received < (double) aggr_config.min_body_rate * late_us / 1e6;
}

/* room for more body bytes; false, with a flag set, when there is none */
static bool
GrowBody(AggrRequest *req, size_t more)
{
	size_t		need = req->body_len + more + 1;
	size_t		cap = req->body_cap;

	if (more > aggr_config.max_body - req->body_len)
	{
		req->too_large = true;
		return false;
	}
	if (need <= req->body_cap)
		return true;
	while (cap < need)
		cap *= 2;
	if (!ReserveBody(req, cap - req->body_cap))
	{
		req->over_budget = true;
		return false;
	}
	req->body = AggrRealloc(req->body, cap);
	req->body_cap = cap;
	return true;
}

/*
 * Inflates one chunk of a compressed body into the body buffer.  Past
 * --max-body, one byte more of output is a 413, decided while inflating: a
 * small bomb never becomes a large buffer.
 */
static void
Inflate(AggrRequest *req, const char *data, size_t size)
{
	z_stream   *z = req->inflater;
	char		spill;

	z->next_in = (Bytef *) data;
	z->avail_in = (uInt) size;
	for (;;)
	{
		bool		full = req->body_len == aggr_config.max_body;
		size_t		room = full ? 1 : aggr_config.max_body - req->body_len;
		int			rc;

		if (room > INFLATE_STEP)
			room = INFLATE_STEP;
		if (z->avail_in > 0 && req->inflated)
		{
			/* another gzip member (RFC 1952 allows several); junk fails below */
			if (inflateReset(z) != Z_OK)
				abort();
			req->inflated = false;
		}
		if (!full && !GrowBody(req, room))
			return;
		z->next_out = (Bytef *) (full ? &spill : req->body + req->body_len);
		z->avail_out = (uInt) room;
		rc = inflate(z, Z_NO_FLUSH);
		if (full && z->avail_out == 0)
		{
			req->too_large = true;
			return;
		}
		if (!full)
			req->body_len += room - z->avail_out;
		if (rc == Z_STREAM_END)
			req->inflated = true;
		else if (rc == Z_BUF_ERROR && z->avail_in == 0)
			return;				/* the output room ran out with the input */
		else if (rc != Z_OK)
		{
			req->bad_encoding = true;	/* Z_DATA_ERROR, or no progress */
			return;
		}
		if (z->avail_in == 0 && z->avail_out > 0)
			return;				/* all taken, nothing pending */
	}
}

static void
PublishAppend(AggrRequest *req, const char *data, size_t size)
{
	size_t		allowed;

	if (req->too_large || req->over_budget || req->too_slow || req->bad_encoding)
		return;					/* discarding the rest */

	/*
	 * --max-body bounds what is sent, compressed or not; a compressed body is
	 * inflated up to that bound first, so what is wrong with its bytes is
	 * found in the order they came, whatever the chunks.
	 */
	allowed = req->wire_len < aggr_config.max_body ? aggr_config.max_body - req->wire_len : 0;
	req->wire_len += size;
	if (BodyTooSlow(req, req->wire_len))
		req->too_slow = true;
	else if (req->inflater)
	{
		Inflate(req, data, size < allowed ? size : allowed);
		if (size > allowed && !req->bad_encoding)
			req->too_large = true;
	}
	else if (GrowBody(req, size))
	{
		memcpy(req->body + req->body_len, data, size);
		req->body_len += size;
	}
	if (req->too_large || req->over_budget || req->too_slow || req->bad_encoding)
	{
		free(req->body);
		req->body = NULL;
		req->body_len = req->body_cap = 0;
		atomic_fetch_sub(&buffered, req->reserved);
		req->reserved = 0;
	}
}

static void
Publish(AggrRequest *req, AggrDbExecFunc exec)
{
	/*
	 * The body goes as a binary-format text parameter: its length travels
	 * with it, so PostgreSQL sees every byte (a NUL included) and rejects
	 * what is not valid UTF-8 or not JSON.
	 */
	const char *values[1] = {req->body ? req->body : ""};
	int			lengths[1] = {(int) req->body_len};
	int			formats[1] = {1};
	AggrDbError err = {0};
	PGresult   *res;

	res = exec(req->ndjson ? AGGR_STMT_PUBLISH_NDJSON : AGGR_STMT_PUBLISH,
			   values, lengths, formats, &err);
	if (res == NULL)
		AnswerDbError(req, &err);
	else if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
		AnswerError(req, 500, "aggr_publish returned no result");
	else
	{
		/* a "unique" key means ingested now (200), else queued (202) */
		bool		direct = PQgetvalue(res, 0, 1)[0] == 't';

		Answer(req, direct ? 200 : 202, json_type, PQgetvalue(res, 0, 0),
			   PQgetlength(res, 0, 0));
		req->accepted = atol(PQgetvalue(res, 0, 2));
	}
	PQclear(res);
	AggrDbErrorFree(&err);
}

/* ---- GET /events ---- */

/*
 * The topic (?topic= means every topic) and the seq to start after, given
 * as after (-1: none); false when answered 400 with after_error.
 */
static bool
TopicAndAfter(AggrRequest *req, const AggrRequestIn *in, const char *after,
			  const char *after_error)
{
	const char *topic = in->query(in->arg, "topic");

	req->after = -1;
	if (after && (!AggrParseInt64(after, &req->after) || req->after < 0))
	{
		AnswerError(req, 400, after_error);
		return false;
	}
	/* checked here: the stream would meet it only in a catch-up read */
	if (topic && !AggrValidUtf8(topic, strlen(topic)))
	{
		AnswerError(req, 400, "topic must be valid UTF-8");
		return false;
	}
	if (topic && topic[0] != '\0')
		req->topic = AggrStrdup(topic);
	return true;
}

/* the query parameters; false when answered 400 */
static bool
EventsParams(AggrRequest *req, const AggrRequestIn *in)
{
	const char *limit = in->query(in->arg, "limit");

	req->limit = EVENTS_DEFAULT_LIMIT;
	if (limit && (!AggrParseInt64(limit, &req->limit) || req->limit < 1 ||
				  req->limit > EVENTS_MAX_LIMIT))
	{
		AnswerError(req, 400, "limit must be an integer from 1 to 10000");
		return false;
	}
	return TopicAndAfter(req, in, in->query(in->arg, "after"),
						 "after must be a non-negative integer");
}

static void
Events(AggrRequest *req, AggrDbExecFunc exec)
{
	char		limit_txt[24];
	char		after_txt[24];
	char		bytes_txt[24];
	const char *values[4];
	AggrDbError err = {0};
	PGresult   *res;

	snprintf(limit_txt, sizeof(limit_txt), "%lld", (long long) req->limit);
	snprintf(after_txt, sizeof(after_txt), "%lld", (long long) req->after);
	values[0] = req->topic;
	values[1] = limit_txt;
	values[2] = req->after >= 0 ? after_txt : NULL;
	snprintf(bytes_txt, sizeof(bytes_txt), "%zu", aggr_config.max_page_bytes);
	values[3] = bytes_txt;

	res = exec(AGGR_STMT_EVENTS, values, NULL, NULL, &err);
	if (res == NULL)
	{
		AnswerDbError(req, &err);
		AggrDbErrorFree(&err);
		return;
	}

	/* a page full by count or by bytes announces the next one */
	if (!PQgetisnull(res, 0, 1) && PQgetvalue(res, 0, 3)[0] == 't')
	{
		AggrBuf		link;

		AggrBufInit(&link, 128);
		AggrBufAppendStr(&link, "</events?");
		if (req->topic)
		{
			AggrBufAppendStr(&link, "topic=");
			AggrBufUrlEncode(&link, req->topic);
			AggrBufAppendStr(&link, "&");
		}
		AggrBufPrintf(&link, "limit=%lld&after=%s>; rel=\"next\"",
					  (long long) req->limit, PQgetvalue(res, 0, 1));
		req->answer.link = link.data;
	}
	Answer(req, 200, json_type, PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0));
	PQclear(res);
}

/* ---- GET /events/stream ---- */

/*
 * topic, and where to start: Last-Event-ID (what a reconnecting EventSource
 * sends) over after; neither: from now.  false when answered 400.
 */
static bool
StreamParams(AggrRequest *req, const AggrRequestIn *in)
{
	const char *last_id = in->header(in->arg, "Last-Event-ID");

	if (last_id)
		return TopicAndAfter(req, in, last_id,
							 "Last-Event-ID must be a non-negative integer (an event's id)");
	return TopicAndAfter(req, in, in->query(in->arg, "after"),
						 "after must be a non-negative integer");
}

/* a stream that cannot be opened (http.c asks stream.c) */
void
AggrRequestRefuse(AggrRequest *req, int status, const char *message, bool retry_after)
{
	req->answer.retry_after = retry_after;
	AnswerError(req, status, message);
}

/* ---- GET /stats, GET /healthz ---- */

/*
 * The last /healthz answer.  Load balancers and probes may ask many times a
 * second; those asks must not queue ahead of publishes (health jobs go to the
 * head of the database queue), so an answer younger than health_cache_ms is
 * reused from the HTTP thread, and while one refresh is in flight the
 * previous answer serves the others for two seconds more at most (past that a
 * hanging database must not look healthy: probes queue and wait).  A refresh
 * older than --db-timeout is taken as lost, so another may start.
 */
static struct
{
	pthread_mutex_t lock;
	int64_t		at_us;			/* when body was answered; 0: never */
	int64_t		refresh_since_us;	/* a refresh is in flight since; 0: none */
	int			status;
	bool		retry_after;
	AggrBuf		body;
}			health = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* true when the cached answer served req; else req must refresh it */
static bool
HealthFromCache(AggrRequest *req)
{
	int64_t		now = AggrNowUs();
	int64_t		max_age = (int64_t) aggr_config.health_cache_ms * 1000;
	bool		refreshing;
	bool		served = false;

	if (max_age <= 0)
		return false;
	pthread_mutex_lock(&health.lock);
	refreshing = health.refresh_since_us != 0 &&
		now - health.refresh_since_us < (int64_t) aggr_config.db_timeout_ms * 1000 + 1000000;
	/* stale only briefly: a database that hangs must not look healthy */
	if (health.at_us != 0 &&
		(now - health.at_us < max_age ||
		 (refreshing && now - health.at_us < max_age + HEALTH_STALE_GRACE_US)))
	{
		req->answer.retry_after = health.retry_after;
		Answer(req, health.status, json_type, health.body.data, health.body.len);
		served = true;
	}
	else
		health.refresh_since_us = now;
	pthread_mutex_unlock(&health.lock);
	return served;
}

static void
HealthRemember(const AggrRequest *req)
{
	if (aggr_config.health_cache_ms <= 0)
		return;
	pthread_mutex_lock(&health.lock);
	health.at_us = AggrNowUs();
	health.refresh_since_us = 0;
	health.status = req->answer.status;
	health.retry_after = req->answer.retry_after;
	if (health.body.data == NULL)
		AggrBufInit(&health.body, 256);
	AggrBufReset(&health.body);
	AggrBufAppend(&health.body, req->answer.body.data, req->answer.body.len);
	pthread_mutex_unlock(&health.lock);
}

static void
ServeStats(AggrRequest *req, AggrDbExecFunc exec)
{
	AggrDbError err = {0};
	PGresult   *res = exec(AGGR_STMT_STATS, NULL, NULL, NULL, &err);

	if (res == NULL)
		AnswerDbError(req, &err);
	else
		Answer(req, 200, json_type, PQgetvalue(res, 0, 0),
			   PQgetlength(res, 0, 0));
	PQclear(res);
	AggrDbErrorFree(&err);
}

/*
 * /healthz is open to anyone, so it says what is down, never the internal
 * error text: the broker's error (aggr_health's broker_error) and libpq's
 * are logged, the latter by db.c.
 */
static void
Healthz(AggrRequest *req, AggrDbExecFunc exec)
{
	AggrDbError err = {0};
	PGresult   *res = exec(AGGR_STMT_HEALTH, NULL, NULL, NULL, &err);
	AggrBuf    *body = &req->answer.body;

	if (res != NULL)
	{
		bool		ok = PQgetvalue(res, 0, 1)[0] == 't';

		if (!PQgetisnull(res, 0, 2))
			AggrLog("warning", "health: broker: %s", PQgetvalue(res, 0, 2));
		Answer(req, ok ? 200 : 503, json_type, PQgetvalue(res, 0, 0),
			   PQgetlength(res, 0, 0));
		PQclear(res);
		HealthRemember(req);
		return;
	}

	if (AggrDbIsConnectionError(&err))
	{
		AggrBufAppendStr(body, "{\"status\":\"down\",\"database\":\"down\"}");
		req->answer.retry_after = true;
	}
	else if (strcmp(err.sqlstate, "42883") == 0 ||
			 strcmp(err.sqlstate, "3F000") == 0)
		AggrBufAppendStr(body, "{\"status\":\"down\",\"database\":\"ok\",\"extension\":\"missing\"}");
	else
	{
		AggrLog("warning", "health: %s (%s)", err.message, err.sqlstate);
		AggrBufAppendStr(body, "{\"status\":\"down\",\"database\":\"ok\",\"sqlstate\":");
		AggrBufJsonString(body, err.sqlstate);
		AggrBufAppendStr(body, "}");
	}
	Answer(req, 503, json_type, "", 0);
	AggrDbErrorFree(&err);
	HealthRemember(req);
}

/* ---- GET /metrics ---- */

/* a Prometheus metric name from a stats key */
static void
AppendMetricName(AggrBuf *buf, const char *key)
{
	AggrBufAppendStr(buf, "aggr_");
	for (const char *p = key; *p; p++)
	{
		char		c = *p;

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9')))
			c = '_';
		AggrBufAppend(buf, &c, 1);
	}
}

static void
AppendLabelValue(AggrBuf *buf, const char *s)
{
	for (const char *p = s; *p; p++)
	{
		if (*p == '\\' || *p == '"')
			AggrBufAppend(buf, "\\", 1);
		if (*p == '\n')
			AggrBufAppendStr(buf, "\\n");
		else
			AggrBufAppend(buf, p, 1);
	}
}

static bool
IsCounterKey(const char *key)
{
	static const char *const counters[] = {
		"received", "unique_processed", "duplicate_dropped", "expired", "rejected",
		"bulk_fallback_events"
	};

	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
		if (strcmp(key, counters[i]) == 0)
			return true;
	return false;
}

static void
Metrics(AggrRequest *req, AggrDbExecFunc exec)
{
	AggrDbError err = {0};
	PGresult   *res = exec(AGGR_STMT_METRICS, NULL, NULL, NULL, &err);
	AggrBuf    *body = &req->answer.body;
	char		last_topic_kind = 0;

	AggrMetricsRender(body);
	AggrBufPrintf(body,
				  "# HELP aggr_database_up Whether aggr_stats() answered.\n"
				  "# TYPE aggr_database_up gauge\n"
				  "aggr_database_up %d\n", res != NULL);
	for (int i = 0; res && i < PQntuples(res); i++)
	{
		const char *kind = PQgetvalue(res, i, 0);
		const char *key = PQgetvalue(res, i, 1);
		const char *value = PQgetvalue(res, i, 2);

		if (PQgetisnull(res, i, 1) || PQgetisnull(res, i, 2))
			continue;
		if (kind[0] == 'n')
		{
			bool		counter = IsCounterKey(key);

			AggrBufAppendStr(body, "# TYPE ");
			AppendMetricName(body, key);
			AggrBufPrintf(body, "%s %s\n", counter ? "_total" : "",
						  counter ? "counter" : "gauge");
			AppendMetricName(body, key);
			AggrBufPrintf(body, "%s %s\n", counter ? "_total" : "", value);
		}
		else if (aggr_config.read_token == NULL)
		{
			/* topic names are what --read-token keeps private */
			const char *metric = kind[0] == 't' ? "aggr_topic_events" : "aggr_topic_expired_total";

			if (kind[0] != last_topic_kind)
				AggrBufPrintf(body, "# TYPE %s %s\n", metric,
							  kind[0] == 't' ? "gauge" : "counter");
			last_topic_kind = kind[0];
			AggrBufPrintf(body, "%s{topic=\"", metric);
			AppendLabelValue(body, key);
			AggrBufPrintf(body, "\"} %s\n", value);
		}
	}
	Answer(req, 200, "text/plain; version=0.0.4; charset=utf-8", "", 0);
	PQclear(res);
	AggrDbErrorFree(&err);
}

/* ---- the steps of a request ---- */

void
AggrRequestInit(AggrRequest *req)
{
	memset(req, 0, sizeof(*req));
	req->route = AGGR_ROUTE_OTHER;
	req->accepted = -1;
	AggrBufInit(&req->answer.body, 256);
}

/* the headers are in, no body byte read yet */
void
AggrRequestStart(AggrRequest *req, const AggrRequestIn *in)
{
	const RouteDef *def = NULL;
	bool		is_post = strcmp(in->method, "POST") == 0;
	bool		is_get = strcmp(in->method, "GET") == 0 ||
		strcmp(in->method, "HEAD") == 0;

	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (strcmp(in->path, routes[i].path) == 0)
			def = &routes[i];
	if (def == NULL)
	{
		AnswerError(req, 404, "not found");
		return;
	}
	req->route = def->route;
	if (def->post ? !is_post : !is_get)
	{
		req->answer.allow = def->post ? "POST" : "GET, HEAD";
		AnswerError(req, 405, "method not allowed");
	}
	else if (def->post)
		PublishHeaders(req, in);
	else if (def->route == AGGR_ROUTE_OPENAPI)
		Answer(req, 200, json_type, aggr_openapi_json, aggr_openapi_json_len);
	else if (def->reads_events && aggr_config.read_token &&
			 !TokenMatches(aggr_config.read_token, in->header(in->arg, "Authorization")))
	{
		req->answer.www_authenticate = true;
		AnswerError(req, 401, "missing or wrong bearer token");
	}
}

/* a chunk of the body; kept only by a POST /publish its headers admitted */
void
AggrRequestAppend(AggrRequest *req, const char *data, size_t size)
{
	if (req->body != NULL || req->too_large || req->over_budget || req->too_slow ||
		req->bad_encoding)
		PublishAppend(req, data, size);
}

/*
 * The body is complete: answer what the body or the parameters refuse;
 * true when the request needs its SQL call (AggrRequestRun).
 */
bool
AggrRequestFinish(AggrRequest *req, const AggrRequestIn *in)
{
	if (req->answered)
		return false;
	if (req->too_large)
		AnswerError(req, 413, "request body too large");
	else if (req->over_budget)
	{
		req->answer.retry_after = true;
		AnswerError(req, 503, "too many request bodies in flight");
	}
	else if (req->bad_encoding || (req->inflater && !req->inflated))
		AnswerError(req, 400, "body is not valid gzip or deflate data");
	else if (req->route == AGGR_ROUTE_EVENTS)
		EventsParams(req, in);
	else if (req->route == AGGR_ROUTE_STREAM)
		StreamParams(req, in);
	else if (req->route == AGGR_ROUTE_HEALTHZ)
		(void) HealthFromCache(req);
	return !req->answered;
}

/* the SQL call and the answer; a database worker runs it in the server */
void
AggrRequestRun(AggrRequest *req, AggrDbExecFunc exec)
{
	switch (req->route)
	{
		case AGGR_ROUTE_PUBLISH:
			Publish(req, exec);
			break;
		case AGGR_ROUTE_EVENTS:
			Events(req, exec);
			break;
		case AGGR_ROUTE_STATS:
			ServeStats(req, exec);
			break;
		case AGGR_ROUTE_HEALTHZ:
			Healthz(req, exec);
			break;
		case AGGR_ROUTE_METRICS:
			Metrics(req, exec);
			break;
		default:
			AnswerError(req, 404, "not found");
			break;
	}
}

void
AggrRequestFree(AggrRequest *req)
{
	atomic_fetch_sub(&buffered, req->reserved);
	req->reserved = 0;
	if (req->inflater)
	{
		inflateEnd(req->inflater);
		free(req->inflater);
		req->inflater = NULL;
	}
	free(req->body);
	free(req->topic);
	free(req->answer.link);
	AggrBufFree(&req->answer.body);
	req->body = req->topic = req->answer.link = NULL;
}
