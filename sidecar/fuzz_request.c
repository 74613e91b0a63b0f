/*-------------------------------------------------------------------------
 *
 * fuzz_request.c
 *	  libFuzzer harness for aggr-sidecar's request handling (request.c):
 *	  routing, the POST headers (bearer token, Content-Length), the body
 *	  against --max-body and --max-buffered, the /events parameters, the
 *	  SQLSTATE -> HTTP mapping, JSON error bodies, the Link header and the
 *	  /metrics text, driven the way http.c drives them from libmicrohttpd,
 *	  with a recorder in place of PostgreSQL.
 *
 *	  Input: byte 0 picks what the "database" answers (success or one
 *	  SQLSTATE; bit 7 and bit 6 pick variants), byte 1 the configuration
 *	  (--max-body, --max-buffered, --token, the body chunk size), then an
 *	  HTTP/1.1 request as text: request line, header lines, an empty line,
 *	  the rest.  The rest is the body, framed as MHD would (Content-Length,
 *	  or all of it when Transfer-Encoding is present), and also the bytes
 *	  the recorder puts in error messages and /metrics keys (split at |).
 *
 *	  Checked on every input, against a model written here independently
 *	  of request.c, beyond "no crash, no leak" (ASan/UBSan):
 *	  - the status is the one the route, method, token, framing, body
 *		size, parameters and database outcome call for (a 503 for the
 *		--max-buffered budget only when the budget is tight);
 *	  - Allow, WWW-Authenticate, Retry-After and Link exactly when due;
 *	  - every error body is valid JSON {"error": string, ...}, every
 *		/healthz 503 valid JSON with "status", every success body is the
 *		database's text byte for byte, /metrics is well-formed exposition;
 *	  - the recorder is called once exactly when the request needs SQL, it
 *		never sees a body over --max-body, and the POST body reaches it
 *		byte for byte; /events parameters reach it as parsed, and
 *		/events/stream is handed to stream.c with its parameters parsed;
 *	  - every byte counted in the --max-buffered budget is given back.
 *
 *	  `make fuzz` builds and runs it (clang); seeds are in fuzz-corpus/.
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <microhttpd.h>
#include <zlib.h>

#include "sidecar.h"

#define MAX_HEADERS 32
#define MAX_ARGS 32
#define MAX_METRIC_ROWS 8

AggrConfig	aggr_config;

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char token[] = "s3cret";
static const char read_token[] = "r3ader";
static const size_t max_bodies[] = {16, 100, 1000, 5000};
static const char publish_json[] = "{\"accepted\": 3, \"worker_count\": 0, \"unique\": 2, \"duplicates\": 1}";
static const char queued_json[] = "{\"accepted\": 3, \"worker_count\": 2}";
static const char events_json[] = "[{\"topic\": \"t\", \"event_id\": \"e\"}]";
static const char stats_json[] = "{\"received\": 5, \"topics\": []}";
static const char health_json[] = "{\"status\": \"ok\", \"database\": \"ok\"}";
static const char next_seq[] = "9223372036854775807";

/*
 * What the database may answer, and what README says each SQLSTATE earns:
 * the table request.c and db.c must agree with.
 */
typedef struct Outcome
{
	const char *sqlstate;		/* NULL: success */
	int			status;
	bool		retry_after;
	bool		connection;		/* lost or refused connection */
} Outcome;

static const Outcome outcomes[] = {
	{NULL, 200, false, false},
	{"22P02", 400, false, false},
	{"22P05", 400, false, false},
	{"22021", 400, false, false},
	{"54001", 400, false, false},
	{"22023", 422, false, false},
	{"54000", 413, false, false},
	{"53000", 503, true, false},
	{"53300", 503, true, false},
	{"08006", 503, true, true},
	{"08001", 503, true, true},
	{"55000", 503, false, false},
	{"42883", 503, false, false},
	{"3F000", 503, false, false},
	{"40001", 503, true, false},
	{"40P01", 503, true, false},
	{"57P01", 503, true, true},
	{"57014", 503, true, false},
	{"22012", 500, false, false},
	{"XX000", 500, false, false},
};

#define NOUTCOMES ((int) (sizeof(outcomes) / sizeof(outcomes[0])))

/* ---- failures ---- */

static void Fail(const char *fmt,...) __attribute__((format(printf, 1, 2), noreturn));

static void
Fail(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fputs("fuzz_request: invariant broken: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	abort();
}

/* ---- the request, parsed as libmicrohttpd would hand it over ---- */

typedef struct Pair
{
	char	   *key;
	char	   *value;			/* NULL: a query key without '=' */
} Pair;

typedef struct Input
{
	const Outcome *outcome;
	bool		variant_a;		/* queued publish, failed health, full page */
	bool		variant_b;		/* publish without result, 't' metric rows */
	size_t		chunk;			/* body bytes per AggrRequestAppend */
	char	   *method;
	char	   *path;
	Pair		headers[MAX_HEADERS];
	int			nheaders;
	Pair		args[MAX_ARGS];
	int			nargs;
	const char *rest;			/* after the empty line */
	size_t		rest_len;
	const char *body;			/* what MHD would deliver as the body */
	size_t		body_len;
	bool		stalls;			/* Content-Length beyond what was sent */
	char	   *rest_text;		/* rest as a C string, for messages */
} Input;

static char *
Dup(const char *s, size_t len)
{
	char	   *p = AggrMalloc(len + 1);

	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

/* percent-decoded, cut at a decoded NUL like MHD's C-string lookups */
static char *
Unescaped(const char *s, size_t len)
{
	char	   *p = Dup(s, len);

	MHD_http_unescape(p);
	return p;
}

/* the next line of [*pos, end), without its \r\n; NULL at the end */
static const char *
NextLine(const char **pos, const char *end, size_t *len)
{
	const char *start = *pos;
	const char *nl;

	if (start >= end)
		return NULL;
	nl = memchr(start, '\n', end - start);
	*pos = nl ? nl + 1 : end;
	*len = (nl ? nl : end) - start;
	if (*len > 0 && start[*len - 1] == '\r')
		(*len)--;
	return start;
}

static void
ParseQuery(Input *in, const char *q, size_t len)
{
	const char *end = q + len;

	while (q < end && in->nargs < MAX_ARGS)
	{
		const char *amp = memchr(q, '&', end - q);
		const char *stop = amp ? amp : end;
		const char *eq = memchr(q, '=', stop - q);
		Pair	   *a = &in->args[in->nargs++];

		a->key = Unescaped(q, (eq ? eq : stop) - q);
		a->value = eq ? Unescaped(eq + 1, stop - eq - 1) : NULL;
		q = stop + 1;
	}
}

static const char *
FindPair(const Pair *pairs, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (strcasecmp(pairs[i].key, name) == 0)
			return pairs[i].value;
	return NULL;
}

static const char *
InputHeader(void *arg, const char *name)
{
	Input	   *in = arg;

	return FindPair(in->headers, in->nheaders, name);
}

static int
InputHeaderCount(void *arg, const char *name)
{
	Input	   *in = arg;
	int			n = 0;

	for (int i = 0; i < in->nheaders; i++)
		n += strcasecmp(in->headers[i].key, name) == 0;
	return n;
}

static const char *
InputQuery(void *arg, const char *name)
{
	Input	   *in = arg;

	return FindPair(in->args, in->nargs, name);
}

/* a strict unsigned decimal, as MHD reads Content-Length; -1 if not one */
static long long
Decimal(const char *s)
{
	long long	v = 0;

	if (s == NULL || *s == '\0')
		return -1;
	for (; *s; s++)
	{
		if (*s < '0' || *s > '9' || v > (INT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (*s - '0');
	}
	return v;
}

static bool
ParseInput(Input *in, const uint8_t *data, size_t size)
{
	static const size_t chunks[] = {1, 7, 64, 100000};
	const char *pos = (const char *) data + 2;
	const char *end = (const char *) data + size;
	const char *line;
	const char *lend;
	const char *sp;
	const char *q;
	const char *cl;
	size_t		len;
	size_t		target_len;

	if (size < 2)
		return false;
	in->outcome = &outcomes[(data[0] & 0x3f) % NOUTCOMES];
	in->variant_a = data[0] & 0x80;
	in->variant_b = data[0] & 0x40;
	in->chunk = chunks[(data[1] >> 5) & 3];
	aggr_config.max_body = max_bodies[data[1] & 3];
	aggr_config.max_buffered = (data[1] & 4) ?
		2 * aggr_config.max_body + 8192 :	/* ample: never exhausted */
		aggr_config.max_body + (data[1] & 8 ? 4097 : 0);
	aggr_config.token = (data[1] & 16) ? token : NULL;
	aggr_config.read_token = (data[1] & 128) ? read_token : NULL;
	/* the model expects one database call per request */
	aggr_config.health_cache_ms = 0;

	/* request line: METHOD SP target [SP version] */
	if ((line = NextLine(&pos, end, &len)) == NULL)
		return false;
	lend = line + len;
	sp = memchr(line, ' ', len);
	in->method = Dup(line, sp ? (size_t) (sp - line) : len);
	line = sp ? sp + 1 : lend;
	sp = memchr(line, ' ', lend - line);
	target_len = (sp ? sp : lend) - line;
	q = memchr(line, '?', target_len);
	in->path = Unescaped(line, (q ? q : line + target_len) - line);
	if (q)
		ParseQuery(in, q + 1, line + target_len - q - 1);

	/* header lines up to the empty one; "Name: value", value trimmed */
	while ((line = NextLine(&pos, end, &len)) != NULL && len > 0)
	{
		const char *colon = memchr(line, ':', len);
		const char *v;
		const char *vend = line + len;
		Pair	   *h;

		if (colon == NULL || in->nheaders == MAX_HEADERS)
			continue;
		for (v = colon + 1; v < vend && (*v == ' ' || *v == '\t'); v++)
			;
		while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
			vend--;
		h = &in->headers[in->nheaders++];
		h->key = Dup(line, colon - line);
		h->value = Dup(v, vend - v);
	}
	in->rest = pos;
	in->rest_len = end - pos;
	in->rest_text = Dup(in->rest, in->rest_len);

	/* the body as MHD frames it */
	cl = InputHeader(in, "Content-Length");
	if (InputHeader(in, "Transfer-Encoding"))
	{
		in->body = in->rest;
		in->body_len = in->rest_len;
	}
	else if (Decimal(cl) >= 0)
	{
		unsigned long long n = (unsigned long long) Decimal(cl);

		in->body = in->rest;
		in->body_len = n < in->rest_len ? (size_t) n : in->rest_len;
		in->stalls = n > in->rest_len;
	}
	else
	{
		in->body = in->rest;
		in->body_len = 0;
	}
	return true;
}

static void
FreeInput(Input *in)
{
	for (int i = 0; i < in->nheaders; i++)
	{
		free(in->headers[i].key);
		free(in->headers[i].value);
	}
	for (int i = 0; i < in->nargs; i++)
	{
		free(in->args[i].key);
		free(in->args[i].value);
	}
	free(in->method);
	free(in->path);
	free(in->rest_text);
}

/* ---- the recorder in place of PostgreSQL ---- */

typedef struct Record
{
	int			calls;
	AggrStmt	stmt;
	int			nvalues;
	char	   *values[4];		/* copies; NULL for a NULL parameter */
	int			lengths[4];
	bool		has_lengths;
	int			format0;
} Record;

static Record rec;
static const Input *current;

static PGresult *
FakeResult(int ncols, const char *const *cells, int nrows)
{
	PGresult   *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc attrs[4];

	memset(attrs, 0, sizeof(attrs));
	for (int c = 0; c < ncols; c++)
	{
		attrs[c].name = (char *) "c";
		attrs[c].typid = 25;
		attrs[c].typlen = -1;
		attrs[c].atttypmod = -1;
	}
	if (res == NULL || !PQsetResultAttrs(res, ncols, attrs))
		Fail("cannot build a PGresult");
	for (int r = 0; r < nrows; r++)
		for (int c = 0; c < ncols; c++)
		{
			const char *v = cells[r * ncols + c];

			if (!PQsetvalue(res, r, c, (char *) v, v ? (int) strlen(v) : -1))
				Fail("cannot fill a PGresult");
		}
	return res;
}

/*
 * The rows aggr_metrics would give, keys taken from the input: '|'
 * separates them, so that a key can hold a line break as topics can.
 */
static PGresult *
MetricsResult(const Input *in)
{
	const char *cells[MAX_METRIC_ROWS * 3];
	char	   *keys[MAX_METRIC_ROWS];
	const char *pos = in->rest;
	const char *end = in->rest + in->rest_len;
	int			n = 0;
	PGresult   *res;

	while (n < MAX_METRIC_ROWS && pos < end)
	{
		const char *bar = memchr(pos, '|', end - pos);
		const char *stop = bar ? bar : end;

		keys[n] = Dup(pos, stop - pos);
		pos = stop + 1;
		cells[n * 3] = (in->variant_b && n % 2) ? "t" : "n";
		cells[n * 3 + 1] = keys[n];
		cells[n * 3 + 2] = n == 3 ? NULL : "42";
		n++;
	}
	res = FakeResult(3, cells, n);
	for (int i = 0; i < n; i++)
		free(keys[i]);
	return res;
}

static PGresult *
Recorder(AggrStmt stmt, const char *const *values, const int *lengths,
		 const int *formats, AggrDbError *err)
{
	static const int nparams[AGGR_NUM_STMTS] = {
		[AGGR_STMT_PUBLISH] = 1,
		[AGGR_STMT_EVENTS] = 4,
		[AGGR_STMT_PUBLISH_NDJSON] = 1,
	};
	const Input *in = current;
	char		count[24];

	rec.calls++;
	rec.stmt = stmt;
	rec.nvalues = nparams[stmt];
	rec.has_lengths = lengths != NULL;
	rec.format0 = formats ? formats[0] : 0;
	for (int i = 0; i < rec.nvalues; i++)
	{
		rec.lengths[i] = lengths ? lengths[i] : -1;
		if (values[i] == NULL)
			rec.values[i] = NULL;
		else
			rec.values[i] = lengths && formats && formats[i] ?
				Dup(values[i], lengths[i]) : AggrStrdup(values[i]);
	}

	if (in->outcome->sqlstate)
	{
		/* what db.c's SetError fills in, with untrusted bytes in it */
		snprintf(err->sqlstate, sizeof(err->sqlstate), "%s",
				 in->outcome->sqlstate);
		err->message = AggrStrdup(in->rest_text);
		err->detail = in->variant_a ? NULL : AggrStrdup(in->path);
		err->hint = in->variant_b ? AggrStrdup(in->method) : NULL;
		return NULL;
	}

	switch (stmt)
	{
		case AGGR_STMT_PUBLISH:
		case AGGR_STMT_PUBLISH_NDJSON:
			{
				const char *cells[3] = {
					in->variant_b ? NULL : in->variant_a ? queued_json : publish_json,
					in->variant_a ? "f" : "t", "3"
				};

				return FakeResult(3, cells, 1);
			}
		case AGGR_STMT_EVENTS:
			{
				/* a full page (count = limit) when variant_a, else one short */
				const char *cells[4] = {events_json, next_seq, count, in->variant_a ? "t" : "f"};

				snprintf(count, sizeof(count), "%lld",
						 atoll(values[1]) - (in->variant_a ? 0 : 1));
				if (in->variant_b)
					cells[1] = NULL;	/* no rows: max(seq) is NULL */
				return FakeResult(4, cells, 1);
			}
		case AGGR_STMT_STATS:
			{
				const char *cells[1] = {stats_json};

				return FakeResult(1, cells, 1);
			}
		case AGGR_STMT_HEALTH:
			{
				const char *cells[3] = {health_json, in->variant_a ? "f" : "t",
				in->variant_b ? "broker error" : NULL};

				return FakeResult(3, cells, 1);
			}
		case AGGR_STMT_METRICS:
			return MetricsResult(in);
		default:
			Fail("unknown statement %d", (int) stmt);
	}
}

static void
ClearRecord(void)
{
	for (int i = 0; i < rec.nvalues; i++)
		free(rec.values[i]);
	memset(&rec, 0, sizeof(rec));
}

/* ---- validators ---- */

typedef struct Json
{
	const char *p;
	const char *end;
} Json;

static bool JsonValue(Json *j, int depth, bool *is_string);

static void
JsonSpace(Json *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' ||
							 *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static bool
JsonLiteral(Json *j, const char *word)
{
	size_t		len = strlen(word);

	if ((size_t) (j->end - j->p) < len || memcmp(j->p, word, len) != 0)
		return false;
	j->p += len;
	return true;
}

/* a string: escapes well-formed, no raw control byte, UTF-8 valid */
static bool
JsonString(Json *j)
{
	if (j->p >= j->end || *j->p != '"')
		return false;
	j->p++;
	while (j->p < j->end)
	{
		unsigned char c = (unsigned char) *j->p++;
		int			more;
		unsigned	cp;

		if (c == '"')
			return true;
		if (c < 0x20)
			return false;
		if (c == '\\')
		{
			if (j->p >= j->end)
				return false;
			c = (unsigned char) *j->p++;
			if (c == 'u')
			{
				for (int i = 0; i < 4; i++, j->p++)
					if (j->p >= j->end || !strchr("0123456789abcdefABCDEF", *j->p) ||
						*j->p == '\0')
						return false;
			}
			else if (!strchr("\"\\/bfnrt", c) || c == '\0')
				return false;
			continue;
		}
		if (c < 0x80)
			continue;
		if (c >= 0xC2 && c <= 0xDF)
			more = 1, cp = c & 0x1F;
		else if (c >= 0xE0 && c <= 0xEF)
			more = 2, cp = c & 0x0F;
		else if (c >= 0xF0 && c <= 0xF4)
			more = 3, cp = c & 0x07;
		else
			return false;
		for (int i = 0; i < more; i++)
		{
			if (j->p >= j->end || ((unsigned char) *j->p & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | ((unsigned char) *j->p++ & 0x3F);
		}
		if ((more == 2 && cp < 0x800) || (more == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
			(cp >= 0xD800 && cp <= 0xDFFF))
			return false;
	}
	return false;
}

static bool
JsonNumber(Json *j)
{
	const char *start = j->p;

	if (j->p < j->end && *j->p == '-')
		j->p++;
	if (j->p >= j->end || *j->p < '0' || *j->p > '9')
		return false;
	while (j->p < j->end && ((*j->p >= '0' && *j->p <= '9') ||
							 strchr(".eE+-", *j->p)))
		j->p++;
	return j->p > start;
}

/*
 * An object, j->p at its '{'; with want != NULL, sets *want_is_string when
 * the key want has a string value.
 */
static bool
JsonObject(Json *j, int depth, const char *want, bool *want_is_string)
{
	j->p++;
	JsonSpace(j);
	if (j->p < j->end && *j->p == '}')
	{
		j->p++;
		return true;
	}
	for (;;)
	{
		const char *key;
		size_t		klen;
		bool		is_string = false;

		JsonSpace(j);
		key = j->p;
		if (!JsonString(j))
			return false;
		klen = j->p - key;		/* with its quotes */
		JsonSpace(j);
		if (j->p >= j->end || *j->p++ != ':')
			return false;
		if (!JsonValue(j, depth + 1, &is_string))
			return false;
		if (want && klen == strlen(want) + 2 &&
			memcmp(key + 1, want, klen - 2) == 0 && is_string)
			*want_is_string = true;
		JsonSpace(j);
		if (j->p < j->end && *j->p == ',')
		{
			j->p++;
			continue;
		}
		if (j->p < j->end && *j->p == '}')
		{
			j->p++;
			return true;
		}
		return false;
	}
}

static bool
JsonValue(Json *j, int depth, bool *is_string)
{
	bool		ignored;

	if (depth > 64)
		return false;
	JsonSpace(j);
	if (j->p >= j->end)
		return false;
	*is_string = false;
	switch (*j->p)
	{
		case '{':
			return JsonObject(j, depth, NULL, &ignored);
		case '[':
			j->p++;
			JsonSpace(j);
			if (j->p < j->end && *j->p == ']')
				return j->p++, true;
			for (;;)
			{
				if (!JsonValue(j, depth + 1, &ignored))
					return false;
				JsonSpace(j);
				if (j->p < j->end && *j->p == ',')
					j->p++;
				else if (j->p < j->end && *j->p == ']')
					return j->p++, true;
				else
					return false;
			}
		case '"':
			*is_string = true;
			return JsonString(j);
		case 't':
			return JsonLiteral(j, "true");
		case 'f':
			return JsonLiteral(j, "false");
		case 'n':
			return JsonLiteral(j, "null");
		default:
			return JsonNumber(j);
	}
}

/* the whole text is one JSON object with a string under key */
static bool
JsonObjectWithString(const char *json, size_t len, const char *key)
{
	Json		j = {json, json + len};
	bool		found = false;

	JsonSpace(&j);
	if (j.p >= j.end || *j.p != '{' || !JsonObject(&j, 0, key, &found))
		return false;
	JsonSpace(&j);
	return j.p == j.end && found;
}

static bool
MetricNameChar(char c, bool first)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
		c == ':' || (!first && c >= '0' && c <= '9');
}

/* Prometheus text exposition: comments, or name{label="v",...} value */
static void
CheckMetricsText(const char *body, size_t len)
{
	const char *pos = body;
	const char *end = body + len;
	const char *line;
	size_t		n;

	if (len == 0 || body[len - 1] != '\n')
		Fail("metrics text does not end with a newline");
	while ((line = NextLine(&pos, end, &n)) != NULL)
	{
		const char *p = line;
		const char *le = line + n;

		if (n == 0 || memchr(line, '\0', n))
			Fail("metrics: empty line or NUL byte");
		if (*p == '#')
		{
			if (n < 7 || (strncmp(p, "# TYPE ", 7) != 0 && strncmp(p, "# HELP ", 7) != 0))
				Fail("metrics: bad comment line %.*s", (int) n, line);
			p += 7;
			if (!MetricNameChar(*p, true))
				Fail("metrics: bad name in %.*s", (int) n, line);
			while (p < le && *p != ' ')
				if (!MetricNameChar(*p++, false))
					Fail("metrics: bad name in %.*s", (int) n, line);
			continue;
		}
		if (!MetricNameChar(*p, true))
			Fail("metrics: bad sample name in %.*s", (int) n, line);
		while (p < le && MetricNameChar(*p, false))
			p++;
		if (p < le && *p == '{')
		{
			for (p++; p < le && *p != '}';)
			{
				while (p < le && MetricNameChar(*p, false))
					p++;
				if (le - p < 2 || p[0] != '=' || p[1] != '"')
					Fail("metrics: bad label in %.*s", (int) n, line);
				for (p += 2; p < le && *p != '"'; p++)
					if (*p == '\\' && (++p >= le || !strchr("\\\"n", *p)))
						Fail("metrics: bad escape in %.*s", (int) n, line);
				if (p >= le)
					Fail("metrics: unterminated label in %.*s", (int) n, line);
				p++;
				if (p < le && *p == ',')
					p++;
			}
			if (p >= le)
				Fail("metrics: unterminated labels in %.*s", (int) n, line);
			p++;
		}
		if (le - p < 2 || *p != ' ' || memchr(p + 1, ' ', le - p - 1))
			Fail("metrics: bad value in %.*s", (int) n, line);
	}
}

/* ---- the model: what the answer must be ---- */

/* "Bearer", any case, spaces, then exactly the expected token */
static bool
ModelTokenOk(const char *auth, const char *expected)
{
	if (auth == NULL || strlen(auth) < 7 || strncasecmp(auth, "bearer ", 7) != 0)
		return false;
	auth += 7;
	while (*auth == ' ')
		auth++;
	return strcmp(auth, expected) == 0;
}

/*
 * Valid UTF-8, decoded to code points: each the shortest form, none a
 * surrogate or above U+10FFFF
 */
static bool
ModelUtf8(const char *s)
{
	const unsigned char *p = (const unsigned char *) s;

	while (*p)
	{
		static const unsigned long shortest[4] = {0, 0x80, 0x800, 0x10000};
		int			n = *p < 0x80 ? 0 : *p >= 0xF0 ? 3 : *p >= 0xE0 ? 2 : *p >= 0xC0 ? 1 : -1;
		unsigned long cp;

		if (n < 0 || *p >= 0xF8)
			return false;
		cp = n == 0 ? *p : *p & (0x3F >> n);
		for (int i = 1; i <= n; i++)
		{
			if ((p[i] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i] & 0x3F);
		}
		if (cp < shortest[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		p += n + 1;
	}
	return true;
}

/* "-"? digits, no overflow, in [min, max] */
static bool
ModelInt(const char *s, long long min, long long max, long long *out)
{
	bool		neg = *s == '-';
	unsigned long long v = 0;

	s += neg;
	if (*s == '\0')
		return false;
	for (; *s; s++)
	{
		if (*s < '0' || *s > '9' || v > (unsigned long long) INT64_MAX / 10)
			return false;
		v = v * 10 + (*s - '0');
		if (v > (unsigned long long) INT64_MAX + neg)
			return false;
	}
	if (neg && v == 0)
		*out = 0;
	else if (neg)
		*out = (long long) (0 - v);
	else
		*out = (long long) v;
	return *out >= min && *out <= max;
}

static void
ModelUrlEncode(AggrBuf *buf, const char *s)
{
	for (; *s; s++)
	{
		if (strchr("-._~", *s) || (*s >= '0' && *s <= '9') ||
			(*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z'))
			AggrBufAppend(buf, s, 1);
		else
			AggrBufPrintf(buf, "%%%02X", (unsigned char) *s);
	}
}

typedef struct Expect
{
	int			status;			/* 0: not answered (the client stalls) */
	bool		db_call;
	bool		may_exhaust;	/* a 503 for --max-buffered is allowed */
	const char *allow;
	bool		www_authenticate;
	bool		retry_after;
	const char *forwarded;		/* body = the database's text */
	long long	limit;
	long long	after;			/* -1: none */
	const char *topic;
	bool		link;
	bool		stream;			/* GET /events/stream opens (stream.c's part) */
	bool		ndjson;			/* POST /publish runs aggr_publish_ndjson */
	const char *body;			/* what reaches the database, inflated */
	size_t		body_len;
} Expect;

/*
 * The body a gzip or deflate request carries, inflated whole with zlib's
 * one-shot view: 0 and *out when it is one complete stream within --max-body;
 * 413 when its output passes --max-body; 400 when it is not one stream.
 */
static int
ModelInflate(const Input *in, const char **out, size_t *out_len)
{
	static char buf[5000 + 1];
	z_stream	z = {0};
	int			rc;

	if (inflateInit2(&z, 15 + 32) != Z_OK)
		Fail("inflateInit2");
	/* the bytes within --max-body are inflated; what goes wrong first wins */
	z.next_in = (Bytef *) in->body;
	z.avail_in = (uInt) (in->body_len < aggr_config.max_body ? in->body_len : aggr_config.max_body);
	z.next_out = (Bytef *) buf;
	z.avail_out = (uInt) aggr_config.max_body + 1;
	rc = inflate(&z, Z_NO_FLUSH);
	/* gzip members one after another (RFC 1952) */
	while (rc == Z_STREAM_END && z.avail_in > 0 && z.avail_out > 0)
	{
		if (inflateReset(&z) != Z_OK)
			Fail("inflateReset");
		rc = inflate(&z, Z_NO_FLUSH);
	}
	*out = buf;
	*out_len = aggr_config.max_body + 1 - z.avail_out;
	inflateEnd(&z);
	if (*out_len > aggr_config.max_body)
		return 413;
	if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
		return 400;
	if (in->body_len > aggr_config.max_body)
		return 413;
	if (rc != Z_STREAM_END || z.avail_in != 0)
		return 400;
	return 0;
}

static AggrRoute
ModelRoute(const char *path)
{
	static const char *const paths[] = {
		[AGGR_ROUTE_PUBLISH] = "/publish",
		[AGGR_ROUTE_EVENTS] = "/events",
		[AGGR_ROUTE_STATS] = "/stats",
		[AGGR_ROUTE_HEALTHZ] = "/healthz",
		[AGGR_ROUTE_METRICS] = "/metrics",
		[AGGR_ROUTE_OPENAPI] = "/openapi.json",
		[AGGR_ROUTE_STREAM] = "/events/stream",
	};

	for (int r = 0; r < AGGR_ROUTE_OTHER; r++)
		if (strcmp(path, paths[r]) == 0)
			return (AggrRoute) r;
	return AGGR_ROUTE_OTHER;
}

/* the answer once the SQL call is made */
static void
ModelDatabase(const Input *in, AggrRoute route, Expect *e)
{
	const Outcome *o = in->outcome;

	e->db_call = true;
	if (route == AGGR_ROUTE_METRICS)
		e->status = 200;
	else if (route == AGGR_ROUTE_HEALTHZ)
	{
		e->status = o->sqlstate || in->variant_a ? 503 : 200;
		e->retry_after = o->connection;
		e->forwarded = o->sqlstate ? NULL : health_json;
	}
	else if (o->sqlstate)
	{
		e->status = o->status;
		e->retry_after = o->retry_after;
	}
	else if (route == AGGR_ROUTE_PUBLISH)
	{
		e->status = in->variant_b ? 500 : in->variant_a ? 202 : 200;
		e->forwarded = in->variant_b ? NULL : in->variant_a ? queued_json : publish_json;
	}
	else
	{
		e->status = 200;
		e->forwarded = route == AGGR_ROUTE_EVENTS ? events_json : stats_json;
		e->link = route == AGGR_ROUTE_EVENTS && in->variant_a && !in->variant_b;
	}
}

static Expect
Model(const Input *in)
{
	Expect		e = {0};
	AggrRoute	route = ModelRoute(in->path);
	bool		post = strcmp(in->method, "POST") == 0;
	bool		get = strcmp(in->method, "GET") == 0 || strcmp(in->method, "HEAD") == 0;

	if (route == AGGR_ROUTE_OTHER)
		return e.status = 404, e;
	if (route == AGGR_ROUTE_PUBLISH ? !post : !get)
	{
		e.allow = route == AGGR_ROUTE_PUBLISH ? "POST" : "GET, HEAD";
		return e.status = 405, e;
	}
	if (route == AGGR_ROUTE_OPENAPI)
	{
		e.forwarded = aggr_openapi_json;	/* the document, no database */
		return e.status = 200, e;
	}
	if (route == AGGR_ROUTE_PUBLISH)
	{
		const char *cl = InputHeader((void *) in, "Content-Length");
		long long	n = -1;

		if (aggr_config.token && !ModelTokenOk(InputHeader((void *) in, "Authorization"), token))
		{
			e.www_authenticate = true;
			return e.status = 401, e;
		}
		const char *te = InputHeader((void *) in, "Transfer-Encoding");

		if (InputHeaderCount((void *) in, "Content-Length") > 1 ||
			(cl && te) ||
			(te && strcasecmp(te, "chunked") != 0) ||
			(cl && !ModelInt(cl, 0, INT64_MAX, &n)))
			return e.status = 400, e;
		if (n > (long long) aggr_config.max_body)
			return e.status = 413, e;
		/* past the headers, a tight budget may refuse at any point */
		{
			const char *enc = InputHeader((void *) in, "Content-Encoding");
			const char *type = InputHeader((void *) in, "Content-Type");

			if (enc && strcasecmp(enc, "identity") != 0 && strcasecmp(enc, "gzip") != 0 &&
				strcasecmp(enc, "x-gzip") != 0 && strcasecmp(enc, "deflate") != 0)
				return e.status = 415, e;
			e.ndjson = type && (strncasecmp(type, "application/x-ndjson", 20) == 0 ?
								strchr("; ", type[20]) != NULL :
								strncasecmp(type, "application/ndjson", 18) == 0 &&
								strchr("; ", type[18]) != NULL);
			e.may_exhaust = !(aggr_config.max_buffered >= 2 * aggr_config.max_body + 4098);
			if (in->stalls)
				return e;		/* never complete: no answer */
			e.body = in->body;
			e.body_len = in->body_len;
			if (enc && strcasecmp(enc, "identity") != 0)
			{
				int			status = ModelInflate(in, &e.body, &e.body_len);

				if (status != 0)
					return e.status = status, e;
			}
			else if (in->body_len > aggr_config.max_body)
				return e.status = 413, e;
		}
	}
	else if ((route == AGGR_ROUTE_EVENTS || route == AGGR_ROUTE_STATS ||
			  route == AGGR_ROUTE_STREAM) && aggr_config.read_token &&
			 !ModelTokenOk(InputHeader((void *) in, "Authorization"), read_token))
	{
		e.www_authenticate = true;
		return e.status = 401, e;
	}
	else if (in->stalls)
		return e;
	if (route == AGGR_ROUTE_STREAM)
	{
		const char *last_id = InputHeader((void *) in, "Last-Event-ID");
		const char *after = InputQuery((void *) in, "after");
		const char *topic = InputQuery((void *) in, "topic");

		e.after = -1;
		if (last_id ? !ModelInt(last_id, 0, INT64_MAX, &e.after) :
			after && !ModelInt(after, 0, INT64_MAX, &e.after))
			return e.status = 400, e;
		if (topic && !ModelUtf8(topic))
			return e.status = 400, e;
		e.topic = topic && *topic ? topic : NULL;
		e.stream = true;
		return e.status = 200, e;
	}
	if (route == AGGR_ROUTE_EVENTS)
	{
		const char *limit = InputQuery((void *) in, "limit");
		const char *after = InputQuery((void *) in, "after");
		const char *topic = InputQuery((void *) in, "topic");

		e.limit = 100;
		e.after = -1;
		if (limit && !ModelInt(limit, 1, 10000, &e.limit))
			return e.status = 400, e;
		if (after && !ModelInt(after, 0, INT64_MAX, &e.after))
			return e.status = 400, e;
		if (topic && !ModelUtf8(topic))
			return e.status = 400, e;
		e.topic = topic && *topic ? topic : NULL;
	}
	ModelDatabase(in, route, &e);
	return e;
}

/* ---- checking one answer ---- */

static void
CheckParameters(const AggrRequest *req, const Expect *e)
{
	if (rec.stmt != (e->ndjson ? AGGR_STMT_PUBLISH_NDJSON : (AggrStmt) req->route))
		Fail("route %d ran statement %d", (int) req->route, (int) rec.stmt);
	if (req->route == AGGR_ROUTE_PUBLISH)
	{
		if (!rec.has_lengths || rec.format0 != 1)
			Fail("the body is not sent as a counted binary parameter");
		if ((size_t) rec.lengths[0] > aggr_config.max_body)
			Fail("the database got %d body bytes, over --max-body %zu",
				 rec.lengths[0], aggr_config.max_body);
		if ((size_t) rec.lengths[0] != e->body_len ||
			memcmp(rec.values[0], e->body, e->body_len) != 0)
			Fail("the body did not reach the database byte for byte "
				 "(%d bytes of %zu)", rec.lengths[0], e->body_len);
	}
	else if (req->route == AGGR_ROUTE_EVENTS)
	{
		char		want[24];

		if ((e->topic == NULL) != (rec.values[0] == NULL) ||
			(e->topic && strcmp(e->topic, rec.values[0]) != 0))
			Fail("topic parameter \"%s\", want \"%s\"",
				 rec.values[0] ? rec.values[0] : "(null)",
				 e->topic ? e->topic : "(null)");
		snprintf(want, sizeof(want), "%lld", e->limit);
		if (rec.values[1] == NULL || strcmp(rec.values[1], want) != 0)
			Fail("limit parameter %s, want %s",
				 rec.values[1] ? rec.values[1] : "(null)", want);
		snprintf(want, sizeof(want), "%lld", e->after);
		if ((e->after < 0) != (rec.values[2] == NULL) ||
			(e->after >= 0 && strcmp(rec.values[2], want) != 0))
			Fail("after parameter %s, want %s",
				 rec.values[2] ? rec.values[2] : "(null)", want);
	}
}

static void
CheckLink(const AggrRequest *req, const Expect *e)
{
	AggrBuf		want;

	if (!e->link)
	{
		if (req->answer.link)
			Fail("unexpected Link: %s", req->answer.link);
		return;
	}
	if (req->answer.link == NULL)
		Fail("a full page without Link");
	AggrBufInit(&want, 64);
	AggrBufAppendStr(&want, "</events?");
	if (e->topic)
	{
		AggrBufAppendStr(&want, "topic=");
		ModelUrlEncode(&want, e->topic);
		AggrBufAppendStr(&want, "&");
	}
	AggrBufPrintf(&want, "limit=%lld&after=%s>; rel=\"next\"", e->limit, next_seq);
	if (strcmp(want.data, req->answer.link) != 0)
		Fail("Link %s, want %s", req->answer.link, want.data);
	AggrBufFree(&want);
}

static void
CheckAnswer(const Input *in, const AggrRequest *req, const Expect *e)
{
	const AggrReply *a = &req->answer;
	bool		exhausted = e->may_exhaust && a->status == 503 && rec.calls == 0 &&
		a->retry_after;

	if (!req->answered)
		Fail("request not answered (want %d)", e->status);
	if (a->status != e->status && !exhausted)
		Fail("%s %s: status %d, want %d", in->method, in->path, a->status,
			 e->status);
	if (rec.calls != (e->db_call && !exhausted ? 1 : 0))
		Fail("%d database calls, want %d", rec.calls, e->db_call && !exhausted);
	if (rec.calls)
		CheckParameters(req, e);
	if ((a->allow == NULL) != (e->allow == NULL) ||
		(a->allow && strcmp(a->allow, e->allow) != 0))
		Fail("Allow %s, want %s", a->allow ? a->allow : "(none)",
			 e->allow ? e->allow : "(none)");
	if (a->www_authenticate != e->www_authenticate)
		Fail("WWW-Authenticate %d, want %d", a->www_authenticate,
			 e->www_authenticate);
	if (a->retry_after != (exhausted || e->retry_after))
		Fail("Retry-After %d, want %d", a->retry_after, e->retry_after);
	CheckLink(req, e);
	if (a->body.len != strlen(a->body.data) && e->forwarded == NULL)
		Fail("NUL byte in a body the sidecar wrote");

	if (req->route == AGGR_ROUTE_METRICS && a->status == 200)
	{
		if (strncmp(a->content_type, "text/plain", 10) != 0)
			Fail("metrics content type %s", a->content_type);
		CheckMetricsText(a->body.data, a->body.len);
		if (!strstr(a->body.data, in->outcome->sqlstate ?
					"aggr_database_up 0\n" : "aggr_database_up 1\n"))
			Fail("aggr_database_up does not say what the database did");
		return;
	}
	if (strcmp(a->content_type, "application/json") != 0)
		Fail("content type %s", a->content_type);
	if (e->forwarded && !exhausted)
	{
		if (a->body.len != strlen(e->forwarded) ||
			memcmp(a->body.data, e->forwarded, a->body.len) != 0)
			Fail("body %s, want the database's %s", a->body.data, e->forwarded);
	}
	else if (req->route == AGGR_ROUTE_HEALTHZ && a->status == 503 && rec.calls)
	{
		if (!JsonObjectWithString(a->body.data, a->body.len, "status"))
			Fail("healthz body is not JSON with a status: %s", a->body.data);
	}
	else if (!JsonObjectWithString(a->body.data, a->body.len, "error"))
		Fail("error body is not JSON {\"error\": string}: %s", a->body.data);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Input		in;
	AggrRequest req;
	AggrRequestIn rin;
	Expect		e;
	bool		opened_stream = false;

	aggr_log_muted = true;
	memset(&in, 0, sizeof(in));
	if (!ParseInput(&in, data, size))
	{
		FreeInput(&in);
		return 0;
	}
	rin = (AggrRequestIn)
	{
		.method = in.method,
			.path = in.path,
			.arg = &in,
			.header = InputHeader,
			.header_count = InputHeaderCount,
			.query = InputQuery,
	};
	current = &in;
	e = Model(&in);

	/* the calls http.c makes, in its order */
	AggrRequestInit(&req);
	AggrRequestStart(&req, &rin);
	if (!req.answered)
	{
		for (size_t off = 0; off < in.body_len; off += in.chunk)
			AggrRequestAppend(&req, in.body + off,
							  in.body_len - off < in.chunk ? in.body_len - off : in.chunk);
		if (!in.stalls && AggrRequestFinish(&req, &rin))
		{
			if (req.route == AGGR_ROUTE_STREAM)
				opened_stream = true;
			else
				AggrRequestRun(&req, Recorder);
		}
	}

	if (e.stream || opened_stream)
	{
		/* http.c hands the stream to stream.c with the parsed parameters */
		if (!e.stream || !opened_stream || req.answered || rec.calls)
			Fail("stream opened %d answered %d calls %d, want a stream %d",
				 opened_stream, req.answered, rec.calls, e.stream);
		if ((e.topic == NULL) != (req.topic == NULL) ||
			(e.topic && strcmp(e.topic, req.topic) != 0) || e.after != req.after)
			Fail("stream topic %s after %lld, want %s after %lld",
				 req.topic ? req.topic : "(null)", (long long) req.after,
				 e.topic ? e.topic : "(null)", e.after);
	}
	else if (e.status == 0 && !(req.answered && req.answer.status == 503 && e.may_exhaust))
	{
		/* the client never finishes its body: nothing answered, nothing run */
		if (req.answered || rec.calls)
			Fail("a stalled request was answered %d or ran SQL",
				 req.answer.status);
	}
	else
		CheckAnswer(&in, &req, &e);
	AggrMetricsRecord(req.route, req.answer.status, 0, req.accepted);

	AggrRequestFree(&req);
	if (AggrRequestBuffered() != 0)
		Fail("%zu body bytes still counted after the request", AggrRequestBuffered());
	ClearRecord();
	FreeInput(&in);
	return 0;
}
