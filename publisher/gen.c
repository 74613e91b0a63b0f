/*
 * gen.c
 *		Deterministic event generation for aggr-publisher.
 *
 * A run of N events with duplicate ratio r holds exactly U = N - round(N*r)
 * distinct (topic, event_id) pairs and D = N - U re-sends.  The send order is
 * the U unique events plus D references to uniformly chosen unique events,
 * shuffled (Fisher-Yates).  Whichever copy of an event comes first in send
 * order is its original, and every later copy is byte-identical to it, so the
 * server counts exactly U unique and D duplicates whatever the batching, the
 * concurrency, or whether two copies share a batch.
 *
 * Everything is a function of the seed except timestamps (unique event u is
 * stamped base_time_ms - (U - 1 - u) ms, so the newest is "now" and none lies
 * in the future): the same seed gives the same topics,
 * event ids, payloads and order, so a second run re-sends the same events.
 * Event ids are UUID-shaped; their first 64 bits are a bijection of
 * (seed-derived offset + unique index), so they are distinct by construction
 * within a run and unrelated between seeds.
 *
 * Request bodies are built here, once, before the timed run: the senders only
 * point libcurl or hiredis at these bytes.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gen.h"
#include "json.h"
#include "util.h"

static const char *const levels[] = {"debug", "info", "info", "info", "warning", "error"};

/* The splitmix64 finaliser: a bijection of 64-bit integers. */
static uint64_t
Mix64(uint64_t x)
{
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

uint64_t
AggrRandNext(uint64_t *state)
{
	*state += UINT64_C(0x9e3779b97f4a7c15);
	return Mix64(*state);
}

double
AggrRandUnit(uint64_t *state)
{
	return (AggrRandNext(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform integer in [0, n), without modulo bias (n > 0). */
static uint64_t
RandBelow(uint64_t *state, uint64_t n)
{
	uint64_t	limit = UINT64_MAX - UINT64_MAX % n;
	uint64_t	x;

	do
		x = AggrRandNext(state);
	while (x >= limit);
	return x % n;
}

long
AggrGenDuplicates(long events, double ratio)
{
	return (long) llround((double) events * ratio);
}

/* First 64 bits of a unique event's id; everything else about it derives from this. */
static uint64_t
EventId64(const AggrStream *stream, uint32_t unique)
{
	return Mix64(Mix64(stream->seed ^ UINT64_C(0x6167677270756221)) + unique);
}

void
AggrGenEventKey(const AggrStream *stream, uint32_t unique, char *topic, char *event_id)
{
	uint64_t	hi = EventId64(stream, unique);
	uint64_t	lo = Mix64(hi ^ UINT64_C(0x5bd1e9955bd1e995));

	snprintf(topic, AGGR_GEN_KEY_LEN, "topic_%d",
			 (int) (Mix64(hi + 1) % (uint64_t) stream->topics));
	snprintf(event_id, AGGR_GEN_KEY_LEN, "%08" PRIx64 "-%04" PRIx64 "-%04" PRIx64
			 "-%04" PRIx64 "-%012" PRIx64,
			 hi >> 32, (hi >> 16) & 0xffff, hi & 0xffff,
			 lo >> 48, lo & UINT64_C(0xffffffffffff));
}

/* Format an ISO-8601 UTC timestamp with milliseconds (ms may be negative). */
static void
FormatTimestamp(int64_t ms, char *out, size_t outlen)
{
	int64_t		frac = ((ms % 1000) + 1000) % 1000;
	time_t		secs = (time_t) ((ms - frac) / 1000);
	struct tm	tm;

	gmtime_r(&secs, &tm);
	snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) frac);
}

/* Append the JSON of unique event u; the quoted source is pre-escaped. */
static void
AppendEvent(AggrBuf *buf, const AggrStream *stream, uint32_t u,
			const char *quoted_source, int64_t base_time_ms)
{
	char		topic[AGGR_GEN_KEY_LEN];
	char		event_id[AGGR_GEN_KEY_LEN];
	char		ts[80];
	const char *level = levels[EventId64(stream, u) % (sizeof(levels) / sizeof(levels[0]))];

	AggrGenEventKey(stream, u, topic, event_id);
	FormatTimestamp(base_time_ms - (stream->n_unique - 1 - (int64_t) u), ts, sizeof(ts));
	AggrBufPrintf(buf,
				  "{\"topic\":\"%s\",\"event_id\":\"%s\",\"timestamp\":\"%s\","
				  "\"source\":%s,\"payload\":{\"seq\":%" PRIu32 ",\"level\":\"%s\","
				  "\"message\":\"synthetic event %" PRIu32 "\"}}",
				  topic, event_id, ts, quoted_source, u, level, u);
}

static bool
CheckOptions(const AggrGenOptions *opts, long n_dup, char *err, size_t errlen)
{
	if (opts->events < 1 || opts->events > AGGR_GEN_MAX_EVENTS)
		snprintf(err, errlen, "events must be between 1 and %ld", AGGR_GEN_MAX_EVENTS);
	else if (!(opts->dup_ratio >= 0.0 && opts->dup_ratio < 1.0))
		snprintf(err, errlen, "the duplicate ratio must be at least 0 and below 1");
	else if (n_dup >= opts->events)
		snprintf(err, errlen, "%ld events with duplicate ratio %g leave no unique event",
				 opts->events, opts->dup_ratio);
	else if (opts->batch_size < 1 || opts->batch_size > AGGR_GEN_MAX_BATCH)
		snprintf(err, errlen, "the batch size must be between 1 and %d", AGGR_GEN_MAX_BATCH);
	else if (opts->topics < 1 || opts->topics > AGGR_GEN_MAX_TOPICS)
		snprintf(err, errlen, "topics must be between 1 and %d", AGGR_GEN_MAX_TOPICS);
	else if (opts->source == NULL || opts->source[0] == '\0' ||
			 strlen(opts->source) > AGGR_GEN_MAX_SOURCE)
		snprintf(err, errlen, "the source must be 1 to %d bytes", AGGR_GEN_MAX_SOURCE);
	else
		return true;
	return false;
}

bool
AggrGenBuild(const AggrGenOptions *opts, AggrStream *stream, char *err, size_t errlen)
{
	long		n_dup = AggrGenDuplicates(opts->events, opts->dup_ratio);
	uint32_t   *order;
	long	   *first_copy;		/* send-order index of each unique event's
								 * original */
	uint64_t	rng;
	AggrBuf		quoted;
	long		n;

	memset(stream, 0, sizeof(*stream));
	if (!CheckOptions(opts, n_dup, err, errlen))
		return false;

	n = opts->events;
	stream->seed = opts->seed;
	stream->topics = opts->topics;
	stream->batch_size = opts->batch_size;
	stream->n_events = n;
	stream->n_duplicates = n_dup;
	stream->n_unique = n - n_dup;

	/* the send order: every unique event once, then re-sends, shuffled */
	rng = opts->seed ^ UINT64_C(0x73687566666c6521);
	order = AggrMalloc(sizeof(uint32_t) * (size_t) n);
	for (long i = 0; i < stream->n_unique; i++)
		order[i] = (uint32_t) i;
	for (long i = stream->n_unique; i < n; i++)
		order[i] = (uint32_t) RandBelow(&rng, (uint64_t) stream->n_unique);
	for (long i = n - 1; i > 0; i--)
	{
		long		j = (long) RandBelow(&rng, (uint64_t) i + 1);
		uint32_t	t = order[i];

		order[i] = order[j];
		order[j] = t;
	}

	/* the bodies: an original is formatted, a re-send copies its bytes */
	AggrBufInit(&quoted, 0);
	AggrJsonAppendString(&quoted, opts->source, strlen(opts->source));
	first_copy = AggrMalloc(sizeof(long) * (size_t) stream->n_unique);
	for (long u = 0; u < stream->n_unique; u++)
		first_copy[u] = -1;
	stream->events = AggrMalloc(sizeof(AggrEvent) * (size_t) n);
	stream->n_batches = (int) ((n + opts->batch_size - 1) / opts->batch_size);
	stream->batches = AggrCalloc((size_t) stream->n_batches, sizeof(AggrBatch));
	for (int b = 0; b < stream->n_batches; b++)
	{
		AggrBatch  *batch = &stream->batches[b];
		AggrBuf		body;

		batch->first = (long) b * opts->batch_size;
		batch->count = (int) ((n - batch->first < opts->batch_size) ?
							  n - batch->first : opts->batch_size);
		AggrBufInit(&body, 0);
		if (!opts->ndjson)
			AggrBufAppend(&body, "[", 1);
		for (long i = batch->first; i < batch->first + batch->count; i++)
		{
			uint32_t	u = order[i];
			AggrEvent  *ev = &stream->events[i];

			if (i > batch->first && !opts->ndjson)
				AggrBufAppend(&body, ",", 1);
			ev->unique = u;
			ev->offset = (uint32_t) body.len;
			if (first_copy[u] < 0)
			{
				AppendEvent(&body, stream, u, quoted.data, opts->base_time_ms);
				first_copy[u] = i;
			}
			else
			{
				const AggrEvent *orig = &stream->events[first_copy[u]];
				const char *bytes;

				/* reserve first: the original may be in this very body */
				AggrBufReserve(&body, orig->length);
				if (first_copy[u] >= batch->first)
					bytes = body.data + orig->offset;
				else
					bytes = stream->batches[first_copy[u] / opts->batch_size].body + orig->offset;
				AggrBufAppend(&body, bytes, orig->length);
			}
			ev->length = (uint32_t) (body.len - ev->offset);
			if (opts->ndjson)
				AggrBufAppend(&body, "\n", 1);
		}
		if (!opts->ndjson)
			AggrBufAppend(&body, "]", 1);
		batch->body = AggrRealloc(body.data, body.len + 1); /* drop the slack */
		batch->length = body.len;
	}
	free(first_copy);
	free(order);
	AggrBufFree(&quoted);
	return true;
}

const char *
AggrGenEventJson(const AggrStream *stream, long i, size_t *len)
{
	const AggrEvent *ev = &stream->events[i];
	const AggrBatch *batch = &stream->batches[i / stream->batch_size];

	*len = ev->length;
	return batch->body + ev->offset;
}

void
AggrGenFree(AggrStream *stream)
{
	for (int b = 0; b < stream->n_batches; b++)
		free(stream->batches[b].body);
	free(stream->batches);
	free(stream->events);
	memset(stream, 0, sizeof(*stream));
}
