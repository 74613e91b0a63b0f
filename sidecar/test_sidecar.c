/*-------------------------------------------------------------------------
 *
 * test_sidecar.c
 *	  Unit tests of aggr-sidecar's pure parts: output escaping (JSON
 *	  strings, URL query values), strict integer parsing, the SQLSTATE ->
 *	  HTTP table, the error body, the Prometheus rendering, and the
 *	  inflation of compressed bodies however they are split.  No server,
 *	  no database.  `make check` runs it under valgrind; the TAP test
 *	  t/042_sidecar_valgrind.pl runs it too.  Ends with "N passed, N failed".
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <zlib.h>

#include "sidecar.h"

AggrConfig	aggr_config;

static int	passed;
static int	failed;

static void
Check(bool ok, const char *what, const char *got)
{
	if (ok)
		passed++;
	else
	{
		failed++;
		printf("FAIL: %s (got \"%s\")\n", what, got ? got : "(null)");
	}
}

/* escape in with one of the AggrBuf escapers and compare */
static void
CheckEscape(void (*escape) (AggrBuf *, const char *), const char *in,
			const char *want)
{
	AggrBuf		buf;

	AggrBufInit(&buf, 1);
	escape(&buf, in);
	Check(strcmp(buf.data, want) == 0, want, buf.data);
	AggrBufFree(&buf);
}

#define CheckJson(in, want) CheckEscape(AggrBufJsonString, in, want)
#define CheckUrl(in, want) CheckEscape(AggrBufUrlEncode, in, want)

static void
CheckInt(const char *in, bool ok, int64_t want)
{
	int64_t		v = -42;
	bool		got = AggrParseInt64(in, &v);

	Check(got == ok && (!ok || v == want), in, got ? "parsed" : "rejected");
}

static void
CheckStatus(const char *sqlstate, int http, bool retry_after, bool retry_stmt)
{
	const AggrErrorMap *m = AggrSqlstateLookup(sqlstate);
	char		got[64];

	snprintf(got, sizeof(got), "%d %d %d", m->http_status, m->retry_after,
			 m->retry_stmt);
	Check(m->http_status == http && m->retry_after == retry_after &&
		  m->retry_stmt == retry_stmt, sqlstate, got);
}

static void
TestEscaping(void)
{
	CheckJson("", "\"\"");
	CheckJson("plain", "\"plain\"");
	CheckJson("q\"b\\s/", "\"q\\\"b\\\\s/\"");
	CheckJson("\n\r\t\b\x01\x1f", "\"\\n\\r\\t\\b\\u0001\\u001f\"");
	CheckJson("\x7f", "\"\x7f\"");
	CheckJson("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
	CheckJson("a\xff" "b", "\"a\\ufffdb\"");
	CheckJson("\xc0\xaf", "\"\\ufffd\\ufffd\"");	/* overlong '/' */
	CheckJson("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""); /* surrogate */
	CheckJson("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");	/* > U+10FFFF */
	CheckJson("end\xe2\x82", "\"end\\ufffd\\ufffd\"");	/* truncated */

	CheckUrl("orders", "orders");
	CheckUrl("a b/c&d=e?f#g%", "a%20b%2Fc%26d%3De%3Ff%23g%25");
	CheckUrl("-._~", "-._~");
	CheckUrl("\xc3\xa9", "%C3%A9");
}

static void
TestParsing(void)
{
	CheckInt("0", true, 0);
	CheckInt("12", true, 12);
	CheckInt("-12", true, -12);
	CheckInt("9223372036854775807", true, INT64_MAX);
	CheckInt("-9223372036854775808", true, INT64_MIN);
	CheckInt("9223372036854775808", false, 0);
	CheckInt("", false, 0);
	CheckInt("-", false, 0);
	CheckInt("+1", false, 0);
	CheckInt(" 1", false, 0);
	CheckInt("1 ", false, 0);
	CheckInt("1.0", false, 0);
	CheckInt("1e3", false, 0);
	CheckInt("0x10", false, 0);
	CheckInt("abc", false, 0);
}

static void
TestSqlstates(void)
{
	CheckStatus("22P02", 400, false, false);
	CheckStatus("22003", 400, false, false);
	CheckStatus("22P05", 400, false, false);
	CheckStatus("22021", 400, false, false);
	CheckStatus("54001", 400, false, false);
	CheckStatus("22032", 400, false, false);
	CheckStatus("22023", 422, false, false);
	CheckStatus("54000", 413, false, false);
	CheckStatus("53000", 503, true, false);
	CheckStatus("53300", 503, true, false);
	CheckStatus("08006", 503, true, false);
	CheckStatus("08007", 503, true, false);
	CheckStatus("08001", 503, true, false);
	CheckStatus("55000", 503, false, false);
	CheckStatus("42883", 503, false, false);
	CheckStatus("3F000", 503, false, false);
	CheckStatus("40001", 503, true, true);
	CheckStatus("40P01", 503, true, true);
	CheckStatus("57P01", 503, true, false);
	CheckStatus("57P02", 503, true, false);
	CheckStatus("57P03", 503, true, false);
	CheckStatus("22012", 500, false, false);
	CheckStatus("XX000", 500, false, false);
	CheckStatus("", 500, false, false);
}

static void
TestErrorBody(void)
{
	AggrDbError err = {0};
	AggrBuf		buf;

	AggrBufInit(&buf, 16);
	strcpy(err.sqlstate, "22023");
	err.message = strdup("event 3: event_id must be a \"string\"");
	AggrDbErrorJson(&buf, &err);
	Check(strcmp(buf.data, "{\"error\":\"event 3: event_id must be a \\\"string\\\"\","
				 "\"sqlstate\":\"22023\",\"detail\":null}") == 0,
		  "error body without detail", buf.data);
	buf.len = 0;
	err.detail = strdup("line\nbreak");
	err.hint = strdup("fix it");
	AggrDbErrorJson(&buf, &err);
	Check(strstr(buf.data, "\"detail\":\"line\\nbreak\",\"hint\":\"fix it\"}") != NULL,
		  "error body with detail and hint", buf.data);
	Check(!AggrDbIsConnectionError(&err), "22023 is not a connection error", NULL);
	strcpy(err.sqlstate, "08006");
	Check(AggrDbIsConnectionError(&err), "08006 is a connection error", NULL);
	strcpy(err.sqlstate, "57P01");
	Check(AggrDbIsConnectionError(&err), "57P01 is a connection error", NULL);
	AggrDbErrorFree(&err);
	Check(err.message == NULL && err.detail == NULL, "error freed", NULL);
	AggrBufFree(&buf);
}

static void
TestBufferAndMetrics(void)
{
	AggrBuf		buf;
	char		big[5000];

	AggrBufInit(&buf, 1);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	AggrBufPrintf(&buf, "%s|%d", big, 7);
	Check(buf.len == sizeof(big) + 1 && strcmp(buf.data + sizeof(big) - 1, "|7") == 0,
		  "printf grows the buffer", NULL);
	AggrBufFree(&buf);

	AggrMetricsRecord(AGGR_ROUTE_PUBLISH, 200, 3000, 7);
	AggrMetricsRecord(AGGR_ROUTE_PUBLISH, 422, 20000000, -1);
	AggrMetricsRecord(AGGR_ROUTE_OTHER, 999, -5, -1);
	AggrBufInit(&buf, 1);
	AggrMetricsRender(&buf);
	Check(strstr(buf.data, "aggr_http_requests_total{route=\"/publish\",status=\"200\"} 1\n") != NULL,
		  "requests by route and status", buf.data);
	Check(strstr(buf.data, "aggr_http_requests_total{route=\"other\",status=\"0\"} 1\n") != NULL,
		  "an out-of-range status is counted as 0", buf.data);
	Check(strstr(buf.data, "aggr_http_request_duration_seconds_bucket{route=\"/publish\",le=\"0.0025\"} 0\n") != NULL &&
		  strstr(buf.data, "aggr_http_request_duration_seconds_bucket{route=\"/publish\",le=\"0.005\"} 1\n") != NULL &&
		  strstr(buf.data, "aggr_http_request_duration_seconds_bucket{route=\"/publish\",le=\"10\"} 1\n") != NULL &&
		  strstr(buf.data, "aggr_http_request_duration_seconds_bucket{route=\"/publish\",le=\"+Inf\"} 2\n") != NULL,
		  "histogram buckets are cumulative", buf.data);
	Check(strstr(buf.data, "aggr_http_request_duration_seconds_sum{route=\"/publish\"} 20.003000\n") != NULL,
		  "histogram sum", buf.data);
	Check(strstr(buf.data, "aggr_http_events_accepted_total 7\n") != NULL,
		  "accepted events", buf.data);
	Check(strstr(buf.data, "route=\"/stats\"") == NULL, "unused routes are left out",
		  NULL);
	AggrBufFree(&buf);
}

/* ---- compressed bodies, split anywhere ---- */

static const char *
GzipHeader(void *arg, const char *name)
{
	if (strcasecmp(name, "Content-Encoding") == 0)
		return "gzip";
	if (strcasecmp(name, "Content-Length") == 0)
		return arg;
	return NULL;
}

static int
OneHeader(void *arg, const char *name)
{
	return GzipHeader(arg, name) ? 1 : 0;
}

static const char *
NoQuery(void *arg, const char *name)
{
	(void) arg;
	(void) name;
	return NULL;
}

static size_t
Gzip(const char *data, size_t len, int level, char *out, size_t cap)
{
	z_stream	z = {0};

	deflateInit2(&z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
	z.next_in = (Bytef *) data;
	z.avail_in = (uInt) len;
	z.next_out = (Bytef *) out;
	z.avail_out = (uInt) cap;
	deflate(&z, Z_FINISH);
	deflateEnd(&z);
	return cap - z.avail_out;
}

/* one POST /publish of body[0..len) delivered in two chunks, split at cut */
static bool
InflatesWhole(const char *body, size_t len, size_t cut, const char *want, size_t want_len)
{
	char		cl[24];
	AggrRequestIn in = {"POST", "/publish", cl, GzipHeader, OneHeader, NoQuery};
	AggrRequest req;
	bool		ok;

	snprintf(cl, sizeof(cl), "%zu", len);
	AggrRequestInit(&req);
	AggrRequestStart(&req, &in);
	AggrRequestAppend(&req, body, cut);
	AggrRequestAppend(&req, body + cut, len - cut);
	ok = AggrRequestFinish(&req, &in) && req.body_len == want_len &&
		memcmp(req.body, want, want_len) == 0;
	AggrRequestFree(&req);
	return ok;
}

static void
TestInflate(void)
{
	size_t		n = 140 * 1024;
	char	   *plain = malloc(n);
	char	   *packed = malloc(2 * n);
	char	   *two = malloc(4 * n);
	size_t		len;
	size_t		len2;
	int			bad = 0;
	char		got[64];

	for (size_t i = 0; i < n; i++)
		plain[i] = "aggr inflates bodies as they arrive\n"[i % 36];
	aggr_config.max_body = 1024 * 1024;
	aggr_config.max_buffered = 64 * 1024 * 1024;

	/*
	 * Stored (level 0): output and input advance together, so the cuts around
	 * each 64 KB of output are where one inflate() call may take the last
	 * input byte exactly as its output room fills.
	 */
	len = Gzip(plain, n, 0, packed, 2 * n);
	for (size_t k = 1; k <= 2; k++)
		for (size_t cut = k * 65536 - 64; cut < k * 65536 + 128; cut++)
			bad += !InflatesWhole(packed, len, cut, plain, n);
	snprintf(got, sizeof(got), "%d cuts refused", bad);
	Check(bad == 0, "a stored gzip body inflates whole however it is split", got);

	/* exactly --max-body of output is accepted, one byte more is not */
	aggr_config.max_body = 65536;
	len = Gzip(plain, 65536, 6, packed, 2 * n);
	bad = 0;
	for (size_t cut = 0; cut <= len; cut++)
		bad += !InflatesWhole(packed, len, cut, plain, 65536);
	snprintf(got, sizeof(got), "%d cuts refused", bad);
	Check(bad == 0, "an inflated body of exactly --max-body is accepted", got);
	len = Gzip(plain, 65537, 6, packed, 2 * n);
	Check(!InflatesWhole(packed, len, len / 2, plain, 65537), "one byte more is refused", NULL);

	/*
	 * two gzip members, one after the other (RFC 1952), split anywhere near
	 * the seam
	 */
	aggr_config.max_body = 1024 * 1024;
	len = Gzip(plain, 1000, 6, two, 4 * n);
	len2 = Gzip(plain + 1000, 2000, 6, two + len, 4 * n - len);
	bad = 0;
	for (size_t cut = 0; cut <= len + len2; cut++)
		bad += !InflatesWhole(two, len + len2, cut, plain, 3000);
	snprintf(got, sizeof(got), "%d cuts refused", bad);
	Check(bad == 0, "two gzip members inflate as one body", got);
	memcpy(two + len + len2, "junk", 4);
	Check(!InflatesWhole(two, len + len2 + 4, len, plain, 3000), "junk after the last member is refused", NULL);
	free(plain);
	free(packed);
	free(two);
}

int
main(void)
{
	TestEscaping();
	TestParsing();
	TestSqlstates();
	TestErrorBody();
	TestBufferAndMetrics();
	TestInflate();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
