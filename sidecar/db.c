/*-------------------------------------------------------------------------
 *
 * db.c
 *	  The libpq side of aggr-sidecar: a pool of --threads database workers,
 *	  each owning one connection and the statements prepared on it, fed by
 *	  one job queue; and the one table that maps a SQLSTATE to an HTTP
 *	  status.
 *
 *	  Protocol kept here:
 *	  - A worker owns its connection alone (a thread-local slot), so no
 *		lock is ever taken around libpq.  Jobs are taken in order, except
 *		urgent ones (/healthz), which go to the head of the queue.
 *	  - On stop, the workers finish every queued job, then close their
 *		connections.
 *	  - Connections are opened lazily, with TimeZone = UTC, and statements
 *		are prepared on first use, so that the sidecar starts and answers
 *		503 while the database or the extension is missing.
 *	  - A connection the server closed is noticed before a statement is
 *		sent (its socket reads EOF) and replaced at once.  A connection
 *		lost during a statement, or refused, is answered at once with an
 *		08xxx error (HTTP 503); the next attempt waits a capped
 *		exponential backoff, so an outage costs a fast 503, never a hang.
 *	  - Every round trip is bounded by --db-timeout: the connection is
 *		non-blocking and waited on with poll(2); past the bound the
 *		connection is dropped.
 *	  - 40001 and 40P01 are retried up to three times in all.
 *
 *-------------------------------------------------------------------------
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sidecar.h"

#define TEXTOID 25
#define INT4OID 23
#define INT8OID 20

#define BACKOFF_MIN_US	100000	/* first retry after a failed connect */
#define BACKOFF_MAX_US	2000000 /* cap */
#define STMT_ATTEMPTS	3

typedef struct StmtDef
{
	const char *name;
	const char *sql;
	int			nparams;
	Oid			types[4];
} StmtDef;

/*
 * A page of at most $2 events and about $4 bytes (always one event): the
 * events whose text starts before $4 bytes of the page.  Columns: the JSON
 * array, the last seq in it, how many, and whether more may follow (the
 * page is full by count, or was cut by bytes).
 */
#define EVENTS_PAGE_SQL(event_json) \
	"WITH page AS (SELECT e.seq, " event_json " AS j " \
	"FROM aggr_events($1, $2, $3) AS e), " \
	"sized AS (SELECT seq, j, sum(octet_length(j) + 1) OVER (ORDER BY seq) " \
	"- octet_length(j) - 1 AS before FROM page) " \
	"SELECT '[' || coalesce(string_agg(j, ',' ORDER BY seq) FILTER (WHERE before < $4), '') || ']', " \
	"max(seq) FILTER (WHERE before < $4), count(*) FILTER (WHERE before < $4), " \
	"count(*) = $2 OR coalesce(bool_or(before >= $4), false) " \
	"FROM sized"

/*
 * The SQL the sidecar runs.  Results are rendered by PostgreSQL; the
 * sidecar forwards them.
 */
static const StmtDef stmt_defs[AGGR_NUM_STMTS] = {
	[AGGR_STMT_PUBLISH] = {
		"aggr_publish",
		"SELECT r::text, r ? 'unique', r->>'accepted' "
		"FROM aggr_publish_text($1) AS r",
		1, {TEXTOID}
	},

	[AGGR_STMT_EVENTS] = {
		"aggr_events",
		EVENTS_PAGE_SQL(AGGR_EVENT_JSON_SQL("e")),
		4, {TEXTOID, INT4OID, INT8OID, INT8OID}
	},
	[AGGR_STMT_PUBLISH_NDJSON] = {
		"aggr_publish_ndjson",
		"SELECT r::text, r ? 'unique', r->>'accepted' "
		"FROM aggr_publish_ndjson($1) AS r",
		1, {TEXTOID}
	},
	[AGGR_STMT_STATS] = {
		"aggr_stats",
		"SELECT aggr_stats()::text",
		0, {0}
	},
	[AGGR_STMT_HEALTH] = {
		"aggr_health",
		"SELECT (h - 'broker_error')::text, h->>'status' = 'ok', h->>'broker_error' "
		"FROM aggr_health() AS h",
		0, {0}
	},

	/*
	 * numbers of the stats object, one level deep, then per-topic counts (t)
	 * and per-topic expired (x), by kind: each metric's lines come together
	 */
	[AGGR_STMT_METRICS] = {
		"aggr_metrics",
		"WITH s AS (SELECT aggr_stats() AS s) "
		"SELECT 'n', e.key, e.value::text FROM s, jsonb_each(s.s) AS e "
		"WHERE jsonb_typeof(e.value) = 'number' "
		"UNION ALL "
		"SELECT 'n', e.key || '_' || n.key, n.value::text "
		"FROM s, jsonb_each(s.s) AS e, jsonb_each(CASE WHEN "
		"jsonb_typeof(e.value) = 'object' THEN e.value ELSE '{}' END) AS n "
		"WHERE jsonb_typeof(n.value) = 'number' "
		"UNION ALL "
		"SELECT k.kind, t->>'topic', t->>k.field FROM s, "
		"jsonb_array_elements(CASE WHEN jsonb_typeof(s.s->'topics') = "
		"'array' THEN s.s->'topics' ELSE '[]' END) AS t, "
		"(VALUES ('t', 'count'), ('x', 'expired')) AS k(kind, field) "
		"ORDER BY 1",
		0, {0}
	},
};

/*
 * What a statement becomes where the extension has no aggr_event_json()
 * (older than 0.7), prepared under a name of its own; unset: no other form.
 */
static const struct
{
	const char *name;
	const char *sql;
}			portable_defs[AGGR_NUM_STMTS] = {
	[AGGR_STMT_EVENTS] = {"aggr_events_portable", EVENTS_PAGE_SQL(AGGR_EVENT_JSON_PORTABLE_SQL)},
};

/*
 * SQLSTATE -> HTTP status: the only place that decides it.  Exact codes
 * first; a 2-character entry matches a whole class.  Anything else is 500.
 */
static const AggrErrorMap error_map[] = {
	{"22P02", 400, false, false},	/* malformed JSON, scalar or [] */
	{"22P05", 400, false, false},	/* \u0000 */
	{"22021", 400, false, false},	/* bad UTF-8, NUL byte */
	{"54001", 400, false, false},	/* nesting too deep */
	{"22032", 400, false, false},	/* invalid JSON text */
	{"22023", 422, false, false},	/* schema violation: index and field */
	{"22003", 400, false, false},	/* a JSON number numeric cannot hold */
	{"54000", 413, false, false},	/* too many events in one request */
	{"55000", 503, false, false},	/* aggr not preloaded */
	{"42883", 503, false, false},	/* extension not installed */
	{"3F000", 503, false, false},	/* schema missing */
	{"40001", 503, true, true}, /* serialization failure: retried */
	{"40P01", 503, true, true}, /* deadlock: retried */
	{"57P01", 503, true, false},	/* admin shutdown */
	{"57P02", 503, true, false},	/* crash shutdown */
	{"57P03", 503, true, false},	/* cannot connect now */
	{"57014", 503, true, false},	/* statement cancelled */
	{"53", 503, true, false},	/* queue full, insufficient resources */
	{"08", 503, true, false},	/* broker or database unreachable */
};

static const AggrErrorMap default_error = {"XX000", 500, false, false};

const AggrErrorMap *
AggrSqlstateLookup(const char *sqlstate)
{
	for (size_t i = 0; i < sizeof(error_map) / sizeof(error_map[0]); i++)
	{
		const char *code = error_map[i].sqlstate;

		if (strncmp(sqlstate, code, strlen(code)) == 0)
			return &error_map[i];
	}
	return &default_error;
}

typedef struct DbSlot
{
	PGconn	   *conn;
	bool		prepared[AGGR_NUM_STMTS];
	bool		portable[AGGR_NUM_STMTS];	/* in its portable_defs form */
	int			failures;		/* consecutive failed connects */
	int64_t		next_attempt_us;
	int			id;
	char		label[32];		/* "database connection N", for the log */
} DbSlot;

static DbSlot *slots;
static pthread_t *workers;
static int	nworkers;
static __thread DbSlot *my_slot;

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static AggrJob *queue_head;
static AggrJob *queue_tail;
static bool stopping;

static void *
WorkerMain(void *arg)
{
	my_slot = arg;
	for (;;)
	{
		AggrJob    *job;

		pthread_mutex_lock(&queue_lock);
		while (queue_head == NULL && !stopping)
			pthread_cond_wait(&queue_cond, &queue_lock);
		job = queue_head;
		if (job != NULL && (queue_head = job->next) == NULL)
			queue_tail = NULL;
		pthread_mutex_unlock(&queue_lock);
		if (job == NULL)
			return NULL;		/* stopping, and nothing left */
		job->next = NULL;
		job->run(job);
	}
}

void
AggrDbStart(int n)
{
	nworkers = n;
	slots = calloc(n, sizeof(DbSlot));
	workers = calloc(n, sizeof(pthread_t));
	if (slots == NULL || workers == NULL)
		abort();
	for (int i = 0; i < n; i++)
	{
		slots[i].id = i + 1;
		snprintf(slots[i].label, sizeof(slots[i].label), "database connection %d", i + 1);
		if (pthread_create(&workers[i], NULL, WorkerMain, &slots[i]) != 0)
		{
			AggrLog("fatal", "cannot start database worker %d", i + 1);
			abort();
		}
	}
}

void
AggrDbSubmit(AggrJob *job, bool urgent)
{
	pthread_mutex_lock(&queue_lock);
	if (queue_head == NULL)
	{
		job->next = NULL;
		queue_head = queue_tail = job;
	}
	else if (urgent)
	{
		job->next = queue_head;
		queue_head = job;
	}
	else
	{
		job->next = NULL;
		queue_tail->next = job;
		queue_tail = job;
	}
	pthread_cond_signal(&queue_cond);
	pthread_mutex_unlock(&queue_lock);
}

void
AggrDbStop(void)
{
	pthread_mutex_lock(&queue_lock);
	stopping = true;
	pthread_cond_broadcast(&queue_cond);
	pthread_mutex_unlock(&queue_lock);
	for (int i = 0; i < nworkers; i++)
		pthread_join(workers[i], NULL);
	for (int i = 0; i < nworkers; i++)
		if (slots[i].conn)
			PQfinish(slots[i].conn);
	free(workers);
	free(slots);
	workers = NULL;
	slots = NULL;
	nworkers = 0;
}

static void
SetError(AggrDbError *err, const char *sqlstate, const char *message,
		 const char *detail, const char *hint)
{
	size_t		len;

	AggrDbErrorFree(err);
	snprintf(err->sqlstate, sizeof(err->sqlstate), "%s",
			 sqlstate ? sqlstate : "XX000");
	err->message = AggrStrdup(message ? message : "unknown error");
	/* libpq messages end with a newline */
	len = strlen(err->message);
	while (len > 0 && (err->message[len - 1] == '\n' ||
					   err->message[len - 1] == ' '))
		err->message[--len] = '\0';
	err->detail = detail ? AggrStrdup(detail) : NULL;
	err->hint = hint ? AggrStrdup(hint) : NULL;
	/* aggr_publish lost Redis's answer to its push: the events may be queued */
	err->outcome_unknown = (strcmp(err->sqlstate, "08007") == 0);
}

/*
 * A failure of the connection itself.  libpq's text (host, socket path, user)
 * goes to the log only; the client is told what is down and, when a
 * statement that writes was sent and its answer lost, that the statement
 * may have been applied (a retry is safe: aggr deduplicates).
 */
static void
SetConnectionError(AggrDbError *err, const DbSlot *slot, AggrStmt stmt,
				   bool sent, const char *why)
{
	bool		maybe_applied = sent && (stmt == AGGR_STMT_PUBLISH ||
										 stmt == AGGR_STMT_PUBLISH_NDJSON);

	AggrLog("warning", "database connection %d: %s", slot->id, why);
	SetError(err, "08006", maybe_applied ?
			 "lost the database connection while publishing; the outcome is unknown, and a retry is safe" :
			 "database unreachable", NULL, NULL);
	err->outcome_unknown = maybe_applied;
}

void
AggrDbErrorFree(AggrDbError *err)
{
	free(err->message);
	free(err->detail);
	free(err->hint);
	memset(err, 0, sizeof(*err));
}

bool
AggrDbIsConnectionError(const AggrDbError *err)
{
	return strncmp(err->sqlstate, "08", 2) == 0 ||
		strncmp(err->sqlstate, "57P0", 4) == 0;
}

/*
 * {"error":"…","sqlstate":"…","detail":…}, plus "outcome":"unknown" when the
 * statement may have been applied.  The detail of a connection-class error
 * (say, which Redis host refused) is logged, not answered: those answers go
 * to unauthenticated clients.
 */
void
AggrDbErrorJson(AggrBuf *buf, const AggrDbError *err)
{
	AggrBufAppendStr(buf, "{\"error\":");
	AggrBufJsonString(buf, err->message ? err->message : "unknown error");
	AggrBufAppendStr(buf, ",\"sqlstate\":");
	AggrBufJsonString(buf, err->sqlstate);
	AggrBufAppendStr(buf, ",\"detail\":");
	if (err->detail && AggrDbIsConnectionError(err))
	{
		AggrLog("warning", "%s: %s", err->message, err->detail);
		AggrBufAppendStr(buf, "null");
	}
	else if (err->detail)
		AggrBufJsonString(buf, err->detail);
	else
		AggrBufAppendStr(buf, "null");
	if (err->outcome_unknown)
		AggrBufAppendStr(buf, ",\"outcome\":\"unknown\"");
	if (err->hint)
	{
		AggrBufAppendStr(buf, ",\"hint\":");
		AggrBufJsonString(buf, err->hint);
	}
	AggrBufAppendStr(buf, "}");
}

static void
DropConnection(DbSlot *slot)
{
	if (slot->conn)
		PQfinish(slot->conn);
	slot->conn = NULL;
	memset(slot->prepared, 0, sizeof(slot->prepared));
	memset(slot->portable, 0, sizeof(slot->portable));
}

/* server notices and warnings become JSON log lines, not raw stderr */
static void
LogNotice(void *arg, const char *message)
{
	AggrLog("notice", "%s: %s", (const char *) arg, message);
}

/*
 * A connection as every part of the sidecar opens it: the defaults below
 * (what the URL or conninfo says overrides them), notices logged as
 * label (which must outlive the connection), TimeZone = UTC and READ
 * COMMITTED (aggr_events pages only there, whatever the role's default).
 * keepalives: for a reader that blocks on the connection (the event
 * stream's hub), so that a dead peer ends its wait.  *ok: connected and set
 * up; the connection is returned either way (its error message is there).
 */
PGconn *
AggrDbOpen(const char *appname, const char *label, bool keepalives, bool *ok)
{
	const char *keys[8] = {"connect_timeout", "application_name", "client_encoding"};
	const char *vals[8] = {"3", appname, "UTF8"};
	int			n = 3;
	PGconn	   *conn;
	PGresult   *res;

	if (keepalives)
	{
		keys[n] = "keepalives_idle", vals[n++] = "10";
		keys[n] = "keepalives_interval", vals[n++] = "5";
		keys[n] = "keepalives_count", vals[n++] = "3";
	}
	/* last: the URL or conninfo the user gave overrides the defaults above */
	keys[n] = "dbname", vals[n++] = aggr_config.conninfo;
	keys[n] = NULL;
	conn = PQconnectdbParams(keys, vals, 1);
	*ok = PQstatus(conn) == CONNECTION_OK;
	if (!*ok)
		return conn;
	PQsetNoticeProcessor(conn, LogNotice, (void *) label);
	res = PQexec(conn, "SET TimeZone = 'UTC'; "
				 "SET default_transaction_isolation = 'read committed'");
	*ok = PQresultStatus(res) == PGRES_COMMAND_OK;
	PQclear(res);
	return conn;
}

static bool
Connect(DbSlot *slot, AggrDbError *err)
{
	char		appname[64];
	int64_t		now = AggrNowUs();
	int64_t		backoff;
	bool		ok;

	if (now < slot->next_attempt_us)
	{
		SetError(err, "08001", "database unavailable, reconnecting",
				 NULL, NULL);
		return false;
	}
	snprintf(appname, sizeof(appname), "aggr sidecar %d", slot->id);
	slot->conn = AggrDbOpen(appname, slot->label, false, &ok);
	if (ok && PQsetnonblocking(slot->conn, 1) == 0)
	{
		if (slot->failures > 0)
			AggrLog("info", "database connection %d restored", slot->id);
		slot->failures = 0;
		slot->next_attempt_us = 0;
		return true;
	}

	if (slot->failures == 0)
		AggrLog("warning", "database connection %d failed: %s", slot->id,
				PQerrorMessage(slot->conn));
	SetError(err, "08001", "database unreachable", NULL, NULL);
	DropConnection(slot);
	backoff = (int64_t) BACKOFF_MIN_US << (slot->failures < 5 ? slot->failures : 5);
	if (backoff > BACKOFF_MAX_US)
		backoff = BACKOFF_MAX_US;
	slot->failures++;
	slot->next_attempt_us = now + backoff;
	return false;
}

/*
 * Wait until the connection has flushed its output and the result is
 * complete, or until the deadline.  Returns false on timeout or a broken
 * socket; the caller then drops the connection.
 */
static bool
WaitForResult(PGconn *conn, int64_t deadline_us)
{
	for (;;)
	{
		int			flush = PQflush(conn);
		struct pollfd pfd;
		int64_t		left;

		if (flush < 0)
			return false;
		if (flush == 0 && !PQisBusy(conn))
			return true;
		left = deadline_us - AggrNowUs();
		if (left <= 0)
			return false;
		pfd.fd = PQsocket(conn);
		pfd.events = POLLIN | (flush ? POLLOUT : 0);
		pfd.revents = 0;
		if (poll(&pfd, 1, (int) ((left + 999) / 1000)) < 0)
			continue;			/* EINTR */
		if ((pfd.revents & (POLLIN | POLLERR | POLLHUP)) &&
			!PQconsumeInput(conn))
			return true;		/* PQgetResult reports the failure */
	}
}

/*
 * Whether a statement failed because the extension has no
 * aggr_event_json() (older than 0.7): then the portable form serves.  A
 * missing extension fails on aggr_events() first, in the FROM clause.
 */
bool
AggrLacksEventJson(const PGresult *res)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

	return state != NULL && strcmp(state, "42883") == 0 &&
		message != NULL && strstr(message, "aggr_event_json(") != NULL;
}

/* run one prepared statement once; NULL with err set on failure */
static PGresult *
ExecOnce(DbSlot *slot, AggrStmt stmt, const char *const *values,
		 const int *lengths, const int *formats, AggrDbError *err)
{
	const StmtDef *def = &stmt_defs[stmt];
	const char *name = slot->portable[stmt] ? portable_defs[stmt].name : def->name;
	int64_t		deadline = AggrNowUs() + (int64_t) aggr_config.db_timeout_ms * 1000;
	PGresult   *res = NULL;
	bool		sent;

	if (!slot->prepared[stmt])
		sent = PQsendPrepare(slot->conn, name,
							 slot->portable[stmt] ? portable_defs[stmt].sql : def->sql,
							 def->nparams, def->types);
	else
		sent = PQsendQueryPrepared(slot->conn, name, def->nparams,
								   values, lengths, formats, 0);

	/*
	 * Collect every result, each wait bounded.  An error can follow the rows
	 * (aggr_publish queues on the broker at commit, after its result was
	 * sent): an error result wins.
	 */
	while (sent)
	{
		PGresult   *next;

		if (!WaitForResult(slot->conn, deadline))
		{
			PQclear(res);
			SetConnectionError(err, slot, stmt, slot->prepared[stmt],
							   "no answer within --db-timeout");
			DropConnection(slot);
			return NULL;
		}
		if ((next = PQgetResult(slot->conn)) == NULL)
			break;
		if (res == NULL || PQresultStatus(next) == PGRES_FATAL_ERROR)
		{
			PQclear(res);
			res = next;
		}
		else
			PQclear(next);
	}
	if (!sent)
	{
		SetConnectionError(err, slot, stmt, slot->prepared[stmt],
						   PQerrorMessage(slot->conn));
		DropConnection(slot);
		return NULL;
	}
	if (res == NULL || PQresultStatus(res) == PGRES_FATAL_ERROR)
	{
		const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

		if (PQstatus(slot->conn) != CONNECTION_OK || state == NULL)
		{
			SetConnectionError(err, slot, stmt, slot->prepared[stmt],
							   res ? PQresultErrorMessage(res) :
							   PQerrorMessage(slot->conn));
			DropConnection(slot);
			/* a fresh connection is worth trying at once */
			slot->next_attempt_us = 0;
		}
		else if (portable_defs[stmt].sql && !slot->portable[stmt] && AggrLacksEventJson(res))
		{
			/*
			 * an older extension (or one re-created older under this
			 * connection): the portable form, prepared under its own name
			 */
			PQclear(res);
			slot->portable[stmt] = true;
			slot->prepared[stmt] = false;
			return ExecOnce(slot, stmt, values, lengths, formats, err);
		}
		else
			SetError(err, state,
					 PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY),
					 PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL),
					 PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
		PQclear(res);
		return NULL;
	}

	if (!slot->prepared[stmt])
	{
		/* prepared now: run it */
		PQclear(res);
		slot->prepared[stmt] = true;
		return ExecOnce(slot, stmt, values, lengths, formats, err);
	}
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		SetError(err, "XX000", PQresultErrorMessage(res), NULL, NULL);
		PQclear(res);
		return NULL;
	}
	return res;
}

/*
 * Drop a connection the server has already closed (a restart, a
 * terminated backend): its socket reads EOF.  Checked before sending, so a
 * statement never goes down a dead connection and nothing is sent twice.
 */
static void
DropIfClosed(DbSlot *slot)
{
	struct pollfd pfd = {PQsocket(slot->conn), POLLIN, 0};

	if (poll(&pfd, 1, 0) > 0 &&
		(!PQconsumeInput(slot->conn) || PQstatus(slot->conn) != CONNECTION_OK))
	{
		AggrLog("info", "database connection %d was closed by the server",
				slot->id);
		DropConnection(slot);
		slot->next_attempt_us = 0;
	}
}

/*
 * Run a statement on this thread's connection.  On failure returns NULL
 * and fills err (its sqlstate drives the HTTP status).
 */
PGresult *
AggrDbExec(AggrStmt stmt, const char *const *values, const int *lengths,
		   const int *formats, AggrDbError *err)
{
	DbSlot	   *slot = my_slot;

	for (int attempt = 1;; attempt++)
	{
		PGresult   *res;

		if (slot->conn != NULL)
			DropIfClosed(slot);
		if (slot->conn == NULL && !Connect(slot, err))
			return NULL;
		res = ExecOnce(slot, stmt, values, lengths, formats, err);
		if (res != NULL)
			return res;
		if (!AggrSqlstateLookup(err->sqlstate)->retry_stmt ||
			attempt >= STMT_ATTEMPTS)
			return NULL;
	}
}
