/*
 * test_publisher.c
 *		Unit tests of aggr-publisher, run under valgrind by "make check":
 *		event generation, the retry policy and run scheduling, the JSON field
 *		extractor against hostile answers, JSON string escaping, Redis URLs.
 *
 * Inputs to the extractor are copied into heap blocks of their exact size,
 * so valgrind reports any read past the end.  The last line printed is
 * "publisher unit: N passed, M failed"; the exit status is 1 on failure.
 */
#define _GNU_SOURCE				/* memmem */

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "json.h"
#include "retry.h"
#include "run.h"
#include "send.h"
#include "util.h"

static int	n_passed;
static int	n_failed;

#define CHECK(cond, ...) Check((cond), __LINE__, __VA_ARGS__)

static void Check(bool ok, int line, const char *fmt,...) __attribute__((format(printf, 3, 4)));

static void
Check(bool ok, int line, const char *fmt,...)
{
	va_list		ap;

	if (ok)
	{
		n_passed++;
		return;
	}
	n_failed++;
	fprintf(stdout, "FAIL (line %d): ", line);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
}

/* ---------- generation ---------- */

static AggrGenOptions
GenOptions(long events, double ratio, int batch, uint64_t seed)
{
	AggrGenOptions o = {
		.seed = seed,.events = events,.dup_ratio = ratio,.batch_size = batch,
		.topics = 10,.source = "aggr-publisher",.base_time_ms = 1700000000000LL
	};

	return o;
}

/* Copy the value of "field":"..." out of an event's JSON (our own format). */
static void
StringField(const char *json, size_t len, const char *field, char *out, size_t outlen)
{
	char		pat[64];
	const char *p;
	const char *q;

	snprintf(pat, sizeof(pat), "\"%s\":\"", field);
	out[0] = '\0';
	p = memmem(json, len, pat, strlen(pat));
	if (p == NULL)
		return;
	p += strlen(pat);
	q = memchr(p, '"', (size_t) (json + len - p));
	if (q == NULL || (size_t) (q - p) >= outlen)
		return;
	memcpy(out, p, (size_t) (q - p));
	out[q - p] = '\0';
}

static int
CompareStrings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* "topic/event_id" of every event, read from the bytes; caller frees. */
static char **
EventKeys(const AggrStream *s)
{
	char	  **keys = AggrMalloc(sizeof(char *) * (size_t) s->n_events);

	for (long i = 0; i < s->n_events; i++)
	{
		size_t		len;
		const char *json = AggrGenEventJson(s, i, &len);
		char		topic[64];
		char		id[64];

		StringField(json, len, "topic", topic, sizeof(topic));
		StringField(json, len, "event_id", id, sizeof(id));
		keys[i] = AggrMalloc(strlen(topic) + strlen(id) + 2);
		sprintf(keys[i], "%s/%s", topic, id);
	}
	return keys;
}

static long
CountDistinct(char **keys, long n)
{
	long		distinct = 0;

	qsort(keys, (size_t) n, sizeof(char *), CompareStrings);
	for (long i = 0; i < n; i++)
		if (i == 0 || strcmp(keys[i], keys[i - 1]) != 0)
			distinct++;
	return distinct;
}

static void
FreeKeys(char **keys, long n)
{
	for (long i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
}

/* Counts, byte-identical copies, body framing, well-formed events. */
static void
CheckStream(const AggrStream *s, long events, double ratio, int batch)
{
	long		expect_dup = events - (events - llround(events * ratio));
	long	   *first = AggrMalloc(sizeof(long) * (size_t) s->n_unique);
	char	  **keys;
	bool		identical = true;
	bool		framed = true;
	bool		wellformed = true;
	bool		keys_match = true;
	long		total = 0;

	CHECK(s->n_events == events && s->n_duplicates == expect_dup &&
		  s->n_unique == events - expect_dup,
		  "events %ld ratio %g: %ld unique + %ld duplicates", events, ratio,
		  s->n_unique, s->n_duplicates);

	for (long u = 0; u < s->n_unique; u++)
		first[u] = -1;
	for (long i = 0; i < s->n_events; i++)
	{
		size_t		len;
		size_t		len0;
		const char *json = AggrGenEventJson(s, i, &len);
		uint32_t	u = s->events[i].unique;
		int64_t		dummy;

		if (first[u] < 0)
		{
			char		topic[AGGR_GEN_KEY_LEN];
			char		id[AGGR_GEN_KEY_LEN];
			char		t2[64];
			char		id2[64];

			first[u] = i;
			AggrGenEventKey(s, u, topic, id);
			StringField(json, len, "topic", t2, sizeof(t2));
			StringField(json, len, "event_id", id2, sizeof(id2));
			if (strcmp(topic, t2) != 0 || strcmp(id, id2) != 0)
				keys_match = false;
			if (AggrJsonGetInt(json, len, "payload", &dummy) != AGGR_JSON_WRONG_TYPE)
				wellformed = false;
		}
		else
		{
			const char *orig = AggrGenEventJson(s, first[u], &len0);

			if (len != len0 || memcmp(json, orig, len) != 0)
				identical = false;
		}
	}
	for (int b = 0; b < s->n_batches; b++)
	{
		const AggrBatch *bt = &s->batches[b];
		AggrBuf		expect;

		AggrBufInit(&expect, 0);
		AggrBufAppend(&expect, "[", 1);
		for (long i = bt->first; i < bt->first + bt->count; i++)
		{
			size_t		len;
			const char *json = AggrGenEventJson(s, i, &len);

			if (i > bt->first)
				AggrBufAppend(&expect, ",", 1);
			AggrBufAppend(&expect, json, len);
		}
		AggrBufAppend(&expect, "]", 1);
		if (expect.len != bt->length || memcmp(expect.data, bt->body, bt->length) != 0 ||
			bt->first != total || (b < s->n_batches - 1 && bt->count != batch))
			framed = false;
		total += bt->count;
		AggrBufFree(&expect);
	}
	CHECK(total == events, "batches hold all %ld events (%ld)", events, total);
	CHECK(identical, "events %ld ratio %g: re-sends are byte-identical", events, ratio);
	CHECK(framed, "events %ld ratio %g batch %d: bodies are the events in order", events, ratio, batch);
	CHECK(wellformed, "events %ld ratio %g: every event is a well-formed object", events, ratio);
	CHECK(keys_match, "events %ld ratio %g: bytes carry AggrGenEventKey's keys", events, ratio);

	keys = EventKeys(s);
	CHECK(CountDistinct(keys, s->n_events) == s->n_unique,
		  "events %ld ratio %g: %ld distinct (topic, event_id) in the bytes", events, ratio, s->n_unique);
	FreeKeys(keys, s->n_events);
	free(first);
}

static void
TestGenerationCounts(void)
{
	static const long sizes[] = {1, 2, 3, 7, 10, 99, 500, 1000, 1001, 20000};
	static const double ratios[] = {0, 0.01, 0.1, 0.25, 0.35, 0.5, 0.66, 0.9, 0.999};
	static const int batches[] = {1, 7, 500};

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		for (size_t j = 0; j < sizeof(ratios) / sizeof(ratios[0]); j++)
		{
			long		n = sizes[i];
			double		r = ratios[j];
			int			batch = batches[(i + j) % 3];
			AggrGenOptions o = GenOptions(n, r, batch, 42 + i);
			AggrStream	s;
			char		err[256];
			bool		built = AggrGenBuild(&o, &s, err, sizeof(err));

			if (llround(n * r) >= n)
			{
				CHECK(!built && strstr(err, "no unique event") != NULL,
					  "events %ld ratio %g is refused (%s)", n, r, err);
				continue;
			}
			CHECK(built, "events %ld ratio %g builds: %s", n, r, built ? "" : err);
			if (!built)
				continue;
			CheckStream(&s, n, r, batch);
			AggrGenFree(&s);
		}
}

static void
TestGenerationDemo(void)
{
	AggrGenOptions o = GenOptions(20000, 0.35, 500, 20250101);
	AggrStream	s;
	char		err[256];
	bool		topic_seen[10] = {false};
	bool		all_topics = true;

	CHECK(AggrGenBuild(&o, &s, err, sizeof(err)), "demo stream builds");
	CHECK(s.n_unique == 13000 && s.n_duplicates == 7000, "demo: 13000 unique + 7000 duplicates");
	CHECK(s.n_batches == 40, "demo: 40 batches of 500 (%d)", s.n_batches);
	for (long i = 0; i < s.n_events; i++)
	{
		char		topic[AGGR_GEN_KEY_LEN];
		char		id[AGGR_GEN_KEY_LEN];
		int			t;

		AggrGenEventKey(&s, s.events[i].unique, topic, id);
		if (sscanf(topic, "topic_%d", &t) == 1 && t >= 0 && t < 10)
			topic_seen[t] = true;
		else
			all_topics = false;
	}
	for (int t = 0; t < 10; t++)
		all_topics = all_topics && topic_seen[t];
	CHECK(all_topics, "demo: topics are topic_0..topic_9, all used");
	CheckStream(&s, 20000, 0.35, 500);
	AggrGenFree(&s);
}

static void
TestGenerationSeeds(void)
{
	AggrGenOptions o = GenOptions(1000, 0.35, 100, 7);
	AggrStream	a;
	AggrStream	b;
	AggrStream	c;
	char		err[256];
	bool		same = true;
	char	  **ka;
	char	  **kc;
	long		common = 0;

	AggrGenBuild(&o, &a, err, sizeof(err));
	AggrGenBuild(&o, &b, err, sizeof(err));
	o.seed = 8;
	AggrGenBuild(&o, &c, err, sizeof(err));
	for (int i = 0; i < a.n_batches; i++)
		if (a.batches[i].length != b.batches[i].length ||
			memcmp(a.batches[i].body, b.batches[i].body, a.batches[i].length) != 0)
			same = false;
	CHECK(same, "same seed, same bytes");
	CHECK(memcmp(a.batches[0].body, c.batches[0].body, 64) != 0, "another seed, other bytes");

	/* no (topic, event_id) of seed 7 appears with seed 8 */
	ka = EventKeys(&a);
	kc = EventKeys(&c);
	qsort(kc, (size_t) c.n_events, sizeof(char *), CompareStrings);
	for (long i = 0; i < a.n_events; i++)
		if (bsearch(&ka[i], kc, (size_t) c.n_events, sizeof(char *), CompareStrings))
			common++;
	CHECK(common == 0, "seeds 7 and 8 share no event (%ld shared)", common);
	FreeKeys(ka, a.n_events);
	FreeKeys(kc, c.n_events);
	AggrGenFree(&a);
	AggrGenFree(&b);
	AggrGenFree(&c);
}

static void
TestGenerationFormat(void)
{
	AggrGenOptions o = GenOptions(3, 0, 3, 1);
	AggrStream	s;
	char		err[256];
	char		ts[64];
	char		src[200];
	size_t		len;
	const char *json;
	const char *want_source = "\"source\":\"we\\\"ird\\\\ source\\n\\u0001\\ufffd\"";
	int64_t		v;
	bool		ok;

	o.base_time_ms = 0;
	o.source = "we\"ird\\ source\n\x01\xff";
	ok = AggrGenBuild(&o, &s, err, sizeof(err));
	CHECK(ok, "a source needing escapes builds");
	for (long i = 0; ok && i < s.n_events; i++)
	{
		json = AggrGenEventJson(&s, i, &len);
		CHECK(AggrJsonGetInt(json, len, "source", &v) == AGGR_JSON_WRONG_TYPE,
			  "event with an escaped source is well-formed: %.*s", (int) len, json);
		if (s.events[i].unique == 0)
		{
			StringField(json, len, "timestamp", ts, sizeof(ts));
			CHECK(strcmp(ts, "1969-12-31T23:59:59.998Z") == 0, "before the epoch too: %s", ts);
		}
		if (s.events[i].unique == 2)
		{
			StringField(json, len, "timestamp", ts, sizeof(ts));
			CHECK(strcmp(ts, "1970-01-01T00:00:00.000Z") == 0, "ISO-8601 UTC timestamp: %s", ts);
		}
		StringField(json, len, "event_id", src, sizeof(src));
		CHECK(strlen(src) == 36 && src[8] == '-' && src[13] == '-' && src[18] == '-' && src[23] == '-',
			  "event_id is UUID-shaped: %s", src);
		CHECK(memmem(json, len, want_source, strlen(want_source)) != NULL,
			  "source escaped: %.*s", (int) len, json);
	}
	if (ok)
		AggrGenFree(&s);

	/* option checks */
	{
		struct
		{
			long		events;
			double		ratio;
			int			batch;
			int			topics;
			const char *source;
		}			bad[] = {
			{0, 0.35, 500, 10, "s"}, {-1, 0.35, 500, 10, "s"}, {10, 1.0, 500, 10, "s"},
			{10, -0.1, 500, 10, "s"}, {10, NAN, 500, 10, "s"}, {3, 0.9, 500, 10, "s"},
			{10, 0.35, 0, 10, "s"}, {10, 0.35, AGGR_GEN_MAX_BATCH + 1, 10, "s"},
			{10, 0.35, 500, 0, "s"}, {10, 0.35, 500, 10, ""}, {10, 0.35, 500, 10, NULL},
			{AGGR_GEN_MAX_EVENTS + 1, 0.35, 500, 10, "s"}
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		{
			AggrGenOptions b = GenOptions(bad[i].events, bad[i].ratio, bad[i].batch, 1);

			b.topics = bad[i].topics;
			b.source = bad[i].source;
			err[0] = '\0';
			CHECK(!AggrGenBuild(&b, &s, err, sizeof(err)) && err[0] != '\0',
				  "invalid options %zu refused with a message (%s)", i, err);
		}
	}
}

/* ---------- retry policy ---------- */

static void
TestRetryDelays(void)
{
	AggrRetryPolicy p = {100, 5000, 60000};
	uint64_t	rng = 1;
	double		prev_mean = 0;

	for (int retry = 1; retry <= 12; retry++)
	{
		double		nominal = fmin(100 * pow(2, retry - 1), 5000);
		double		lo = 1e9;
		double		hi = 0;
		double		sum = 0;

		for (int k = 0; k < 2000; k++)
		{
			double		d = AggrRetryDelay(&p, retry, 0, -1, &rng);

			lo = fmin(lo, d);
			hi = fmax(hi, d);
			sum += d;
		}
		CHECK(lo >= nominal / 2 && hi <= nominal,
			  "retry %d: jitter within [%g, %g] (saw %g..%g)", retry, nominal / 2, nominal, lo, hi);
		CHECK(hi - lo > nominal / 4, "retry %d: jitter actually varies (%g..%g)", retry, lo, hi);
		CHECK(hi <= 5000, "retry %d: capped at 5000 ms", retry);
		if (nominal < 5000)
			CHECK(sum / 2000 > prev_mean * 1.5, "retry %d: backoff grows", retry);
		prev_mean = sum / 2000;
	}
	CHECK(AggrRetryDelay(&p, 1000000, 0, -1, &rng) <= 5000, "a huge retry count stays capped");

	CHECK(AggrRetryDelay(&p, 1, 0, 3000, &rng) == 3000, "Retry-After above the backoff is waited");
	CHECK(AggrRetryDelay(&p, 1, 0, 20000, &rng) == 20000, "Retry-After above the cap is waited");
	{
		double		d = AggrRetryDelay(&p, 6, 0, 10, &rng);

		CHECK(d >= 1600 && d <= 3200, "a short Retry-After does not shorten the backoff (%g)", d);
	}
	CHECK(AggrRetryDelay(&p, 1, 59990, -1, &rng) < 0, "no retry past the give-up bound");
	CHECK(AggrRetryDelay(&p, 1, 0, 61000, &rng) < 0, "a Retry-After past the bound gives up");
	CHECK(AggrRetryDelay(&p, 1, 1000, -1, &rng) > 0, "retry within the bound");
	p.give_up_ms = 0;
	CHECK(AggrRetryDelay(&p, 1, 0, -1, &rng) < 0, "--max-retry-time 0: never retry");
}

static void
TestRetryOutcomes(void)
{
	AggrRetryPolicy p = {100, 1000, 10000};
	uint64_t	rng = 5;
	AggrBatchState st;
	double		now = 1000;
	double		d;
	int			steps = 0;

	/* keeps failing: retried with backoff, then given up within the bound */
	memset(&st, 0, sizeof(st));
	while ((d = AggrRetryRecord(&st, &p, AGGR_ATTEMPT_NOT_APPLIED, now, -1, &rng)) >= 0 && steps < 1000)
	{
		CHECK(st.due_ms == now + d, "due time is now + delay");
		now += d;
		steps++;
	}
	CHECK(st.outcome == AGGR_OUTCOME_FAILED, "503s until the bound: failed (%s)", AggrOutcomeName(st.outcome));
	CHECK(now - 1000 <= 10000 && st.attempts > 5, "gave up within the bound after %d attempts (%.0f ms)",
		  st.attempts, now - 1000);
	CHECK(strstr(st.last_error, "gave up") != NULL, "the reason says it gave up: %s", st.last_error);

	/* one attempt of unknown outcome makes a give-up unknown */
	memset(&st, 0, sizeof(st));
	now = 1000;
	AggrRetryRecord(&st, &p, AGGR_ATTEMPT_MAYBE_APPLIED, now, -1, &rng);
	while (AggrRetryRecord(&st, &p, AGGR_ATTEMPT_NOT_APPLIED, now += 1000, -1, &rng) >= 0)
		;
	CHECK(st.outcome == AGGR_OUTCOME_UNKNOWN, "a dropped connection then 503s: unknown");

	memset(&st, 0, sizeof(st));
	CHECK(AggrRetryRecord(&st, &p, AGGR_ATTEMPT_NOT_APPLIED, 1000, 2000, &rng) == 2000 &&
		  st.due_ms == 3000, "Retry-After sets the due time");
	CHECK(AggrRetryRecord(&st, &p, AGGR_ATTEMPT_ACKED, 3000, -1, &rng) < 0 &&
		  st.outcome == AGGR_OUTCOME_ACKED && st.attempts == 2, "acked on the retry");

	memset(&st, 0, sizeof(st));
	CHECK(AggrRetryRecord(&st, &p, AGGR_ATTEMPT_REJECTED, 1000, -1, &rng) < 0 &&
		  st.outcome == AGGR_OUTCOME_FAILED && st.attempts == 1, "a 4xx is not retried: failed");
	memset(&st, 0, sizeof(st));
	AggrRetryRecord(&st, &p, AGGR_ATTEMPT_MAYBE_APPLIED, 1000, -1, &rng);
	AggrRetryRecord(&st, &p, AGGR_ATTEMPT_REJECTED, 2000, -1, &rng);
	CHECK(st.outcome == AGGR_OUTCOME_UNKNOWN, "a 4xx after an unknown attempt: unknown");

	/* classification */
	CHECK(AggrClassifyHttp(200, false, true, false) == AGGR_ATTEMPT_ACKED, "200 acked");
	CHECK(AggrClassifyHttp(202, false, true, false) == AGGR_ATTEMPT_ACKED, "202 acked");
	CHECK(AggrClassifyHttp(503, false, true, false) == AGGR_ATTEMPT_NOT_APPLIED, "503 retried, not applied");
	CHECK(AggrClassifyHttp(429, false, true, false) == AGGR_ATTEMPT_NOT_APPLIED, "429 retried, not applied");
	CHECK(AggrClassifyHttp(500, false, true, false) == AGGR_ATTEMPT_MAYBE_APPLIED, "500 retried, maybe applied");
	CHECK(AggrClassifyHttp(502, false, true, false) == AGGR_ATTEMPT_MAYBE_APPLIED, "502 retried");
	CHECK(AggrClassifyHttp(504, false, true, false) == AGGR_ATTEMPT_MAYBE_APPLIED, "504 retried");
	CHECK(AggrClassifyHttp(400, false, true, false) == AGGR_ATTEMPT_REJECTED, "400 rejected");
	CHECK(AggrClassifyHttp(413, false, true, false) == AGGR_ATTEMPT_REJECTED, "413 rejected");
	CHECK(AggrClassifyHttp(422, false, true, false) == AGGR_ATTEMPT_REJECTED, "422 rejected");
	CHECK(AggrClassifyHttp(401, false, true, false) == AGGR_ATTEMPT_REJECTED, "401 rejected");
	CHECK(AggrClassifyHttp(301, false, true, false) == AGGR_ATTEMPT_REJECTED, "301 rejected");
	CHECK(AggrClassifyHttp(0, true, false, false) == AGGR_ATTEMPT_NOT_APPLIED, "refused connection: not applied");
	CHECK(AggrClassifyHttp(0, true, true, false) == AGGR_ATTEMPT_MAYBE_APPLIED, "dropped after the body: unknown");
	CHECK(AggrClassifyHttp(503, false, true, true) == AGGR_ATTEMPT_MAYBE_APPLIED,
		  "503 saying the outcome is unknown: maybe applied");
	{
		const char *lost = "{\"error\":\"lost\",\"sqlstate\":\"08006\",\"detail\":null,\"outcome\":\"unknown\"}";
		const char *down = "{\"error\":\"database unreachable\",\"sqlstate\":\"08006\",\"detail\":null}";
		const char *nested = "{\"error\":{\"outcome\":\"unknown\"}}";

		CHECK(AggrJsonFieldIs(lost, strlen(lost), "outcome", "\"unknown\""), "outcome unknown is read");
		CHECK(!AggrJsonFieldIs(down, strlen(down), "outcome", "\"unknown\""), "no outcome field: not unknown");
		CHECK(!AggrJsonFieldIs(nested, strlen(nested), "outcome", "\"unknown\""), "only the top level counts");
		CHECK(!AggrJsonFieldIs(lost, strlen(lost) - 1, "outcome", "\"unknown\""), "a cut answer is not read");
	}
	CHECK(AggrClassifyRedisError("LOADING Redis is loading") == AGGR_ATTEMPT_NOT_APPLIED, "LOADING retried");
	CHECK(AggrClassifyRedisError("OOM command not allowed") == AGGR_ATTEMPT_NOT_APPLIED, "OOM retried");
	CHECK(AggrClassifyRedisError("BUSY") == AGGR_ATTEMPT_NOT_APPLIED, "BUSY retried");
	CHECK(AggrClassifyRedisError("WRONGTYPE Operation") == AGGR_ATTEMPT_REJECTED, "WRONGTYPE rejected");
	CHECK(AggrClassifyRedisError("LOADINGX") == AGGR_ATTEMPT_REJECTED, "LOADINGX rejected");
	CHECK(AggrClassifyRedisError("ERR unknown") == AGGR_ATTEMPT_REJECTED, "ERR rejected");
	CHECK(AggrClassifyRedisError(NULL) == AGGR_ATTEMPT_REJECTED, "no message: rejected");
}

/* A run over stream s with the given give-up bound. */
static void
StartRun(AggrRun *run, const AggrStream *s, double give_up_ms, volatile sig_atomic_t *stop)
{
	memset(run, 0, sizeof(*run));
	run->stream = s;
	run->policy.base_ms = 100;
	run->policy.cap_ms = 5000;
	run->policy.give_up_ms = give_up_ms;
	run->concurrency = 3;
	run->interrupted = stop;
	AggrRunInit(run, 3);
}

/* --rate: new batches start no sooner than their share of the rate allows */
static void
TestRunPacing(void)
{
	AggrGenOptions o = GenOptions(30, 0, 10, 3);	/* 3 batches of 10 */
	AggrStream	s;
	AggrRun		run;
	volatile sig_atomic_t stop = 0;
	char		err[256];
	double		wait;

	AggrGenBuild(&o, &s, err, sizeof(err));
	StartRun(&run, &s, 60000, &stop);
	run.rate_per_s = 100;		/* 10 events = 100 ms per batch */
	run.start_ms = 1000;
	CHECK(AggrRunNext(&run, 1000, &wait) == 0, "the first batch goes at once");
	CHECK(AggrRunNext(&run, 1000, &wait) < 0 && wait > 99 && wait <= 100,
		  "the second waits its 100 ms (wait %g)", wait);
	CHECK(AggrRunNext(&run, 1100, &wait) == 1, "and goes when due");
	CHECK(AggrRunNext(&run, 1150, &wait) < 0 && wait > 49 && wait <= 50,
		  "the third waits 50 ms more (wait %g)", wait);
	CHECK(AggrRunNext(&run, 1200, &wait) == 2, "and goes when due");
	AggrRunFree(&run);
	AggrGenFree(&s);
}

static void
TestRunScheduling(void)
{
	AggrGenOptions o = GenOptions(30, 0.35, 10, 3);
	AggrStream	s;
	AggrRun		run;
	AggrAnswer	answer = {10, 7, 3};
	volatile sig_atomic_t stop = 0;
	char		err[256];
	double		wait;
	int			b0,
				b1,
				b2;

	AggrGenBuild(&o, &s, err, sizeof(err));
	StartRun(&run, &s, 60000, &stop);

	b0 = AggrRunNext(&run, 1000, &wait);
	b1 = AggrRunNext(&run, 1000, &wait);
	b2 = AggrRunNext(&run, 1000, &wait);
	CHECK(b0 == 0 && b1 == 1 && b2 == 2, "batches go in order (%d %d %d)", b0, b1, b2);
	CHECK(AggrRunNext(&run, 1000, &wait) < 0 && wait < 0, "nothing more to start");
	AggrRunStarted(&run, 0);
	AggrRunStarted(&run, 1);
	AggrRunStarted(&run, 2);
	AggrRunFinished(&run, 0, AGGR_ATTEMPT_ACKED, 1010, 10, -1, NULL, &answer);
	AggrRunFinished(&run, 1, AGGR_ATTEMPT_NOT_APPLIED, 1020, 20, 1000, "HTTP 503", NULL);
	CHECK(AggrRunNext(&run, 1500, &wait) < 0 && wait > 400 && wait <= 520,
		  "Retry-After holds every request back (wait %g)", wait);
	CHECK(AggrRunNext(&run, 2020, &wait) == 1, "the retry goes once due");
	AggrRunStarted(&run, 1);
	CHECK(run.retries == 1 && run.requests == 4, "retries and requests counted");
	AggrRunFinished(&run, 1, AGGR_ATTEMPT_ACKED, 2050, 30, -1, NULL, &answer);
	CHECK(!AggrRunDone(&run), "not done while a batch is in flight");
	AggrRunFinished(&run, 2, AGGR_ATTEMPT_ACKED, 2060, 40, -1, NULL, NULL);
	CHECK(AggrRunDone(&run), "done when every batch is settled");
	CHECK(run.events_acked == 30 && run.accepted == 30, "acked events and accepted (%ld, %ld)",
		  run.events_acked, run.accepted);
	CHECK(run.answers_with_counts == 2 && run.server_unique == 14 && run.answers_without_accepted == 1,
		  "answer counts summed");
	CHECK(AggrRunLatency(&run, 50) == 20 && AggrRunLatency(&run, 99) == 40 &&
		  AggrRunLatency(&run, 100) == 40, "latency percentiles, nearest rank");
	CHECK(AggrRunEventsWith(&run, AGGR_OUTCOME_ACKED) == 30, "all events acked");
	AggrRunFree(&run);

	/* an interrupt settles what never went and what waits for a retry */
	StartRun(&run, &s, 60000, &stop);
	b0 = AggrRunNext(&run, 1000, &wait);
	AggrRunStarted(&run, b0);
	stop = 1;
	CHECK(AggrRunNext(&run, 1000, &wait) < 0, "no new request after an interrupt");
	CHECK(!AggrRunDone(&run), "an interrupted run waits for its request in flight");
	AggrRunFinished(&run, b0, AGGR_ATTEMPT_MAYBE_APPLIED, 1100, 100, -1, "connection lost", NULL);
	CHECK(AggrRunDone(&run), "then it is done");
	CHECK(run.state[0].outcome == AGGR_OUTCOME_UNKNOWN && run.state[1].outcome == AGGR_OUTCOME_FAILED &&
		  strstr(run.state[1].last_error, "interrupted") != NULL,
		  "in doubt: unknown; never sent: failed (%s)", run.state[1].last_error);
	AggrRunFree(&run);

	/* a server down for the whole bound stops the run; one bad batch does not */
	stop = 0;
	StartRun(&run, &s, 1000, &stop);
	{
		double		now = 1000;
		int			b;
		int			tries = 0;

		while ((b = AggrRunNext(&run, now, &wait)) == 0 && tries++ < 100)
		{
			AggrRunStarted(&run, b);
			AggrRunFinished(&run, b, AGGR_ATTEMPT_NOT_APPLIED, now, 1, -1, "HTTP 503", NULL);
			now = run.state[0].due_ms > now ? run.state[0].due_ms : now + 1;
		}
		CHECK(b < 0 && run.state[0].outcome == AGGR_OUTCOME_FAILED && run.stopping != NULL,
			  "batch 0 gave up with the server down all along: the run stops (next %d)", b);
		CHECK(AggrRunDone(&run) && run.state[1].outcome == AGGR_OUTCOME_FAILED &&
			  strstr(run.state[1].last_error, "whole retry bound") != NULL,
			  "unsent batches fail at once (%s)", run.state[1].last_error);
	}
	AggrRunFree(&run);

	StartRun(&run, &s, 1000, &stop);
	{
		double		now = 1000;
		int			b = AggrRunNext(&run, now, &wait);

		AggrRunStarted(&run, b);
		AggrRunFinished(&run, b, AGGR_ATTEMPT_MAYBE_APPLIED, now, 1, -1, "HTTP 500", NULL);
		now = run.state[0].due_ms;
		b = AggrRunNext(&run, now, &wait);
		CHECK(b == 0, "the retry of batch 0 goes first");
		AggrRunStarted(&run, b);
		b = AggrRunNext(&run, now, &wait);
		AggrRunStarted(&run, b);
		AggrRunFinished(&run, b, AGGR_ATTEMPT_ACKED, now + 1, 1, -1, NULL, NULL);
		AggrRunFinished(&run, 0, AGGR_ATTEMPT_MAYBE_APPLIED, now + 2000, 1, -1, "HTTP 500", NULL);
		CHECK(run.state[0].outcome == AGGR_OUTCOME_UNKNOWN && run.stopping == NULL,
			  "a batch giving up while others succeed does not stop the run");
		b = AggrRunNext(&run, now + 2000, &wait);
		CHECK(b == 2, "the run goes on with batch 2 (%d)", b);
	}
	AggrRunFree(&run);
	AggrGenFree(&s);
}

/* ---------- JSON field extractor ---------- */

/* Look key up in a heap copy of exactly len bytes, so valgrind sees over-reads. */
static AggrJsonResult
Get(const char *doc, size_t len, const char *key, int64_t *v)
{
	char	   *copy = AggrMalloc(len);
	AggrJsonResult r;

	memcpy(copy, doc, len);
	*v = -424242;
	r = AggrJsonGetInt(copy, len, key, v);
	free(copy);
	return r;
}

#define EXPECT_INT(doc, key, want) \
	do { int64_t v_; AggrJsonResult r_ = Get(doc, strlen(doc), key, &v_); \
		CHECK(r_ == AGGR_JSON_OK && v_ == (want), "%s in %s: %d %" PRId64, key, doc, (int) r_, v_); } while (0)
#define EXPECT_RESULT(doc, key, want) \
	do { int64_t v_; AggrJsonResult r_ = Get(doc, strlen(doc), key, &v_); \
		CHECK(r_ == (want), "%s in %s: got %d, want %d", key, doc, (int) r_, (int) (want)); } while (0)

static void
TestJsonExtract(void)
{
	EXPECT_INT("{\"accepted\":5}", "accepted", 5);
	EXPECT_INT("{\"accepted\":500,\"worker_count\":2,\"unique\":325,\"duplicates\":175}", "unique", 325);
	EXPECT_INT(" \t\r\n{ \"accepted\" : 7 , \"x\":1 } \n", "accepted", 7);
	EXPECT_INT("{\"a\":{\"accepted\":1},\"accepted\":2}", "accepted", 2);
	EXPECT_INT("{\"topics\":[{\"topic\":\"t\",\"count\":3}],\"received\":9}", "received", 9);
	EXPECT_INT("{\"received\":0}", "received", 0);
	EXPECT_INT("{\"received\":-3}", "received", -3);
	EXPECT_INT("{\"accepted\":1,\"accepted\":2}", "accepted", 1);
	EXPECT_INT("{\"acc\\u0065pted\":8}", "accepted", 8);
	EXPECT_INT("{\"\\u0061\":3}", "a", 3);
	EXPECT_INT("{\"x\":\"\\\"accepted\\\":5\",\"accepted\":6}", "accepted", 6);
	EXPECT_INT("{\"x\":\"\\ud83d\\ude00\\ud800\",\"accepted\":6}", "accepted", 6);
	EXPECT_INT("{\"queue_depth\":9223372036854775807}", "queue_depth", INT64_MAX);
	EXPECT_INT("{\"queue_depth\":-9223372036854775808}", "queue_depth", INT64_MIN);
	EXPECT_INT("{\"x\":[1,2.5e-3,-0,true,false,null,\"s\",{},[]],\"status\":1}", "status", 1);

	/* absent: nested, inside strings, near misses */
	EXPECT_RESULT("{}", "accepted", AGGR_JSON_ABSENT);
	EXPECT_RESULT("{\"x\":{\"accepted\":5}}", "accepted", AGGR_JSON_ABSENT);
	EXPECT_RESULT("{\"topics\":[{\"accepted\":1}]}", "accepted", AGGR_JSON_ABSENT);
	EXPECT_RESULT("{\"error\":\"\\\"accepted\\\":5\"}", "accepted", AGGR_JSON_ABSENT);
	EXPECT_RESULT("{\"accepted \":5}", "accepted", AGGR_JSON_ABSENT);
	EXPECT_RESULT("{\"Accepted\":5}", "accepted", AGGR_JSON_ABSENT);
	EXPECT_RESULT("{\"accepte\":5}", "accepted", AGGR_JSON_ABSENT);
	EXPECT_RESULT("{\"accepted\\u0000\":5}", "accepted", AGGR_JSON_ABSENT);
	EXPECT_RESULT("{\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\":5}",
				  "accepted", AGGR_JSON_ABSENT);

	/* present but not an int64 */
	EXPECT_RESULT("{\"accepted\":\"5\"}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":5.0}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":5e2}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":1E400}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":null}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":true}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":[5]}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":{\"v\":5}}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":9223372036854775808}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":-9223372036854775809}", "accepted", AGGR_JSON_WRONG_TYPE);
	EXPECT_RESULT("{\"accepted\":99999999999999999999999999999}", "accepted", AGGR_JSON_WRONG_TYPE);

	/* malformed documents, even when the key is there */
	{
		static const char *const bad[] = {
			"", " ", "{", "}", "[]", "[{\"accepted\":5}]", "5", "\"accepted\"", "null",
			"{\"accepted\":5", "{\"accepted\":5}x", "{\"accepted\":5}}", "{\"accepted\":5,}",
			"{,\"accepted\":5}", "{\"accepted\":05}", "{\"accepted\":-}", "{\"accepted\":+5}",
			"{\"accepted\":-05}", "{\"accepted\":.5}", "{\"accepted\":5.}", "{\"accepted\":5e}",
			"{\"accepted\":0x10}", "{\"accepted\":NaN}", "{\"accepted\":Infinity}",
			"{'accepted':5}", "{accepted:5}", "{\"accepted\" 5}", "{\"accepted\"::5}",
			"{\"accepted\":5 6}", "{\"accepted\":}", "{\"accepted\"}", "{\"accepted\":5,\"x\"}",
			"{\"accepted\":tru}", "{\"accepted\":nul}", "{\"accepted\":truex}",
			"{\"x\":\"unterminated}", "{\"x\":\"a\nb\",\"accepted\":5}",
			"{\"x\":\"\\x\",\"accepted\":5}", "{\"x\":\"\\u12\",\"accepted\":5}",
			"{\"x\":\"\\u12g4\",\"accepted\":5}", "{\"x\":\"\\", "{\"x\":[1,2,\"accepted\":5}",
			"{\"x\":[1,2},\"accepted\":5}", "{\"x\":{\"a\":1],\"accepted\":5}",
			"{\"x\":[1 2],\"accepted\":5}", "{\"x\":{\"a\" 1},\"accepted\":5}",
			"{\"x\":{1:2},\"accepted\":5}", "\xef\xbb\xbf{\"accepted\":5}",
			"{\"accepted\":5}\x01", "{\"x\":[", "{\"x\":{\"y\":"
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
			EXPECT_RESULT(bad[i], "accepted", AGGR_JSON_MALFORMED);
	}

	/* NUL bytes inside the given length */
	{
		int64_t		v;

		CHECK(Get("{\"accepted\":5}\0", 15, "accepted", &v) == AGGR_JSON_MALFORMED, "trailing NUL");
		CHECK(Get("{\"accepted\":5\0}", 15, "accepted", &v) == AGGR_JSON_MALFORMED, "NUL before brace");
		CHECK(Get("{\"a\0\":1,\"accepted\":5}", 21, "accepted", &v) == AGGR_JSON_MALFORMED, "NUL in a key");
		CHECK(Get("{\"accepted\":5}", 13, "accepted", &v) == AGGR_JSON_MALFORMED, "a length cutting the brace");
		CHECK(Get("{\"accepted\":5}", 11, "accepted", &v) == AGGR_JSON_MALFORMED, "a length cutting the key");
		CHECK(AggrJsonGetInt(NULL, 0, "accepted", &v) == AGGR_JSON_MALFORMED, "NULL document");
	}

	/* nesting: bounded, no recursion blow-up */
	{
		AggrBuf		doc;
		int64_t		v;

		AggrBufInit(&doc, 0);
		AggrBufAppendStr(&doc, "{\"x\":");
		for (int i = 0; i < AGGR_JSON_MAX_DEPTH - 1; i++)
			AggrBufAppendStr(&doc, "[");
		for (int i = 0; i < AGGR_JSON_MAX_DEPTH - 1; i++)
			AggrBufAppendStr(&doc, "]");
		AggrBufAppendStr(&doc, ",\"accepted\":4}");
		CHECK(Get(doc.data, doc.len, "accepted", &v) == AGGR_JSON_OK && v == 4,
			  "nesting up to the limit is fine");
		AggrBufReset(&doc);
		AggrBufAppendStr(&doc, "{\"x\":");
		for (int i = 0; i < AGGR_JSON_MAX_DEPTH; i++)
			AggrBufAppendStr(&doc, "[");
		for (int i = 0; i < AGGR_JSON_MAX_DEPTH; i++)
			AggrBufAppendStr(&doc, "]");
		AggrBufAppendStr(&doc, ",\"accepted\":4}");
		CHECK(Get(doc.data, doc.len, "accepted", &v) == AGGR_JSON_MALFORMED,
			  "nesting past the limit is refused");
		AggrBufReset(&doc);
		AggrBufAppendStr(&doc, "{\"accepted\":1,\"x\":");
		for (int i = 0; i < 200000; i++)
			AggrBufAppend(&doc, i % 2 ? "{\"a\":" : "[", i % 2 ? 5 : 1);
		CHECK(Get(doc.data, doc.len, "accepted", &v) == AGGR_JSON_MALFORMED,
			  "200000 open brackets: malformed, no crash");

		/* a big well-formed /stats answer */
		AggrBufReset(&doc);
		AggrBufAppendStr(&doc, "{\"received\":20000,\"topics\":[");
		for (int i = 0; i < 20000; i++)
			AggrBufPrintf(&doc, "%s{\"topic\":\"topic_%d\",\"count\":%d}", i ? "," : "", i, i);
		AggrBufAppendStr(&doc, "],\"queue_depth\":0}");
		CHECK(Get(doc.data, doc.len, "queue_depth", &v) == AGGR_JSON_OK && v == 0,
			  "a large /stats answer parses");
		AggrBufFree(&doc);
	}

	/* mutations of a real answer: any result, never a crash or an over-read */
	{
		static const char base[] =
			"{\"received\":20000,\"unique_processed\":13000,\"duplicate_dropped\":7000,"
			"\"topics\":[{\"topic\":\"topic_0\",\"count\":1300}],\"uptime_seconds\":12.5,"
			"\"worker_count\":2,\"queue_depth\":0,\"status\":\"ok \\u00e9\\n\"}";
		static const char alphabet[] = "{}[]\",:\\u0123456789eE+-.tfnaxl \x00\x80\xff";
		uint64_t	rng = 99;
		int			ok = 0;
		int			sane = 1;

		for (int iter = 0; iter < 20000; iter++)
		{
			char		doc[sizeof(base)];
			size_t		len = sizeof(base) - 1;
			int			edits = 1 + (int) (AggrRandNext(&rng) % 4);
			int64_t		v;
			AggrJsonResult r;

			memcpy(doc, base, len);
			for (int e = 0; e < edits && len > 0; e++)
			{
				size_t		at = (size_t) (AggrRandNext(&rng) % len);

				switch (AggrRandNext(&rng) % 3)
				{
					case 0:
						doc[at] = alphabet[AggrRandNext(&rng) % (sizeof(alphabet) - 1)];
						break;
					case 1:
						len = at + 1;	/* truncate */
						break;
					default:
						memmove(doc + at, doc + at + 1, len - at - 1);	/* delete */
						len--;
						break;
				}
			}
			r = Get(doc, len, "unique_processed", &v);
			if (r == AGGR_JSON_OK)
				ok++;
			if (r != AGGR_JSON_OK && r != AGGR_JSON_ABSENT && r != AGGR_JSON_WRONG_TYPE &&
				r != AGGR_JSON_MALFORMED)
				sane = 0;
		}
		CHECK(sane && ok > 0, "20000 mutated answers: sane results (%d still parse)", ok);
	}
}

/* ---------- JSON string escaping ---------- */

static bool
EscapesTo(const char *in, size_t len, const char *want)
{
	AggrBuf		b;
	bool		ok;

	AggrBufInit(&b, 0);
	AggrJsonAppendString(&b, in, len);
	ok = (b.len == strlen(want) && memcmp(b.data, want, b.len) == 0);
	if (!ok)
		printf("  escaped to %s, want %s\n", b.data, want);
	AggrBufFree(&b);
	return ok;
}

#define EXPECT_ESCAPE(in, want) \
	CHECK(EscapesTo(in, sizeof(in) - 1, want), "escape %s", want)

/* The escaped form of s is a valid JSON string inside an object. */
static bool
EscapedIsValid(const char *s, size_t len)
{
	AggrBuf		b;
	int64_t		v;
	bool		ok;

	AggrBufInit(&b, 0);
	AggrBufAppendStr(&b, "{\"k\":");
	AggrJsonAppendString(&b, s, len);
	AggrBufAppendStr(&b, "}");
	ok = (Get(b.data, b.len, "k", &v) == AGGR_JSON_WRONG_TYPE);
	AggrBufFree(&b);
	return ok;
}

static void
TestJsonEscape(void)
{
	uint64_t	rng = 17;
	bool		all = true;

	EXPECT_ESCAPE("", "\"\"");
	EXPECT_ESCAPE("plain text", "\"plain text\"");
	EXPECT_ESCAPE("a\"b\\c/d", "\"a\\\"b\\\\c/d\"");
	EXPECT_ESCAPE("\n\t\r\b\f", "\"\\n\\t\\r\\b\\f\"");
	EXPECT_ESCAPE("\x01\x1f\x7f", "\"\\u0001\\u001f\x7f\"");
	EXPECT_ESCAPE("a\0b", "\"a\\u0000b\"");
	EXPECT_ESCAPE("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
	EXPECT_ESCAPE("\xc3", "\"\\ufffd\"");
	EXPECT_ESCAPE("\xff\xfe", "\"\\ufffd\\ufffd\"");
	EXPECT_ESCAPE("\xc0\xaf", "\"\\ufffd\\ufffd\"");
	EXPECT_ESCAPE("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\"");
	EXPECT_ESCAPE("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
	EXPECT_ESCAPE("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
	EXPECT_ESCAPE("\xe2\x82", "\"\\ufffd\\ufffd\"");
	EXPECT_ESCAPE("\xe2\x82x", "\"\\ufffd\\ufffdx\"");
	EXPECT_ESCAPE("\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\"");

	for (int c = 0; c < 256; c++)
	{
		char		s[3] = {'x', (char) c, 'y'};

		all = all && EscapedIsValid(s, 3);
	}
	CHECK(all, "every single byte escapes to a valid JSON string");
	all = true;
	for (int iter = 0; iter < 3000; iter++)
	{
		char		s[32];
		size_t		len = AggrRandNext(&rng) % sizeof(s);

		for (size_t i = 0; i < len; i++)
			s[i] = (char) AggrRandNext(&rng);
		all = all && EscapedIsValid(s, len);
	}
	CHECK(all, "3000 random byte strings escape to valid JSON strings");
}

/* ---------- Redis URLs ---------- */

static void
TestRedisUrl(void)
{
	AggrRedisTarget t;
	char		err[256];
	static const char *const bad[] = {
		"http://x", "redis://", "redis://:6379", "redis://h:0", "redis://h:65536",
		"redis://h:abc", "redis://h:", "redis://h:/1", "redis://h/x", "redis://h/-1",
		"redis://[::1", "redis://pw@h", "redis://h:1x/2"
	};

	CHECK(AggrRedisParseUrl("redis://127.0.0.1:6380/2", &t, err, sizeof(err)) &&
		  strcmp(t.host, "127.0.0.1") == 0 && t.port == 6380 && t.db == 2 && t.password[0] == '\0',
		  "host, port and db");
	CHECK(AggrRedisParseUrl("redis://localhost", &t, err, sizeof(err)) &&
		  strcmp(t.host, "localhost") == 0 && t.port == 6379 && t.db == 0, "defaults");
	CHECK(AggrRedisParseUrl("redis://localhost/", &t, err, sizeof(err)) && t.db == 0, "trailing slash");
	CHECK(AggrRedisParseUrl("redis://:s3cret@h:7000/1", &t, err, sizeof(err)) &&
		  strcmp(t.password, "s3cret") == 0 && t.user[0] == '\0' && strcmp(t.host, "h") == 0 &&
		  t.port == 7000 && t.db == 1, "password");
	CHECK(AggrRedisParseUrl("redis://me:pw@h", &t, err, sizeof(err)) &&
		  strcmp(t.user, "me") == 0 && strcmp(t.password, "pw") == 0, "user and password");
	CHECK(AggrRedisParseUrl("redis://[::1]:7001/3", &t, err, sizeof(err)) &&
		  strcmp(t.host, "::1") == 0 && t.port == 7001 && t.db == 3, "IPv6");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
	{
		err[0] = '\0';
		CHECK(!AggrRedisParseUrl(bad[i], &t, err, sizeof(err)) && err[0] != '\0',
			  "%s refused (%s)", bad[i], err);
	}
}

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	TestGenerationCounts();
	TestGenerationDemo();
	TestGenerationSeeds();
	TestGenerationFormat();
	TestRetryDelays();
	TestRetryOutcomes();
	TestRunScheduling();
	TestRunPacing();
	TestJsonExtract();
	TestJsonEscape();
	TestRedisUrl();
	printf("publisher unit: %d passed, %d failed\n", n_passed, n_failed);
	return n_failed > 0 ? 1 : 0;
}
