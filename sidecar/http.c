/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The HTTP routes of aggr-sidecar on libmicrohttpd, and the lifecycle of
 *	  one request: headers checked first (route, method, token, framing,
 *	  Content-Length against --max-body), then the body collected up to
 *	  --max-body, then one SQL call on this thread's connection, then one
 *	  JSON access-log line when MHD reports the request complete.
 *
 *	  Threading: one MHD polling thread (epoll) does all the socket work and
 *	  never blocks on a client or on the database.  When a request needs SQL,
 *	  its connection is suspended and the request goes to the queue of the
 *	  --threads database workers (db.c), each with its own libpq
 *	  connection; the worker fills in the answer and resumes the connection,
 *	  and MHD calls the handler again to send it.  A slow or idle client
 *	  therefore holds a connection slot, never a thread; any free database
 *	  connection serves any request; and /healthz jumps the queue, so it
 *	  waits at most for one database round trip (bounded by --db-timeout).
 *
 *-------------------------------------------------------------------------
 */
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "sidecar.h"

#define EVENTS_DEFAULT_LIMIT 100
#define EVENTS_MAX_LIMIT 10000
#define LOG_PATH_MAX 512

/* what a request is answered with, filled in before MHD sees it */
typedef struct ReplyData
{
	int			status;
	const char *content_type;
	AggrBuf		body;
	const char *allow;			/* Allow header, or NULL */
	bool		retry_after;
	bool		www_authenticate;
	char	   *link;			/* Link header (malloc'd), or NULL */
} ReplyData;

typedef struct Request
{
	AggrJob		job;			/* first member: a database worker runs it */
	struct MHD_Connection *conn;
	int64_t		start_us;
	AggrRoute	route;
	char		method[16];
	char	   *path;
	bool		queued;			/* handed to a database worker */
	bool		answered;		/* answer filled in */
	bool		responded;		/* answer queued with MHD */
	bool		too_large;
	bool		over_budget;	/* --max-buffered reached while reading */
	size_t		reserved;		/* bytes counted in "buffered" */
	char	   *body;
	size_t		body_len;
	size_t		body_cap;
	char	   *topic;			/* GET /events parameters */
	int64_t		limit;
	int64_t		after;			/* -1: none */
	ReplyData	answer;
	long		accepted;		/* -1 when not a successful publish */
} Request;

typedef struct RouteDef
{
	const char *path;
	AggrRoute	route;
	bool		post;			/* POST, else GET and HEAD */
} RouteDef;

static const RouteDef routes[] = {
	{"/publish", AGGR_ROUTE_PUBLISH, true},
	{"/events", AGGR_ROUTE_EVENTS, false},
	{"/stats", AGGR_ROUTE_STATS, false},
	{"/healthz", AGGR_ROUTE_HEALTHZ, false},
	{"/metrics", AGGR_ROUTE_METRICS, false},
};

static atomic_long inflight;
static atomic_bool shutting_down;
static atomic_size_t buffered;	/* body bytes reserved by all requests */

static const char json_type[] = "application/json";

long
AggrHttpInflight(void)
{
	return atomic_load(&inflight);
}

void
AggrHttpBeginShutdown(void)
{
	atomic_store(&shutting_down, true);
}

/* the answer: status, type and body (copied) */
static void
Answer(Request *req, int status, const char *content_type, const char *body,
	   size_t len)
{
	req->answer.status = status;
	req->answer.content_type = content_type;
	AggrBufAppend(&req->answer.body, body, len);
	req->answered = true;
}

/* answer {"error": message} */
static void
AnswerError(Request *req, int status, const char *message)
{
	AggrBuf    *body = &req->answer.body;

	AggrBufAppendStr(body, "{\"error\":");
	AggrBufJsonString(body, message);
	AggrBufAppendStr(body, "}");
	Answer(req, status, json_type, "", 0);
}

/* the status, Retry-After and body that a failed SQL call earns */
static void
AnswerDbError(Request *req, const AggrDbError *err)
{
	const AggrErrorMap *map = AggrSqlstateLookup(err->sqlstate);

	AggrDbErrorJson(&req->answer.body, err);
	req->answer.retry_after = map->retry_after;
	Answer(req, map->http_status, json_type, "", 0);
}

/* hand the answer to MHD; called in the MHD thread only */
static enum MHD_Result
Reply(struct MHD_Connection *conn, Request *req)
{
	ReplyData  *a = &req->answer;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(a->body.len, a->body.data,
										   MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, a->content_type);
	if (a->allow)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, a->allow);
	if (a->retry_after)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
	if (a->www_authenticate)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	if (a->link)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_LINK, a->link);
	if (atomic_load(&shutting_down))
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	ret = MHD_queue_response(conn, a->status, resp);
	MHD_destroy_response(resp);
	if (ret == MHD_YES)
		req->responded = true;
	return ret;
}

/* ---- POST /publish ---- */

static enum MHD_Result
CountHeader(void *cls, enum MHD_ValueKind kind, const char *key,
			const char *value)
{
	(void) kind;
	(void) value;
	if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
		(*(int *) cls)++;
	return MHD_YES;
}

static bool
TokenMatches(const char *auth)
{
	const char *token = aggr_config.token;
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
ReserveBody(Request *req, size_t bytes)
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
 * Decisions taken from the headers alone, before any body byte is read;
 * answers the request when one of them refuses it.
 */
static void
PublishHeaders(struct MHD_Connection *conn, Request *req)
{
	const char *cl;
	int			ncl = 0;
	int64_t		len = -1;

	if (aggr_config.token &&
		!TokenMatches(MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
												  MHD_HTTP_HEADER_AUTHORIZATION)))
	{
		req->answer.www_authenticate = true;
		AnswerError(req, 401, "missing or wrong bearer token");
		return;
	}

	MHD_get_connection_values(conn, MHD_HEADER_KIND, CountHeader, &ncl);
	cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
									 MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (ncl > 1)
		AnswerError(req, 400, "more than one Content-Length header");
	else if (cl && MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
											   MHD_HTTP_HEADER_TRANSFER_ENCODING))
		AnswerError(req, 400, "both Content-Length and Transfer-Encoding");
	else if (cl && (!AggrParseInt64(cl, &len) || len < 0))
		AnswerError(req, 400, "invalid Content-Length");
	else if (len > (int64_t) aggr_config.max_body)
		AnswerError(req, 413, "request body too large");
	else if (!ReserveBody(req, (len > 0 ? (size_t) len : 4096) + 1))
	{
		req->answer.retry_after = true;
		AnswerError(req, 503, "too many request bodies in flight");
	}
	else
	{
		req->body_cap = req->reserved;
		req->body = AggrMalloc(req->body_cap);
	}
}

static void
PublishAppend(Request *req, const char *data, size_t size)
{
	size_t		need;

	if (req->too_large || req->over_budget)
		return;					/* discarding the rest */
	need = req->body_len + size + 1;
	if (size > aggr_config.max_body - req->body_len)
		req->too_large = true;
	else if (need > req->body_cap)
	{
		size_t		cap = req->body_cap;

		while (cap < need)
			cap *= 2;
		if (ReserveBody(req, cap - req->body_cap))
		{
			req->body = AggrRealloc(req->body, cap);
			req->body_cap = cap;
		}
		else
			req->over_budget = true;
	}
	if (req->too_large || req->over_budget)
	{
		free(req->body);
		req->body = NULL;
		req->body_len = req->body_cap = 0;
		atomic_fetch_sub(&buffered, req->reserved);
		req->reserved = 0;
		return;
	}
	memcpy(req->body + req->body_len, data, size);
	req->body_len += size;
}

static void
Publish(Request *req)
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

	res = AggrDbExec(AGGR_STMT_PUBLISH, values, lengths, formats, &err);
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

/* the query parameters, checked in the MHD thread; false when answered 400 */
static bool
EventsParams(struct MHD_Connection *conn, Request *req)
{
	const char *topic = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "topic");
	const char *limit = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
	const char *after = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "after");

	req->limit = EVENTS_DEFAULT_LIMIT;
	req->after = -1;
	if (limit && (!AggrParseInt64(limit, &req->limit) || req->limit < 1 ||
				  req->limit > EVENTS_MAX_LIMIT))
	{
		AnswerError(req, 400, "limit must be an integer from 1 to 10000");
		return false;
	}
	if (after && (!AggrParseInt64(after, &req->after) || req->after < 0))
	{
		AnswerError(req, 400, "after must be a non-negative integer");
		return false;
	}
	/* ?topic= means every topic */
	if (topic && topic[0] != '\0')
		req->topic = AggrStrdup(topic);
	return true;
}

static void
Events(Request *req)
{
	char		limit_txt[24];
	char		after_txt[24];
	const char *values[3];
	AggrDbError err = {0};
	PGresult   *res;

	snprintf(limit_txt, sizeof(limit_txt), "%lld", (long long) req->limit);
	snprintf(after_txt, sizeof(after_txt), "%lld", (long long) req->after);
	values[0] = req->topic;
	values[1] = limit_txt;
	values[2] = req->after >= 0 ? after_txt : NULL;

	res = AggrDbExec(AGGR_STMT_EVENTS, values, NULL, NULL, &err);
	if (res == NULL)
	{
		AnswerDbError(req, &err);
		AggrDbErrorFree(&err);
		return;
	}

	/* a full page announces the next one */
	if (!PQgetisnull(res, 0, 1) && atoll(PQgetvalue(res, 0, 2)) == req->limit)
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

/* ---- GET /stats, GET /healthz ---- */

static void
Stats(Request *req)
{
	AggrDbError err = {0};
	PGresult   *res = AggrDbExec(AGGR_STMT_STATS, NULL, NULL, NULL, &err);

	if (res == NULL)
		AnswerDbError(req, &err);
	else
		Answer(req, 200, json_type, PQgetvalue(res, 0, 0),
			   PQgetlength(res, 0, 0));
	PQclear(res);
	AggrDbErrorFree(&err);
}

static void
Healthz(Request *req)
{
	AggrDbError err = {0};
	PGresult   *res = AggrDbExec(AGGR_STMT_HEALTH, NULL, NULL, NULL, &err);
	AggrBuf    *body = &req->answer.body;

	if (res != NULL)
	{
		bool		ok = PQgetvalue(res, 0, 1)[0] == 't';

		Answer(req, ok ? 200 : 503, json_type, PQgetvalue(res, 0, 0),
			   PQgetlength(res, 0, 0));
		PQclear(res);
		return;
	}

	if (AggrDbIsConnectionError(&err))
	{
		AggrBufAppendStr(body, "{\"status\":\"down\",\"database\":\"down\",\"error\":");
		AggrBufJsonString(body, err.message);
		AggrBufAppendStr(body, "}");
		req->answer.retry_after = true;
	}
	else if (strcmp(err.sqlstate, "42883") == 0 ||
			 strcmp(err.sqlstate, "3F000") == 0)
		AggrBufAppendStr(body, "{\"status\":\"down\",\"database\":\"ok\",\"extension\":\"missing\"}");
	else
	{
		AggrBufAppendStr(body, "{\"status\":\"down\",\"database\":\"ok\",\"error\":");
		AggrBufJsonString(body, err.message);
		AggrBufAppendStr(body, ",\"sqlstate\":");
		AggrBufJsonString(body, err.sqlstate);
		AggrBufAppendStr(body, "}");
	}
	Answer(req, 503, json_type, "", 0);
	AggrDbErrorFree(&err);
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
		"received", "unique_processed", "duplicate_dropped", "rejected"
	};

	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
		if (strcmp(key, counters[i]) == 0)
			return true;
	return false;
}

static void
Metrics(Request *req)
{
	AggrDbError err = {0};
	PGresult   *res = AggrDbExec(AGGR_STMT_METRICS, NULL, NULL, NULL, &err);
	AggrBuf    *body = &req->answer.body;
	bool		topic_type_done = false;

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
		else
		{
			if (!topic_type_done)
				AggrBufAppendStr(body, "# TYPE aggr_topic_events gauge\n");
			topic_type_done = true;
			AggrBufAppendStr(body, "aggr_topic_events{topic=\"");
			AppendLabelValue(body, key);
			AggrBufPrintf(body, "\"} %s\n", value);
		}
	}
	Answer(req, 200, "text/plain; version=0.0.4; charset=utf-8", "", 0);
	PQclear(res);
	AggrDbErrorFree(&err);
}

/* ---- request lifecycle ---- */

/* run by a database worker: answer, then give the connection back to MHD */
static void
RunRequest(AggrJob *job)
{
	Request    *req = (Request *) job;
	struct MHD_Connection *conn = req->conn;

	switch (req->route)
	{
		case AGGR_ROUTE_PUBLISH:
			Publish(req);
			break;
		case AGGR_ROUTE_EVENTS:
			Events(req);
			break;
		case AGGR_ROUTE_STATS:
			Stats(req);
			break;
		case AGGR_ROUTE_HEALTHZ:
			Healthz(req);
			break;
		case AGGR_ROUTE_METRICS:
			Metrics(req);
			break;
		default:
			AnswerError(req, 404, "not found");
			break;
	}
	/* from here on the MHD thread owns req again */
	MHD_resume_connection(conn);
}

static Request *
NewRequest(const char *url, const char *method)
{
	Request    *req = AggrMalloc(sizeof(Request));
	size_t		len = strlen(url);

	memset(req, 0, sizeof(*req));
	req->job.run = RunRequest;
	req->start_us = AggrNowUs();
	req->route = AGGR_ROUTE_OTHER;
	req->accepted = -1;
	AggrBufInit(&req->answer.body, 256);
	snprintf(req->method, sizeof(req->method), "%s", method);
	if (len > LOG_PATH_MAX)
		len = LOG_PATH_MAX;
	req->path = AggrMalloc(len + 1);
	memcpy(req->path, url, len);
	req->path[len] = '\0';
	atomic_fetch_add(&inflight, 1);
	return req;
}

/* first call: the headers are in, no body byte read yet */
static void
StartRequest(struct MHD_Connection *conn, Request *req, const char *url,
			 const char *method)
{
	const RouteDef *def = NULL;
	bool		is_post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
	bool		is_get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
		strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;

	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (strcmp(url, routes[i].path) == 0)
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
		PublishHeaders(conn, req);
}

static enum MHD_Result
Handler(void *cls, struct MHD_Connection *conn, const char *url,
		const char *method, const char *version, const char *upload_data,
		size_t *upload_data_size, void **con_cls)
{
	Request    *req = *con_cls;

	(void) cls;
	(void) version;
	if (req == NULL)
	{
		req = NewRequest(url, method);
		*con_cls = req;
		StartRequest(conn, req, url, method);
		return req->answered ? Reply(conn, req) : MHD_YES;
	}
	if (*upload_data_size > 0)
	{
		if (req->body != NULL || req->too_large || req->over_budget)
			PublishAppend(req, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (req->responded)
		return MHD_YES;
	if (req->answered)
		return Reply(conn, req);	/* also after a worker resumed us */
	if (req->queued)
		return MHD_YES;
	if (req->too_large)
	{
		AnswerError(req, 413, "request body too large");
		return Reply(conn, req);
	}
	if (req->over_budget)
	{
		req->answer.retry_after = true;
		AnswerError(req, 503, "too many request bodies in flight");
		return Reply(conn, req);
	}
	if (req->route == AGGR_ROUTE_EVENTS && !EventsParams(conn, req))
		return Reply(conn, req);

	/* the body is in: hand the request to a database worker */
	req->conn = conn;
	req->queued = true;
	MHD_suspend_connection(conn);
	AggrDbSubmit(&req->job, req->route == AGGR_ROUTE_HEALTHZ);
	return MHD_YES;
}

/* one JSON access-log line, the metrics, and the end of the request */
static void
Completed(void *cls, struct MHD_Connection *conn, void **con_cls,
		  enum MHD_RequestTerminationCode toe)
{
	Request    *req = *con_cls;
	int			status;
	size_t		bytes;
	int64_t		duration_us;
	AggrBuf		line;
	char		now[40];

	(void) cls;
	(void) conn;
	if (req == NULL)
		return;
	*con_cls = NULL;
	status = req->responded ? req->answer.status : 0;
	bytes = req->responded ? req->answer.body.len : 0;
	duration_us = AggrNowUs() - req->start_us;
	AggrMetricsRecord(req->route, status, duration_us, req->accepted);

	AggrFormatUtcNow(now, sizeof(now));
	AggrBufInit(&line, 256);
	AggrBufPrintf(&line, "{\"time\":\"%s\",\"method\":", now);
	AggrBufJsonString(&line, req->method);
	AggrBufAppendStr(&line, ",\"path\":");
	AggrBufJsonString(&line, req->path);
	AggrBufPrintf(&line, ",\"status\":%d,\"bytes\":%zu,\"duration_ms\":%.3f",
				  status, bytes, duration_us / 1000.0);
	if (req->accepted >= 0)
		AggrBufPrintf(&line, ",\"accepted\":%ld", req->accepted);
	else
		AggrBufAppendStr(&line, ",\"accepted\":null");
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
		AggrBufPrintf(&line, ",\"terminated\":%d", (int) toe);
	AggrBufAppendStr(&line, "}\n");
	if (write(STDERR_FILENO, line.data, line.len) < 0)
	{
		/* nowhere left to report it */
	}
	AggrBufFree(&line);

	atomic_fetch_sub(&buffered, req->reserved);
	free(req->body);
	free(req->path);
	free(req->topic);
	free(req->answer.link);
	AggrBufFree(&req->answer.body);
	free(req);
	atomic_fetch_sub(&inflight, 1);
}

static void
MhdLog(void *cls, const char *fmt, va_list ap)
{
	(void) cls;
	AggrLogV("mhd", fmt, ap);
}

/* one polling thread: it only moves bytes, the database work is elsewhere */
struct MHD_Daemon *
AggrHttpStart(const void *sockaddr)
{
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
		MHD_USE_ITC | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;

	if (((const struct sockaddr *) sockaddr)->sa_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	return MHD_start_daemon(flags, 0, NULL, NULL, Handler, NULL,
							MHD_OPTION_EXTERNAL_LOGGER, MhdLog, NULL,
							MHD_OPTION_SOCK_ADDR, sockaddr,
							MHD_OPTION_CONNECTION_LIMIT, aggr_config.max_conns,
							MHD_OPTION_PER_IP_CONNECTION_LIMIT,
							aggr_config.max_conns_per_ip,
							MHD_OPTION_CONNECTION_TIMEOUT,
							aggr_config.client_timeout,
							MHD_OPTION_CONNECTION_MEMORY_LIMIT,
							(size_t) 32 * 1024,
							MHD_OPTION_NOTIFY_COMPLETED, Completed, NULL,
							MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
							MHD_OPTION_STRICT_FOR_CLIENT, 1,
							MHD_OPTION_END);
}
