/*
 * run.h
 *		The state of one publishing run, shared by the HTTP and Redis senders:
 *		which batch goes next, retries, counters, latencies, progress.
 */
#ifndef AGGR_RUN_H
#define AGGR_RUN_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "gen.h"
#include "retry.h"

typedef enum AggrProgressMode
{
	AGGR_PROGRESS_NONE,
	AGGR_PROGRESS_TTY,			/* one line redrawn in place, at most 4 per
								 * second */
	AGGR_PROGRESS_LINES			/* a plain line every few seconds */
} AggrProgressMode;

/* What a successful answer said; fields the answer lacked are -1. */
typedef struct AggrAnswer
{
	long		accepted;
	long		unique;
	long		duplicates;
} AggrAnswer;

typedef struct AggrRun
{
	/* set by the caller before AggrRunInit */
	const AggrStream *stream;
	AggrRetryPolicy policy;
	int			concurrency;
	long		rate_per_s;		/* new batches paced to this many events/s; 0
								 * = no pacing */
	double		timeout_ms;		/* one request, connection included */
	const char *token;			/* bearer token, or NULL */
	bool		ndjson;			/* NDJSON bodies (AggrGenOptions) */
	bool		gzip;			/* send them gzip-compressed */
	AggrProgressMode progress;
	volatile sig_atomic_t *interrupted;

	/* scheduling */
	uint64_t	rng;
	AggrBatchState *state;		/* one per batch */
	int			next_new;		/* next batch never tried */
	int		   *waiting;		/* batches waiting for a retry */
	int			n_waiting;
	int			in_flight;
	int			settled;		/* batches with a final outcome */
	double		hold_until_ms;	/* no request starts before this */
	double		last_ack_ms;	/* when a request last succeeded */
	const char *stopping;		/* why no new request starts, or NULL */

	/* counters */
	long		requests;
	long		retries;
	long		events_acked;
	long		accepted;		/* sum of the answers' "accepted" */
	long		server_unique;	/* sums of "unique" / "duplicates" */
	long		server_duplicates;
	long		answers_with_counts;	/* 2xx answers carrying both */
	long		answers_without_accepted;
	double	   *latency_ms;
	long		n_latency;
	long		cap_latency;
	double		start_ms;
	double		end_ms;
	double		last_progress_ms;
} AggrRun;

extern void AggrRunInit(AggrRun *run, uint64_t seed);
extern void AggrRunFree(AggrRun *run);

/* The timed part starts now. */
extern void AggrRunBegin(AggrRun *run);

/*
 * The batch to send now, or -1.  With -1, *wait_ms says how long until one
 * may be ready (-1 when nothing is left to send; wait for the in-flight ones).
 */
extern int	AggrRunNext(AggrRun *run, double now_ms, double *wait_ms);

/* A request for batch b has started. */
extern void AggrRunStarted(AggrRun *run, int b);

/*
 * A request for batch b has ended: attempt classifies it, error describes a
 * failure (NULL on success), answer holds a 2xx answer's counts (or NULL).
 */
extern void AggrRunFinished(AggrRun *run, int b, AggrAttempt attempt,
							double now_ms, double latency_ms,
							double retry_after_ms, const char *error,
							const AggrAnswer *answer);

/* True when every batch is settled; settles the rest after an interrupt. */
extern bool AggrRunDone(AggrRun *run);

extern void AggrRunProgress(AggrRun *run, double now_ms, bool last);

/* Latency percentile (0..100) over all requests, nearest rank; 0 if none. */
extern double AggrRunLatency(AggrRun *run, double percentile);

/* Events of batches that ended with the given outcome. */
extern long AggrRunEventsWith(const AggrRun *run, AggrOutcome outcome);

#endif							/* AGGR_RUN_H */
