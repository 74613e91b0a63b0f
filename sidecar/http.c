/*-------------------------------------------------------------------------
 *
 * http.c
 *	  libmicrohttpd's side of aggr-sidecar: the daemon, and the lifecycle
 *	  of one request, whose decisions request.c takes: headers checked
 *	  first (route, method, token, framing, Content-Length against
 *	  --max-body), then the body collected up to --max-body, then one SQL
 *	  call on a database worker's connection, then the answer queued with
 *	  MHD, and one JSON access-log line when MHD reports the request
 *	  complete.
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
#include <ctype.h>
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

#define LOG_PATH_MAX 512

/* a request as MHD sees it: the handler's state plus its lifecycle */
typedef struct Request
{
	AggrJob		job;			/* first member: a database worker runs it */
	struct MHD_Connection *conn;
	int64_t		start_us;
	char		method[16];
	char	   *path;
	bool		queued;			/* handed to a database worker */
	bool		responded;		/* answer queued with MHD */
	size_t		sent_bytes;		/* its body, for the access log */
	AggrRequest r;
} Request;

static atomic_long inflight;
static atomic_bool shutting_down;

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

/* hand the answer to MHD; called in the MHD thread only */
static enum MHD_Result
Reply(struct MHD_Connection *conn, Request *req)
{
	AggrReply  *a = &req->r.answer;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	/* the body is handed to MHD, which frees it: no copy of a large page */
	resp = MHD_create_response_from_buffer(a->body.len, a->body.data,
										   a->body.data ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (resp == NULL)
		return MHD_NO;
	req->sent_bytes = a->body.len;
	a->body.data = NULL;
	a->body.len = a->body.cap = 0;
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

/* ---- AggrRequestIn's lookups on an MHD connection ---- */

static const char *
LookupHeader(void *arg, const char *name)
{
	return MHD_lookup_connection_value(arg, MHD_HEADER_KIND, name);
}

typedef struct HeaderCount
{
	const char *name;
	int			n;
} HeaderCount;

static enum MHD_Result
CountHeader(void *cls, enum MHD_ValueKind kind, const char *key,
			const char *value)
{
	HeaderCount *count = cls;

	(void) kind;
	(void) value;
	if (strcasecmp(key, count->name) == 0)
		count->n++;
	return MHD_YES;
}

static int
CountHeaders(void *arg, const char *name)
{
	HeaderCount count = {name, 0};

	MHD_get_connection_values(arg, MHD_HEADER_KIND, CountHeader, &count);
	return count.n;
}

static const char *
LookupQuery(void *arg, const char *name)
{
	return MHD_lookup_connection_value(arg, MHD_GET_ARGUMENT_KIND, name);
}

static AggrRequestIn
RequestIn(struct MHD_Connection *conn, const char *url, const char *method)
{
	AggrRequestIn in = {
		.method = method,
		.path = url,
		.arg = conn,
		.header = LookupHeader,
		.header_count = CountHeaders,
		.query = LookupQuery,
	};

	return in;
}

/* ---- request lifecycle ---- */

/* run by a database worker: answer, then give the connection back to MHD */
static void
RunRequest(AggrJob *job)
{
	Request    *req = (Request *) job;
	struct MHD_Connection *conn = req->conn;

	AggrRequestRun(&req->r, AggrDbExec);
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
	AggrRequestInit(&req->r);
	snprintf(req->method, sizeof(req->method), "%s", method);
	if (len > LOG_PATH_MAX)
		len = LOG_PATH_MAX;
	req->path = AggrMalloc(len + 1);
	memcpy(req->path, url, len);
	req->path[len] = '\0';
	atomic_fetch_add(&inflight, 1);
	return req;
}

/* GET /events/stream: stream.c feeds the answer from here on */
static enum MHD_Result
OpenStream(struct MHD_Connection *conn, Request *req)
{
	const char *refusal = NULL;
	struct MHD_Response *resp = AggrStreamOpen(conn, req->r.topic, req->r.after, &refusal);
	enum MHD_Result ret;

	if (resp == NULL)
	{
		AggrRequestRefuse(&req->r, 503, refusal, true);
		return Reply(conn, req);
	}
	ret = MHD_queue_response(conn, 200, resp);
	MHD_destroy_response(resp);
	if (ret == MHD_YES)
	{
		req->responded = true;
		req->r.answer.status = 200;
	}
	return ret;
}

static enum MHD_Result
Handler(void *cls, struct MHD_Connection *conn, const char *url,
		const char *method, const char *version, const char *upload_data,
		size_t *upload_data_size, void **con_cls)
{
	Request    *req = *con_cls;
	AggrRequestIn in = RequestIn(conn, url, method);

	(void) cls;
	(void) version;
	if (req == NULL)
	{
		/* first call: the headers are in, no body byte read yet */
		req = NewRequest(url, method);
		*con_cls = req;
		AggrRequestStart(&req->r, &in);
		return req->r.answered ? Reply(conn, req) : MHD_YES;
	}
	if (*upload_data_size > 0)
	{
		AggrRequestAppend(&req->r, upload_data, *upload_data_size);
		*upload_data_size = 0;
		/* a body slower than --min-body-rate: close, which frees its budget */
		return req->r.too_slow ? MHD_NO : MHD_YES;
	}
	if (req->responded)
		return MHD_YES;
	if (req->r.answered)
		return Reply(conn, req);	/* also after a worker resumed us */
	if (req->queued)
		return MHD_YES;
	if (!AggrRequestFinish(&req->r, &in))
		return Reply(conn, req);
	if (req->r.route == AGGR_ROUTE_STREAM)
		return OpenStream(conn, req);

	/* the body is in: hand the request to a database worker */
	req->conn = conn;
	req->queued = true;
	MHD_suspend_connection(conn);
	AggrDbSubmit(&req->job, req->r.route == AGGR_ROUTE_HEALTHZ);
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
	status = req->responded ? req->r.answer.status : 0;
	bytes = req->responded ? req->sent_bytes : 0;
	duration_us = AggrNowUs() - req->start_us;
	AggrMetricsRecord(req->r.route, status, duration_us, req->r.accepted);

	AggrFormatUtcNow(now, sizeof(now));
	AggrBufInit(&line, 256);
	AggrBufPrintf(&line, "{\"time\":\"%s\",\"method\":", now);
	AggrBufJsonString(&line, req->method);
	AggrBufAppendStr(&line, ",\"path\":");
	AggrBufJsonString(&line, req->path);
	AggrBufPrintf(&line, ",\"status\":%d,\"bytes\":%zu,\"duration_ms\":%.3f",
				  status, bytes, duration_us / 1000.0);
	if (req->r.accepted >= 0)
		AggrBufPrintf(&line, ",\"accepted\":%ld", req->r.accepted);
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

	AggrRequestFree(&req->r);
	free(req->path);
	free(req);
	atomic_fetch_sub(&inflight, 1);
}

static void
MhdLog(void *cls, const char *fmt, va_list ap)
{
	(void) cls;
	AggrLogV("mhd", fmt, ap);
}

static int
HexValue(char c)
{
	return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/*
 * Percent-decoding of the path and the query, as MHD's own but for %00,
 * which stays undecoded: a decoded NUL would silently cut the C string
 * short (/stats%00x would answer as /stats, limit=5%00 as limit=5).  Left
 * as it is, such a path is unknown (404), such a number invalid (400), and
 * such a topic one that no stored event has (an event's strings hold no NUL).
 */
static size_t
UnescapeKeepingNul(void *cls, struct MHD_Connection *connection, char *s)
{
	char	   *r = s;
	char	   *w = s;

	(void) cls;
	(void) connection;
	while (*r)
	{
		if (r[0] == '%' && isxdigit((unsigned char) r[1]) &&
			isxdigit((unsigned char) r[2]) && !(r[1] == '0' && r[2] == '0'))
		{
			*w++ = (char) (HexValue(r[1]) * 16 + HexValue(r[2]));
			r += 3;
		}
		else
			*w++ = *r++;
	}
	*w = '\0';
	return (size_t) (w - s);
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
							MHD_OPTION_UNESCAPE_CALLBACK, UnescapeKeepingNul, NULL,
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
