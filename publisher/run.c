/*
 * run.c
 *		Bookkeeping of one publishing run, shared by both senders.
 *
 * A sender asks AggrRunNext for a batch whenever it has a free slot, tells
 * AggrRunStarted / AggrRunFinished about each request, and loops until
 * AggrRunDone.  Retries go first once due.  A transient failure holds back
 * every request until that batch's retry is due (which honours Retry-After),
 * so the whole run backs off together and a struggling server is not
 * hammered by the other slots.
 *
 * The give-up bound is per batch, but when a batch reaches it with no request
 * of the run succeeding since that batch first failed, the server has been
 * down for the whole bound: the run stops instead of starting a new bound for
 * every batch still unsent.  After SIGINT/SIGTERM it stops too.  A stopping
 * run starts no request; once nothing is in flight, batches never sent are
 * settled as failed and batches waiting for a retry as failed or unknown.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "run.h"
#include "util.h"

#define PROGRESS_TTY_MS 250.0
#define PROGRESS_LINES_MS 5000.0

void
AggrRunInit(AggrRun *run, uint64_t seed)
{
	int			n = run->stream->n_batches;

	run->rng = seed ^ UINT64_C(0x6a69747465722121);
	run->state = AggrCalloc((size_t) n, sizeof(AggrBatchState));
	run->next_new = 0;
	run->waiting = AggrMalloc(sizeof(int) * (size_t) n);
	run->n_waiting = 0;
	run->in_flight = 0;
	run->settled = 0;
	run->hold_until_ms = 0;
	run->last_ack_ms = 0;
	run->stopping = NULL;
	run->requests = run->retries = 0;
	run->events_acked = run->accepted = 0;
	run->server_unique = run->server_duplicates = 0;
	run->answers_with_counts = run->answers_without_accepted = 0;
	run->cap_latency = n + 16;
	run->latency_ms = AggrMalloc(sizeof(double) * (size_t) run->cap_latency);
	run->n_latency = 0;
	AggrRunBegin(run);
}

void
AggrRunBegin(AggrRun *run)
{
	run->start_ms = run->end_ms = run->last_progress_ms = AggrNowMs();
}

void
AggrRunFree(AggrRun *run)
{
	free(run->state);
	free(run->waiting);
	free(run->latency_ms);
	run->state = NULL;
	run->waiting = NULL;
	run->latency_ms = NULL;
}

/* Why the run starts no more requests, or NULL. */
static const char *
Stopping(AggrRun *run)
{
	if (run->interrupted != NULL && *run->interrupted)
		run->stopping = "interrupted";
	return run->stopping;
}

int
AggrRunNext(AggrRun *run, double now_ms, double *wait_ms)
{
	int			best = -1;

	*wait_ms = -1;
	if (Stopping(run))
		return -1;
	if (now_ms < run->hold_until_ms)
	{
		*wait_ms = run->hold_until_ms - now_ms;
		return -1;
	}
	/* the retry due first, if it is due */
	for (int i = 0; i < run->n_waiting; i++)
		if (best < 0 || run->state[run->waiting[i]].due_ms < run->state[run->waiting[best]].due_ms)
			best = i;
	if (best >= 0 && run->state[run->waiting[best]].due_ms <= now_ms)
	{
		int			b = run->waiting[best];

		run->waiting[best] = run->waiting[--run->n_waiting];
		return b;
	}
	if (run->next_new < run->stream->n_batches)
	{
		/* --rate: batch k starts no sooner than k batches' worth of events */
		double		due = run->rate_per_s <= 0 ? 0 : run->start_ms +
			1000.0 * run->next_new * run->stream->batch_size / run->rate_per_s;

		if (due <= now_ms)
			return run->next_new++;
		if (*wait_ms < 0 || due - now_ms < *wait_ms)
			*wait_ms = due - now_ms;
		if (best >= 0 && run->state[run->waiting[best]].due_ms - now_ms < *wait_ms)
			*wait_ms = run->state[run->waiting[best]].due_ms - now_ms;
		return -1;
	}
	if (best >= 0)
		*wait_ms = run->state[run->waiting[best]].due_ms - now_ms;
	return -1;
}

void
AggrRunStarted(AggrRun *run, int b)
{
	run->in_flight++;
	run->requests++;
	if (run->state[b].attempts > 0)
		run->retries++;
}

void
AggrRunFinished(AggrRun *run, int b, AggrAttempt attempt, double now_ms,
				double latency_ms, double retry_after_ms, const char *error,
				const AggrAnswer *answer)
{
	AggrBatchState *st = &run->state[b];
	const AggrBatch *batch = &run->stream->batches[b];
	double		delay;

	run->in_flight--;
	run->end_ms = now_ms;
	if (run->n_latency == run->cap_latency)
	{
		run->cap_latency *= 2;
		run->latency_ms = AggrRealloc(run->latency_ms, sizeof(double) * (size_t) run->cap_latency);
	}
	run->latency_ms[run->n_latency++] = latency_ms;

	if (error)
		snprintf(st->last_error, sizeof(st->last_error), "%s", error);
	if (attempt == AGGR_ATTEMPT_ACKED)
	{
		run->last_ack_ms = now_ms;
		run->events_acked += batch->count;
		if (answer == NULL || answer->accepted < 0)
		{
			run->answers_without_accepted++;
			run->accepted += batch->count;
		}
		else
			run->accepted += answer->accepted;
		if (answer && answer->unique >= 0 && answer->duplicates >= 0)
		{
			run->answers_with_counts++;
			run->server_unique += answer->unique;
			run->server_duplicates += answer->duplicates;
		}
	}
	delay = AggrRetryRecord(st, &run->policy, attempt, now_ms, retry_after_ms, &run->rng);
	if (delay >= 0)
	{
		/*
		 * the whole run backs off with this batch: no new request before its
		 * retry
		 */
		run->waiting[run->n_waiting++] = b;
		if (st->due_ms > run->hold_until_ms)
			run->hold_until_ms = st->due_ms;
	}
	else
	{
		run->settled++;
		if (st->outcome != AGGR_OUTCOME_ACKED && attempt != AGGR_ATTEMPT_REJECTED &&
			run->last_ack_ms < st->first_failure_ms)
			run->stopping = "not sent: the server kept failing for the whole retry bound";
	}
}

bool
AggrRunDone(AggrRun *run)
{
	if (run->settled == run->stream->n_batches)
		return true;
	if (!Stopping(run) || run->in_flight > 0)
		return false;
	for (int i = 0; i < run->n_waiting; i++)
		AggrRetryAbandon(&run->state[run->waiting[i]], run->stopping);
	run->settled += run->n_waiting;
	run->n_waiting = 0;
	for (; run->next_new < run->stream->n_batches; run->next_new++)
	{
		AggrRetryAbandon(&run->state[run->next_new], run->stopping);
		run->settled++;
	}
	return true;
}

void
AggrRunProgress(AggrRun *run, double now_ms, bool last)
{
	double		every = (run->progress == AGGR_PROGRESS_TTY) ? PROGRESS_TTY_MS : PROGRESS_LINES_MS;
	double		secs = (now_ms - run->start_ms) / 1000.0;
	double		rate = secs > 0 ? run->events_acked / secs : 0;

	if (run->progress == AGGR_PROGRESS_NONE)
		return;
	if (!last && now_ms - run->last_progress_ms < every)
		return;
	if (run->progress == AGGR_PROGRESS_LINES && last)
		return;					/* the summary follows */
	run->last_progress_ms = now_ms;
	fprintf(stderr, "%sacked %ld/%ld events, %.0f events/s, %ld retries, %d in flight%s",
			run->progress == AGGR_PROGRESS_TTY ? "\r\033[K" : "aggr-publisher: ",
			run->events_acked, run->stream->n_events, rate, run->retries,
			run->in_flight,
			(run->progress == AGGR_PROGRESS_TTY && !last) ? "" : "\n");
	fflush(stderr);
}

static int
CompareDouble(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return (x > y) - (x < y);
}

double
AggrRunLatency(AggrRun *run, double percentile)
{
	long		rank;

	if (run->n_latency == 0)
		return 0;
	qsort(run->latency_ms, (size_t) run->n_latency, sizeof(double), CompareDouble);
	rank = (long) ceil(percentile / 100.0 * (double) run->n_latency);
	if (rank < 1)
		rank = 1;
	if (rank > run->n_latency)
		rank = run->n_latency;
	return run->latency_ms[rank - 1];
}

long
AggrRunEventsWith(const AggrRun *run, AggrOutcome outcome)
{
	long		n = 0;

	for (int b = 0; b < run->stream->n_batches; b++)
		if (run->state[b].outcome == outcome)
			n += run->stream->batches[b].count;
	return n;
}
