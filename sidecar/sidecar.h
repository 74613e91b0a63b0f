/*-------------------------------------------------------------------------
 *
 * sidecar.h
 *	  What crosses the files of aggr-sidecar, the HTTP front door of aggr:
 *	  the configuration (main.c), the database workers with one libpq
 *	  connection each and the one SQLSTATE -> HTTP status table (db.c), the
 *	  routes and their answers (request.c), libmicrohttpd's side of a
 *	  request (http.c), the Prometheus counters (metrics.c) and small text
 *	  helpers (util.c).
 *
 *	  The sidecar holds no business logic and no JSON parser: request
 *	  bodies travel to PostgreSQL as parameters, and the JSON it answers
 *	  with is rendered by SQL.  It only escapes strings it writes itself.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGGR_SIDECAR_H
#define AGGR_SIDECAR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "../common/aggr_common.h"

#define AGGR_SIDECAR_VERSION "0.1"

/* configuration, filled by main.c from flags and the environment */
typedef struct AggrConfig
{
	const char *listen;			/* "host:port", "[v6]:port" or ":port" */
	const char *conninfo;		/* libpq URL or key=value string, may be "" */
	const char *token;			/* bearer token for /publish, or NULL */
	const char *read_token;		/* bearer token for /events, /stats, or NULL */
	int			threads;		/* database workers = connections */
	size_t		max_body;		/* bytes */
	size_t		max_buffered;	/* request bodies held at once, bytes */
	unsigned	max_conns;
	unsigned	max_conns_per_ip;
	unsigned	client_timeout; /* seconds a client may stay idle */
	int			db_timeout_ms;	/* bound on one database round trip */
	int			health_cache_ms;	/* /healthz answers this old are reused */
	size_t		max_page_bytes; /* a GET /events page stops about here */
	size_t		min_body_rate;	/* bytes/s a body averages after --timeout s */
	unsigned	max_streams;	/* GET /events/stream subscribers at once */
	size_t		stream_buffer;	/* bytes of recent events kept for them */
	int			stream_heartbeat_s; /* a comment line this often */
} AggrConfig;

extern AggrConfig aggr_config;

/* util.c: what only the sidecar needs beside common/aggr_common.h */
extern void AggrBufJsonString(AggrBuf *buf, const char *s);
extern void AggrBufUrlEncode(AggrBuf *buf, const char *s);
extern bool AggrParseInt64(const char *s, int64_t *out);
extern int64_t AggrNowUs(void);
extern void AggrFormatUtcNow(char *out, size_t outlen);
extern void AggrLog(const char *level, const char *fmt,...)
			__attribute__((format(printf, 2, 3)));
extern void AggrLogV(const char *level, const char *fmt, va_list ap);
extern bool aggr_log_muted;

/*
 * An event as GET /events and the event stream answer it: the row given to
 * aggr_event_json() (aggr 0.7), or, where the extension has no such function
 * (AggrLacksEventJson of the failed preparation), the same JSON by
 * json_build_object from aggr_events() AS e, which costs the server half as
 * much again.
 */
#define AGGR_EVENT_JSON_SQL(row) "aggr_event_json(" row ")"
#define AGGR_EVENT_JSON_PORTABLE_SQL \
	"json_build_object('topic', e.topic, 'event_id', e.event_id, " \
	"'timestamp', e.\"timestamp\", 'source', e.source, " \
	"'payload', e.payload, 'ingested_at', e.ingested_at)::text"

/* db.c: the statements the sidecar runs, one prepared set per thread */
typedef enum AggrStmt
{
	AGGR_STMT_PUBLISH,
	AGGR_STMT_EVENTS,
	AGGR_STMT_STATS,
	AGGR_STMT_HEALTH,
	AGGR_STMT_METRICS,
	AGGR_STMT_PUBLISH_NDJSON,	/* not a route: POST /publish of NDJSON */
	AGGR_NUM_STMTS
} AggrStmt;

/* why a statement failed; strings are malloc'd */
typedef struct AggrDbError
{
	char		sqlstate[6];
	char	   *message;
	char	   *detail;
	char	   *hint;
	bool		outcome_unknown;	/* a publish whose answer was lost */
} AggrDbError;

/* one row of the SQLSTATE -> HTTP table */
typedef struct AggrErrorMap
{
	const char *sqlstate;		/* 5 characters, or a 2-character class */
	int			http_status;
	bool		retry_after;	/* answer with Retry-After */
	bool		retry_stmt;		/* run the statement again, up to 3 times */
} AggrErrorMap;

/* work for a database worker; embed it first in a larger struct */
typedef struct AggrJob
{
	struct AggrJob *next;
	void		(*run) (struct AggrJob *job);
} AggrJob;

extern PGconn *AggrDbOpen(const char *appname, const char *label, bool keepalives,
						  bool *ok);
extern void AggrDbStart(int nworkers);
extern void AggrDbSubmit(AggrJob *job, bool urgent);
extern void AggrDbStop(void);
extern PGresult *AggrDbExec(AggrStmt stmt, const char *const *values,
							const int *lengths, const int *formats,
							AggrDbError *err);
extern void AggrDbErrorFree(AggrDbError *err);
extern const AggrErrorMap *AggrSqlstateLookup(const char *sqlstate);
extern void AggrDbErrorJson(AggrBuf *buf, const AggrDbError *err);
extern bool AggrDbIsConnectionError(const AggrDbError *err);
extern bool AggrLacksEventJson(const PGresult *res);

/* openapi_json.c, made from openapi.json by the Makefile */
extern const char aggr_openapi_json[];
extern const size_t aggr_openapi_json_len;

/* metrics.c */
typedef enum AggrRoute
{
	AGGR_ROUTE_PUBLISH,
	AGGR_ROUTE_EVENTS,
	AGGR_ROUTE_STATS,
	AGGR_ROUTE_HEALTHZ,
	AGGR_ROUTE_METRICS,
	AGGR_ROUTE_OPENAPI,
	AGGR_ROUTE_STREAM,
	AGGR_ROUTE_OTHER,
	AGGR_NUM_ROUTES
} AggrRoute;

extern const char *AggrRouteName(AggrRoute route);
extern void AggrMetricsRecord(AggrRoute route, int status, int64_t duration_us,
							  long accepted);
extern void AggrMetricsRender(AggrBuf *buf);
extern void AggrMetricsStreams(int opened, int dropped_slow);

/*
 * request.c: one request from parsed HTTP to its answer, with neither a
 * socket nor a database connection: routing, the POST headers, the body
 * against --max-body and --max-buffered, the /events parameters, and the
 * SQL call through an AggrDbExecFunc (AggrDbExec in the server, a recorder
 * in the fuzz harness).  http.c drives it from libmicrohttpd's callbacks:
 * AggrRequestStart when the headers are in, AggrRequestAppend per body
 * chunk, AggrRequestFinish when the body is complete; when that returns
 * true, AggrRequestRun on a database worker.  Any step may answer.
 */
typedef PGresult *(*AggrDbExecFunc) (AggrStmt stmt, const char *const *values,
									 const int *lengths, const int *formats,
									 AggrDbError *err);

/* what the request looks like to the handler; values are NUL-terminated */
typedef struct AggrRequestIn
{
	const char *method;
	const char *path;			/* decoded, without the query string */
	void	   *arg;
	/* a header's first value, NULL when absent (case-insensitive name) */
	const char *(*header) (void *arg, const char *name);
	/* how many times a header occurs */
	int			(*header_count) (void *arg, const char *name);
	/* a decoded query parameter, NULL when absent or without '=' */
	const char *(*query) (void *arg, const char *name);
} AggrRequestIn;

/* the answer, complete once AggrRequest.answered is set */
typedef struct AggrReply
{
	int			status;
	const char *content_type;
	AggrBuf		body;
	const char *allow;			/* Allow header, or NULL */
	bool		retry_after;
	bool		www_authenticate;
	char	   *link;			/* Link header (malloc'd), or NULL */
} AggrReply;

typedef struct AggrRequest
{
	AggrRoute	route;
	bool		answered;		/* answer filled in */
	bool		too_large;
	bool		over_budget;	/* --max-buffered reached while reading */
	bool		too_slow;		/* the body came slower than --min-body-rate */
	bool		bad_encoding;	/* not the gzip or deflate data it said */
	bool		ndjson;			/* Content-Type: application/x-ndjson */
	struct z_stream_s *inflater;	/* Content-Encoding gzip/deflate, or NULL */
	bool		inflated;		/* the compressed stream has ended */
	size_t		wire_len;		/* body bytes received, compressed or not */
	int64_t		body_since_us;	/* when the headers were in */
	size_t		reserved;		/* bytes counted in the --max-buffered budget */
	char	   *body;
	size_t		body_len;
	size_t		body_cap;
	char	   *topic;			/* GET /events parameters */
	int64_t		limit;
	int64_t		after;			/* -1: none */
	AggrReply	answer;
	long		accepted;		/* -1 when not a successful publish */
} AggrRequest;

extern void AggrRequestInit(AggrRequest *req);
extern void AggrRequestStart(AggrRequest *req, const AggrRequestIn *in);
extern void AggrRequestAppend(AggrRequest *req, const char *data, size_t size);
extern bool AggrRequestFinish(AggrRequest *req, const AggrRequestIn *in);
extern void AggrRequestRun(AggrRequest *req, AggrDbExecFunc exec);
extern void AggrRequestFree(AggrRequest *req);
extern void AggrRequestRefuse(AggrRequest *req, int status, const char *message,
							  bool retry_after);
extern size_t AggrRequestBuffered(void);

/* http.c */
struct MHD_Daemon;
extern struct MHD_Daemon *AggrHttpStart(const void *sockaddr);
extern long AggrHttpInflight(void);
extern void AggrHttpBeginShutdown(void);

/* stream.c: GET /events/stream, one hub thread and connection for all */
struct MHD_Connection;
struct MHD_Response;
extern void AggrStreamStart(void);
extern void AggrStreamStop(void);
extern struct MHD_Response *AggrStreamOpen(struct MHD_Connection *conn, const char *topic,
										   int64_t after, const char **refusal);

#endif							/* AGGR_SIDECAR_H */
