/*
 * main.c
 *		aggr-publisher: the load generator and reference client of aggr.
 *
 * Owns the command line, the order of a run and its report:
 *	1. parse flags; build the whole event stream (gen.c) before any timing;
 *	2. --wait-ready: poll /healthz (or PING Redis) until ready, bounded;
 *	3. --verify: read /stats before sending;
 *	4. send every batch (send_http.c or send_redis.c, retries in retry.c);
 *	5. --ledger: one line per event with its outcome;
 *	6. --verify: poll /stats until the queue is drained and the counters
 *	   settle (bounded), then check what grew against what was sent;
 *	7. the summary, human or --json; exit 0 only if every batch was
 *	   acknowledged and verification (if asked) passed.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "gen.h"
#include "json.h"
#include "retry.h"
#include "run.h"
#include "send.h"
#include "util.h"

#define EXIT_DELIVERY 1			/* a batch not acknowledged, or verify failed */
#define EXIT_USAGE 2			/* bad flags, server not ready, setup error */

#define DEFAULT_SEED 20250101
#define POLL_INTERVAL_MS 200
#define POLL_FIRST_MS 10		/* the first second polls this often: a short
								 * drain is timed */
#define SETTLE_MS 600			/* counters unchanged this long: settled */
#define SETTLE_MISSING_MS 5000	/* ... this long while events are missing */
#define MAX_LISTED_BATCHES 20
#define MAX_CHECKS 8

typedef struct Options
{
	const char *url;
	const char *via;			/* "http" or a redis:// URL */
	const char *queue_key;
	const char *token;
	const char *ledger;
	const char *source;
	long		events;
	double		dup_ratio;
	int			batch;
	int			topics;
	int			concurrency;
	long		rate;			/* events/s at most, 0 = as fast as possible */
	uint64_t	seed;
	double		wait_ready_s;	/* < 0: do not wait */
	double		max_retry_s;
	double		timeout_s;
	double		verify_timeout_s;
	long		expect_unique;	/* < 0: decide from the seed's history */
	bool		verify;
	bool		json;
	bool		ndjson;			/* --format ndjson */
	bool		gzip;			/* --gzip */
	bool		quiet;
} Options;

/* The counters of GET /stats that verification reads. */
typedef struct Stats
{
	int64_t		received;
	int64_t		unique;
	int64_t		duplicates;
	int64_t		queue_depth;	/* -1 when the answer has none */
} Stats;

typedef struct Verify
{
	bool		ok;
	Stats		before;
	Stats		after;
	long		received_lo;	/* expected growth of received */
	long		received_hi;
	long		unique_lo;		/* expected growth of unique_processed on a
								 * first run */
	long		unique_hi;
	double		waited_s;
	double		counted_s;		/* from the first request until every event
								 * was counted; < 0: not seen */
	int			n_checks;
	char		checks[MAX_CHECKS][320];
} Verify;

static volatile sig_atomic_t interrupted = 0;

static void
HandleSignal(int sig)
{
	interrupted = 1;
	signal(sig, SIG_DFL);		/* a second signal ends the program */
}

static void
Usage(FILE *out)
{
	fprintf(out,
			"Usage: aggr-publisher [OPTION]...\n"
			"Send synthetic events to aggr, with exact duplicate accounting.\n\n"
			"  --url URL              aggr HTTP endpoint (default http://127.0.0.1:8080)\n"
			"  --via http|redis://HOST[:PORT][/DB]\n"
			"                         POST /publish (default), or RPUSH onto a Redis list\n"
			"  --queue-key KEY        Redis list for --via redis (default aggregator:events)\n"
			"  --events N             events to send (default 20000)\n"
			"  --dup-ratio R          share of re-sent events, 0 <= R < 1 (default 0.35)\n"
			"  --batch N              events per request (default 500)\n"
			"  --topics N             topics topic_0..topic_N-1 (default 10)\n"
			"  --concurrency N        requests in flight (Redis: pipelined RPUSH) (default 4)\n"
			"  --rate N               send at most N events per second (default 0: no limit)\n"
			"  --seed N               event stream seed; same seed, same events (default %d)\n"
			"  --source NAME          the events' source (default aggr-publisher)\n"
			"  --token TOKEN          send Authorization: Bearer TOKEN\n"
			"  --wait-ready SECONDS   first wait until /healthz answers 200 (Redis: PING)\n"
			"  --max-retry-time SECONDS  give a failing batch up after this (default 60)\n"
			"  --timeout SECONDS      one request's time limit (default 30)\n"
			"  --verify               check /stats grew by exactly what was sent\n"
			"  --verify-timeout SECONDS  longest wait for the queue to drain (default 60)\n"
			"  --expect-unique N      with --verify: expected growth of unique_processed\n"
			"  --ledger FILE          one line per event: topic TAB event_id TAB\n"
			"                         acked|failed|unknown TAB attempts that may\n"
			"                         have been applied besides an acked one\n"
			"  --format json|ndjson   HTTP bodies as a JSON array (default) or one\n"
			"                         event per line (application/x-ndjson)\n"
			"  --gzip                 HTTP bodies gzip-compressed (Content-Encoding),\n"
			"                         each compressed once before the run\n"
			"  --json                 print the summary as JSON on stdout\n"
			"  --quiet                no progress and no human summary\n"
			"  --help                 show this help\n\n"
			"Exit status: 0 all acknowledged (and verified); 1 a batch failed or\n"
			"verification found a difference; 2 usage or setup error.\n",
			DEFAULT_SEED);
}

static bool
ParseLong(const char *name, const char *s, long min, long max, long *out)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end != '\0' || v < min || v > max)
	{
		fprintf(stderr, "aggr-publisher: %s must be an integer from %ld to %ld, not \"%s\"\n",
				name, min, max, s);
		return false;
	}
	*out = v;
	return true;
}

static bool
ParseDouble(const char *name, const char *s, double min, double max, double *out)
{
	char	   *end;
	double		v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end != '\0' || !(v >= min && v <= max))
	{
		fprintf(stderr, "aggr-publisher: %s must be a number from %g to %g, not \"%s\"\n",
				name, min, max, s);
		return false;
	}
	*out = v;
	return true;
}

static bool
ParseOptions(int argc, char **argv, Options *o)
{
	enum
	{
		OPT_URL = 256, OPT_VIA, OPT_QUEUE_KEY, OPT_EVENTS, OPT_DUP_RATIO, OPT_BATCH,
		OPT_TOPICS, OPT_CONCURRENCY, OPT_RATE, OPT_SEED, OPT_SOURCE, OPT_TOKEN, OPT_WAIT_READY,
		OPT_MAX_RETRY, OPT_TIMEOUT, OPT_VERIFY, OPT_VERIFY_TIMEOUT, OPT_EXPECT_UNIQUE,
		OPT_LEDGER, OPT_JSON, OPT_QUIET, OPT_FORMAT, OPT_GZIP, OPT_HELP
	};
	static const struct option longopts[] = {
		{"url", required_argument, NULL, OPT_URL},
		{"via", required_argument, NULL, OPT_VIA},
		{"queue-key", required_argument, NULL, OPT_QUEUE_KEY},
		{"events", required_argument, NULL, OPT_EVENTS},
		{"dup-ratio", required_argument, NULL, OPT_DUP_RATIO},
		{"batch", required_argument, NULL, OPT_BATCH},
		{"topics", required_argument, NULL, OPT_TOPICS},
		{"concurrency", required_argument, NULL, OPT_CONCURRENCY},
		{"rate", required_argument, NULL, OPT_RATE},
		{"seed", required_argument, NULL, OPT_SEED},
		{"source", required_argument, NULL, OPT_SOURCE},
		{"token", required_argument, NULL, OPT_TOKEN},
		{"wait-ready", required_argument, NULL, OPT_WAIT_READY},
		{"max-retry-time", required_argument, NULL, OPT_MAX_RETRY},
		{"timeout", required_argument, NULL, OPT_TIMEOUT},
		{"verify", no_argument, NULL, OPT_VERIFY},
		{"verify-timeout", required_argument, NULL, OPT_VERIFY_TIMEOUT},
		{"expect-unique", required_argument, NULL, OPT_EXPECT_UNIQUE},
		{"ledger", required_argument, NULL, OPT_LEDGER},
		{"json", no_argument, NULL, OPT_JSON},
		{"format", required_argument, NULL, OPT_FORMAT},
		{"gzip", no_argument, NULL, OPT_GZIP},
		{"quiet", no_argument, NULL, OPT_QUIET},
		{"help", no_argument, NULL, OPT_HELP},
		{NULL, 0, NULL, 0}
	};
	int			c;
	long		v;
	char	   *end;

	*o = (Options)
	{
		.url = "http://127.0.0.1:8080",.via = "http",.queue_key = "aggregator:events",
			.source = "aggr-publisher",.events = 20000,.dup_ratio = 0.35,.batch = 500,
			.topics = 10,.concurrency = 4,.seed = DEFAULT_SEED,.wait_ready_s = -1,
			.max_retry_s = AGGR_RETRY_GIVE_UP_MS / 1000,.timeout_s = 30,
			.verify_timeout_s = 60,.expect_unique = -1
	};
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1)
	{
		bool		ok = true;

		switch (c)
		{
			case OPT_URL:
				o->url = optarg;
				break;
			case OPT_VIA:
				o->via = optarg;
				break;
			case OPT_QUEUE_KEY:
				o->queue_key = optarg;
				ok = optarg[0] != '\0';
				break;
			case OPT_EVENTS:
				ok = ParseLong("--events", optarg, 1, AGGR_GEN_MAX_EVENTS, &o->events);
				break;
			case OPT_DUP_RATIO:
				ok = ParseDouble("--dup-ratio", optarg, 0, 0.999999, &o->dup_ratio);
				break;
			case OPT_BATCH:
				ok = ParseLong("--batch", optarg, 1, AGGR_GEN_MAX_BATCH, &v);
				o->batch = (int) v;
				break;
			case OPT_TOPICS:
				ok = ParseLong("--topics", optarg, 1, AGGR_GEN_MAX_TOPICS, &v);
				o->topics = (int) v;
				break;
			case OPT_CONCURRENCY:
				ok = ParseLong("--concurrency", optarg, 1, 256, &v);
				o->concurrency = (int) v;
				break;
			case OPT_RATE:
				ok = ParseLong("--rate", optarg, 0, 100000000, &o->rate);
				break;
			case OPT_SEED:
				errno = 0;
				o->seed = strtoull(optarg, &end, 0);
				ok = (errno == 0 && end != optarg && *end == '\0' && optarg[0] != '-');
				if (!ok)
					fprintf(stderr, "aggr-publisher: --seed must be an unsigned integer\n");
				break;
			case OPT_SOURCE:
				o->source = optarg;
				break;
			case OPT_TOKEN:
				o->token = optarg;
				ok = AggrHeaderValueOk(optarg);
				if (!ok)
					fprintf(stderr, "aggr-publisher: --token must not contain control characters\n");
				break;
			case OPT_WAIT_READY:
				ok = ParseDouble("--wait-ready", optarg, 0, 86400, &o->wait_ready_s);
				break;
			case OPT_MAX_RETRY:
				ok = ParseDouble("--max-retry-time", optarg, 0, 86400, &o->max_retry_s);
				break;
			case OPT_TIMEOUT:
				ok = ParseDouble("--timeout", optarg, 0.001, 86400, &o->timeout_s);
				break;
			case OPT_VERIFY:
				o->verify = true;
				break;
			case OPT_VERIFY_TIMEOUT:
				ok = ParseDouble("--verify-timeout", optarg, 0, 86400, &o->verify_timeout_s);
				break;
			case OPT_EXPECT_UNIQUE:
				ok = ParseLong("--expect-unique", optarg, 0, AGGR_GEN_MAX_EVENTS, &o->expect_unique);
				break;
			case OPT_LEDGER:
				o->ledger = optarg;
				break;
			case OPT_JSON:
				o->json = true;
				break;
			case OPT_FORMAT:
				ok = strcmp(optarg, "json") == 0 || strcmp(optarg, "ndjson") == 0;
				o->ndjson = strcmp(optarg, "ndjson") == 0;
				if (!ok)
					fprintf(stderr, "aggr-publisher: --format must be json or ndjson\n");
				break;
			case OPT_GZIP:
				o->gzip = true;
				break;
			case OPT_QUIET:
				o->quiet = true;
				break;
			case OPT_HELP:
				Usage(stdout);
				exit(0);
			default:
				Usage(stderr);
				return false;
		}
		if (!ok)
			return false;
	}
	if (optind < argc)
	{
		fprintf(stderr, "aggr-publisher: unexpected argument \"%s\"\n", argv[optind]);
		return false;
	}
	if (strcmp(o->via, "http") != 0 && strncmp(o->via, "redis://", 8) != 0)
	{
		fprintf(stderr, "aggr-publisher: --via is http or redis://HOST[:PORT][/DB]\n");
		return false;
	}
	return true;
}

/* ---------- readiness and /stats ---------- */

/* Poll until the server (and Redis, with --via redis) is ready, bounded. */
static bool
WaitReady(const Options *o, const AggrRedisTarget *redis)
{
	double		deadline = AggrNowMs() + o->wait_ready_s * 1000;
	char		err[512] = "";
	AggrBuf		body;
	bool		ready = false;

	AggrBufInit(&body, 0);
	while (!interrupted)
	{
		long		status = 0;

		if (redis)
			ready = AggrRedisPing(redis, 1000, err, sizeof(err));
		else
			ready = true;
		if (ready && (redis == NULL || o->verify))
		{
			ready = AggrHttpGet(o->url, "/healthz", o->token, 2000, &status, &body, err, sizeof(err));
			if (ready && status != 200)
			{
				snprintf(err, sizeof(err), "/healthz answered %ld: %.200s", status,
						 body.data ? body.data : "");
				ready = false;
			}
		}
		if (ready || AggrNowMs() >= deadline)
			break;
		AggrSleepMs(250);
	}
	AggrBufFree(&body);
	if (!ready)
		fprintf(stderr, "aggr-publisher: not ready after %g s: %s\n", o->wait_ready_s, err);
	return ready;
}

static bool
GetStats(const Options *o, Stats *s, char *err, size_t errlen)
{
	AggrBuf		body;
	long		status;
	bool		ok;

	AggrBufInit(&body, 0);
	ok = AggrHttpGet(o->url, "/stats", o->token, o->timeout_s * 1000, &status, &body, err, errlen);
	if (ok && status != 200)
	{
		snprintf(err, errlen, "GET /stats answered %ld", status);
		ok = false;
	}
	if (ok &&
		(AggrJsonGetInt(body.data, body.len, "received", &s->received) != AGGR_JSON_OK ||
		 AggrJsonGetInt(body.data, body.len, "unique_processed", &s->unique) != AGGR_JSON_OK ||
		 AggrJsonGetInt(body.data, body.len, "duplicate_dropped", &s->duplicates) != AGGR_JSON_OK))
	{
		snprintf(err, errlen, "GET /stats lacks integer received, unique_processed or duplicate_dropped");
		ok = false;
	}
	if (ok && AggrJsonGetInt(body.data, body.len, "queue_depth", &s->queue_depth) != AGGR_JSON_OK)
		s->queue_depth = -1;
	AggrBufFree(&body);
	return ok;
}

/* ---------- verification ---------- */

static void AddCheck(Verify *v, bool ok, const char *fmt,...) __attribute__((format(printf, 3, 4)));

static void
AddCheck(Verify *v, bool ok, const char *fmt,...)
{
	va_list		ap;
	char	   *line = v->checks[v->n_checks];

	if (v->n_checks == MAX_CHECKS)
		return;
	v->n_checks++;
	if (!ok)
		v->ok = false;
	snprintf(line, sizeof(v->checks[0]), "%s ", ok ? "ok  " : "FAIL");
	va_start(ap, fmt);
	vsnprintf(line + 5, sizeof(v->checks[0]) - 5, fmt, ap);
	va_end(ap);
}

/*
 * What the counters should grow by, from each batch's outcome: received by
 * the events of acknowledged batches, plus at most those of every attempt
 * that may have been applied; unique_processed, on a first run of the seed,
 * by the distinct events among them.
 */
static void
ExpectedGrowth(const AggrRun *run, Verify *v)
{
	const AggrStream *s = run->stream;
	unsigned char *seen = AggrCalloc((size_t) s->n_unique, 1);	/* 1 acked, 2 maybe */

	v->received_lo = v->received_hi = 0;
	v->unique_lo = v->unique_hi = 0;
	for (int b = 0; b < s->n_batches; b++)
	{
		const AggrBatchState *st = &run->state[b];
		const AggrBatch *batch = &s->batches[b];
		unsigned char mark = (st->outcome == AGGR_OUTCOME_ACKED) ? 1 : 2;

		if (st->outcome == AGGR_OUTCOME_ACKED)
			v->received_lo += batch->count;
		v->received_hi += (long) batch->count *
			((st->outcome == AGGR_OUTCOME_ACKED) + st->maybe_applied);
		if (st->outcome != AGGR_OUTCOME_ACKED && st->maybe_applied == 0)
			continue;
		for (long i = batch->first; i < batch->first + batch->count; i++)
		{
			uint32_t	u = s->events[i].unique;

			if (seen[u] == 0 || (seen[u] == 2 && mark == 1))
				seen[u] = mark;
		}
	}
	for (long u = 0; u < s->n_unique; u++)
	{
		v->unique_lo += (seen[u] == 1);
		v->unique_hi += (seen[u] != 0);
	}
	free(seen);
}

static void
RangeText(char *out, size_t outlen, long lo, long hi)
{
	if (lo == hi)
		snprintf(out, outlen, "%ld", lo);
	else
		snprintf(out, outlen, "%ld to %ld", lo, hi);
}

/*
 * Wait until the queue is drained and the counters settle, bounded; then
 * check what grew.
 */
static void
VerifyAfter(const Options *o, const AggrRun *run, Verify *v)
{
	double		start = AggrNowMs();
	double		deadline = start + o->verify_timeout_s * 1000;
	double		stable_since = start;
	Stats		prev = v->before;
	char		err[512];
	char		range[64];
	bool		have = false;
	int64_t		d_received;
	int64_t		d_unique;
	int64_t		d_dup;

	ExpectedGrowth(run, v);
	for (;;)
	{
		double		now;
		bool		drained;

		if (!GetStats(o, &v->after, err, sizeof(err)))
		{
			AddCheck(v, false, "could not read /stats after the run: %s", err);
			return;
		}
		now = AggrNowMs();
		have = true;
		if (v->after.received != prev.received || v->after.unique != prev.unique ||
			v->after.duplicates != prev.duplicates || v->after.queue_depth != prev.queue_depth)
			stable_since = now;
		prev = v->after;
		drained = v->after.queue_depth <= 0;
		d_received = v->after.received - v->before.received;
		if (drained && d_received >= v->received_hi)
		{
			v->counted_s = (now - run->start_ms) / 1000;
			break;				/* all our events are counted: nothing more
								 * can come */
		}
		if (drained && d_received >= v->received_lo && now - stable_since >= SETTLE_MS)
			break;
		if (drained && now - stable_since >= SETTLE_MISSING_MS)
			break;
		if (now >= deadline || interrupted)
		{
			AddCheck(v, false, "the counters did not settle within %g s (queue_depth %" PRId64 ")",
					 o->verify_timeout_s, v->after.queue_depth);
			break;
		}
		AggrSleepMs(now - start < 1000 ? POLL_FIRST_MS : POLL_INTERVAL_MS);
	}
	v->waited_s = (AggrNowMs() - start) / 1000;
	if (!have)
		return;

	d_received = v->after.received - v->before.received;
	d_unique = v->after.unique - v->before.unique;
	d_dup = v->after.duplicates - v->before.duplicates;

	RangeText(range, sizeof(range), v->received_lo, v->received_hi);
	AddCheck(v, d_received >= v->received_lo && d_received <= v->received_hi,
			 "received grew by %" PRId64 " (expected %s: the events of acknowledged requests%s)",
			 d_received, range,
			 v->received_hi > v->received_lo ? ", plus those whose outcome is unknown" : "");

	if (o->expect_unique >= 0)
		AddCheck(v, d_unique == o->expect_unique,
				 "unique_processed grew by %" PRId64 " (expected %ld, from --expect-unique)",
				 d_unique, o->expect_unique);
	else
	{
		bool		first = (d_unique >= v->unique_lo && d_unique <= v->unique_hi);

		RangeText(range, sizeof(range), v->unique_lo, v->unique_hi);
		AddCheck(v, first || d_unique == 0,
				 "unique_processed grew by %" PRId64 " (expected %s on the first run of seed %" PRIu64
				 ", 0 on a repeat run%s)",
				 d_unique, range, o->seed,
				 first ? ": this is a first run" : d_unique == 0 ? ": this is a repeat run" :
				 "; use --expect-unique if some of these events were already stored");
	}

	AddCheck(v, d_dup == d_received - d_unique,
			 "duplicate_dropped grew by %" PRId64 " (expected received - unique = %" PRId64 ")",
			 d_dup, d_received - d_unique);
	AddCheck(v, v->after.received == v->after.unique + v->after.duplicates,
			 "after the run received = unique_processed + duplicate_dropped (%" PRId64 " = %" PRId64
			 " + %" PRId64 ")", v->after.received, v->after.unique, v->after.duplicates);

	/* in direct mode every answer counted unique and duplicates itself */
	if (run->answers_with_counts > 0 && run->answers_with_counts == run->requests &&
		v->received_lo == v->received_hi)
		AddCheck(v, run->server_unique == d_unique && run->server_duplicates == d_dup,
				 "the answers counted %ld unique and %ld duplicates, as /stats did",
				 run->server_unique, run->server_duplicates);
}

/* ---------- ledger ---------- */

static bool
WriteLedger(FILE *f, const AggrRun *run)
{
	const AggrStream *s = run->stream;
	char		topic[AGGR_GEN_KEY_LEN];
	char		event_id[AGGR_GEN_KEY_LEN];

	for (int b = 0; b < s->n_batches; b++)
	{
		const char *outcome = AggrOutcomeName(run->state[b].outcome);
		const AggrBatch *batch = &s->batches[b];

		/* how often beyond the acked attempt the server may have counted it */
		int			maybe = run->state[b].maybe_applied;

		for (long i = batch->first; i < batch->first + batch->count; i++)
		{
			AggrGenEventKey(s, s->events[i].unique, topic, event_id);
			fprintf(f, "%s\t%s\t%s\t%d\n", topic, event_id, outcome, maybe);
		}
	}
	return fflush(f) == 0 && !ferror(f);
}

/* ---------- summary ---------- */

typedef struct Summary
{
	long		sent;			/* events of batches tried at least once */
	long		acked;
	long		failed;
	long		unknown;
	double		wall_s;
	double		gen_s;
	double		cpu_s;
	double		p50;
	double		p99;
} Summary;

static double
CpuSeconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void
PrintHuman(const Options *o, const AggrRun *run, const Summary *sm, const Verify *v)
{
	const AggrStream *s = run->stream;
	int			listed = 0;
	int			not_acked = 0;

	printf("aggr-publisher: %ld events (%ld unique + %ld duplicates, seed %" PRIu64 ") "
		   "in %d batches of %d via %s\n",
		   s->n_events, s->n_unique, s->n_duplicates, o->seed, s->n_batches, o->batch,
		   strcmp(o->via, "http") == 0 ? o->url : o->via);
	printf("  sent      %ld events in %ld requests, %ld retries\n", sm->sent, run->requests, run->retries);
	printf("  accepted  %ld", run->accepted);
	if (run->answers_with_counts > 0)
		printf(" (the answers counted %ld unique, %ld duplicates)",
			   run->server_unique, run->server_duplicates);
	printf("\n  wall time %.3f s, %.0f events/s (generation %.3f s before it)\n",
		   sm->wall_s, sm->wall_s > 0 ? sm->acked / sm->wall_s : 0, sm->gen_s);
	printf("  latency   p50 %.1f ms, p99 %.1f ms\n", sm->p50, sm->p99);
	printf("  cpu       %.3f s (%.0f %% of one core)\n", sm->cpu_s,
		   sm->wall_s > 0 ? 100 * sm->cpu_s / sm->wall_s : 0);
	if (run->accepted != sm->acked)
		printf("  warning   the answers accepted %ld events of the %ld acknowledged\n",
			   run->accepted, sm->acked);
	if (run->answers_without_accepted > 0)
		printf("  warning   %ld answers had no integer \"accepted\"\n", run->answers_without_accepted);
	for (int b = 0; b < s->n_batches; b++)
	{
		const AggrBatchState *st = &run->state[b];

		if (st->outcome == AGGR_OUTCOME_ACKED)
			continue;
		not_acked++;
		if (listed++ < MAX_LISTED_BATCHES)
			printf("  %-9s batch %d (events %ld-%ld) after %d attempts: %s\n",
				   AggrOutcomeName(st->outcome), b, s->batches[b].first,
				   s->batches[b].first + s->batches[b].count - 1, st->attempts, st->last_error);
	}
	if (not_acked > MAX_LISTED_BATCHES)
		printf("  ... and %d more batches not acknowledged\n", not_acked - MAX_LISTED_BATCHES);
	if (not_acked > 0)
		printf("  FAILED    %d of %d batches not acknowledged: %ld events failed, %ld unknown\n",
			   not_acked, s->n_batches, sm->failed, sm->unknown);
	if (v)
	{
		printf("  verify    %s after waiting %.1f s for /stats to settle\n",
			   v->ok ? "passed" : "FAILED", v->waited_s);
		if (v->counted_s > 0)
			printf("  counted   every event %.3f s after the first request: %.0f events/s "
				   "published and counted (drained, in broker mode)\n",
				   v->counted_s, sm->acked / v->counted_s);
		for (int i = 0; i < v->n_checks; i++)
			printf("    %s\n", v->checks[i]);
	}
	fflush(stdout);
}

static void
JsonKeyString(AggrBuf *j, const char *key, const char *value)
{
	AggrBufPrintf(j, "\"%s\":", key);
	AggrJsonAppendString(j, value, strlen(value));
}

static void
PrintJson(const Options *o, const AggrRun *run, const Summary *sm, const Verify *v, bool ok)
{
	const AggrStream *s = run->stream;
	AggrBuf		j;
	bool		first = true;

	AggrBufInit(&j, 0);
	AggrBufPrintf(&j, "{\"ok\":%s,", ok ? "true" : "false");
	JsonKeyString(&j, "via", strcmp(o->via, "http") == 0 ? "http" : "redis");
	AggrBufPrintf(&j, ",\"events\":%ld,\"expected_unique\":%ld,\"expected_duplicates\":%ld,"
				  "\"seed\":%" PRIu64 ",\"batches\":%d,\"batch_size\":%d,\"concurrency\":%d,"
				  "\"sent\":%ld,\"acked\":%ld,\"failed\":%ld,\"unknown\":%ld,\"accepted\":%ld,",
				  s->n_events, s->n_unique, s->n_duplicates, o->seed, s->n_batches, o->batch,
				  o->concurrency, sm->sent, sm->acked, sm->failed, sm->unknown, run->accepted);
	if (run->answers_with_counts > 0)
		AggrBufPrintf(&j, "\"server_unique\":%ld,\"server_duplicates\":%ld,",
					  run->server_unique, run->server_duplicates);
	else
		AggrBufAppendStr(&j, "\"server_unique\":null,\"server_duplicates\":null,");
	AggrBufPrintf(&j, "\"requests\":%ld,\"retries\":%ld,\"wall_seconds\":%.6f,"
				  "\"events_per_second\":%.1f,\"generation_seconds\":%.6f,\"cpu_seconds\":%.6f,"
				  "\"latency_ms\":{\"p50\":%.3f,\"p99\":%.3f},\"failed_batches\":[",
				  run->requests, run->retries, sm->wall_s,
				  sm->wall_s > 0 ? sm->acked / sm->wall_s : 0, sm->gen_s, sm->cpu_s,
				  sm->p50, sm->p99);
	for (int b = 0; b < s->n_batches; b++)
	{
		const AggrBatchState *st = &run->state[b];

		if (st->outcome == AGGR_OUTCOME_ACKED)
			continue;
		AggrBufPrintf(&j, "%s{\"batch\":%d,\"first_event\":%ld,\"events\":%d,\"attempts\":%d,",
					  first ? "" : ",", b, s->batches[b].first, s->batches[b].count, st->attempts);
		JsonKeyString(&j, "outcome", AggrOutcomeName(st->outcome));
		AggrBufAppendStr(&j, ",");
		JsonKeyString(&j, "error", st->last_error);
		AggrBufAppendStr(&j, "}");
		first = false;
	}
	AggrBufAppendStr(&j, "]");
	if (v)
	{
		AggrBufPrintf(&j, ",\"verify\":{\"ok\":%s,\"waited_seconds\":%.3f,\"counted_seconds\":%.3f,"
					  "\"received\":{\"before\":%" PRId64 ",\"after\":%" PRId64
					  ",\"expected_growth_min\":%ld,\"expected_growth_max\":%ld},"
					  "\"unique_processed\":{\"before\":%" PRId64 ",\"after\":%" PRId64
					  ",\"expected_growth_first_run_min\":%ld,\"expected_growth_first_run_max\":%ld},"
					  "\"duplicate_dropped\":{\"before\":%" PRId64 ",\"after\":%" PRId64 "},"
					  "\"checks\":[",
					  v->ok ? "true" : "false", v->waited_s, v->counted_s,
					  v->before.received, v->after.received, v->received_lo, v->received_hi,
					  v->before.unique, v->after.unique, v->unique_lo, v->unique_hi,
					  v->before.duplicates, v->after.duplicates);
		for (int i = 0; i < v->n_checks; i++)
		{
			if (i > 0)
				AggrBufAppendStr(&j, ",");
			AggrJsonAppendString(&j, v->checks[i], strlen(v->checks[i]));
		}
		AggrBufAppendStr(&j, "]}");
	}
	AggrBufAppendStr(&j, "}\n");
	fwrite(j.data, 1, j.len, stdout);
	fflush(stdout);
	AggrBufFree(&j);
}

/* ---------- the run ---------- */

int
main(int argc, char **argv)
{
	Options		o;
	AggrGenOptions g;
	AggrStream	stream = {0};
	AggrRun		run = {0};
	AggrRedisTarget redis;
	Verify		verify = {.ok = true,.counted_s = -1};
	Summary		sm = {0};
	FILE	   *ledger = NULL;
	char		err[512] = "";
	double		t0;
	double		cpu0;
	bool		via_redis;
	bool		curl_ready = false;
	bool		ok = false;
	int			status = EXIT_USAGE;

	if (!ParseOptions(argc, argv, &o))
		return EXIT_USAGE;
	via_redis = strcmp(o.via, "http") != 0;
	if (via_redis && !AggrRedisParseUrl(o.via, &redis, err, sizeof(err)))
		goto done;

	/* the whole stream, before anything is timed */
	t0 = AggrNowMs();
	g = (AggrGenOptions)
	{
		.seed = o.seed,.events = o.events,.dup_ratio = o.dup_ratio,.batch_size = o.batch,
			.topics = o.topics,.source = o.source,.base_time_ms = AggrWallMs(),
			.ndjson = o.ndjson
	};
	if (!AggrGenBuild(&g, &stream, err, sizeof(err)))
		goto done;
	sm.gen_s = (AggrNowMs() - t0) / 1000;

	if (o.ledger && (ledger = fopen(o.ledger, "w")) == NULL)
	{
		snprintf(err, sizeof(err), "cannot write ledger \"%s\": %s", o.ledger, strerror(errno));
		goto done;
	}
	if (!(curl_ready = AggrHttpGlobalInit()))
	{
		snprintf(err, sizeof(err), "could not initialise libcurl");
		goto done;
	}
	signal(SIGINT, HandleSignal);
	signal(SIGTERM, HandleSignal);
	signal(SIGPIPE, SIG_IGN);

	if (o.wait_ready_s >= 0 && !WaitReady(&o, via_redis ? &redis : NULL))
		goto done;
	if (o.verify && !GetStats(&o, &verify.before, err, sizeof(err)))
	{
		fprintf(stderr, "aggr-publisher: cannot verify: %s\n", err);
		err[0] = '\0';
		goto done;
	}

	run.stream = &stream;
	run.policy.base_ms = AGGR_RETRY_BASE_MS;
	run.policy.cap_ms = AGGR_RETRY_CAP_MS;
	run.policy.give_up_ms = o.max_retry_s * 1000;
	run.concurrency = o.concurrency;
	run.rate_per_s = o.rate;
	run.timeout_ms = o.timeout_s * 1000;
	run.token = o.token;
	run.ndjson = o.ndjson;
	run.gzip = o.gzip;
	run.progress = o.quiet ? AGGR_PROGRESS_NONE :
		isatty(STDERR_FILENO) ? AGGR_PROGRESS_TTY : AGGR_PROGRESS_LINES;
	run.interrupted = &interrupted;
	AggrRunInit(&run, o.seed);

	cpu0 = CpuSeconds();
	if (via_redis)
		AggrSendRedis(&run, &redis, o.queue_key);
	else if (!AggrSendHttp(&run, o.url, err, sizeof(err)))
		goto done;
	sm.cpu_s = CpuSeconds() - cpu0;
	sm.wall_s = (run.end_ms - run.start_ms) / 1000;
	sm.p50 = AggrRunLatency(&run, 50);
	sm.p99 = AggrRunLatency(&run, 99);
	sm.acked = AggrRunEventsWith(&run, AGGR_OUTCOME_ACKED);
	sm.failed = AggrRunEventsWith(&run, AGGR_OUTCOME_FAILED);
	sm.unknown = AggrRunEventsWith(&run, AGGR_OUTCOME_UNKNOWN);
	for (int b = 0; b < stream.n_batches; b++)
		if (run.state[b].attempts > 0)
			sm.sent += stream.batches[b].count;

	ok = (sm.acked == stream.n_events);
	if (ledger)
	{
		bool		written = WriteLedger(ledger, &run);

		if (fclose(ledger) != 0 || !written)
		{
			fprintf(stderr, "aggr-publisher: writing the ledger failed\n");
			ok = false;
		}
		ledger = NULL;
	}
	if (o.verify)
	{
		VerifyAfter(&o, &run, &verify);
		ok = ok && verify.ok;
	}
	if (o.json)
		PrintJson(&o, &run, &sm, o.verify ? &verify : NULL, ok);
	else if (!o.quiet)
		PrintHuman(&o, &run, &sm, o.verify ? &verify : NULL);
	else if (!ok)
		fprintf(stderr, "aggr-publisher: %ld of %ld events not acknowledged%s\n",
				stream.n_events - sm.acked, stream.n_events,
				o.verify && !verify.ok ? "; verification failed" : "");
	status = ok ? 0 : EXIT_DELIVERY;

done:
	if (err[0] != '\0' && status == EXIT_USAGE)
		fprintf(stderr, "aggr-publisher: %s\n", err);
	if (ledger)
		fclose(ledger);
	if (run.state)
		AggrRunFree(&run);
	AggrGenFree(&stream);
	if (curl_ready)
		AggrHttpGlobalCleanup();
	return status;
}
