/*
 * retry.h
 *		When to retry a batch, how long to wait, and what its outcome is.
 */
#ifndef AGGR_RETRY_H
#define AGGR_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#define AGGR_RETRY_BASE_MS 100.0
#define AGGR_RETRY_CAP_MS 5000.0
#define AGGR_RETRY_GIVE_UP_MS 60000.0

typedef struct AggrRetryPolicy
{
	double		base_ms;		/* nominal delay before the first retry */
	double		cap_ms;			/* no computed delay is longer */
	double		give_up_ms;		/* no retry starts later than this after the
								 * batch first failed */
} AggrRetryPolicy;

/* What one attempt at delivering a batch established. */
typedef enum AggrAttempt
{
	AGGR_ATTEMPT_ACKED,			/* 2xx / Redis reply: the server has it */
	AGGR_ATTEMPT_NOT_APPLIED,	/* transient, and certainly not applied */
	AGGR_ATTEMPT_MAYBE_APPLIED, /* transient, but may have been applied */
	AGGR_ATTEMPT_REJECTED		/* definitive refusal, not retried */
} AggrAttempt;

/* A batch's outcome, as the ledger writes it. */
typedef enum AggrOutcome
{
	AGGR_OUTCOME_PENDING,
	AGGR_OUTCOME_ACKED,			/* in a request answered 2xx */
	AGGR_OUTCOME_FAILED,		/* definitively not applied */
	AGGR_OUTCOME_UNKNOWN		/* some attempt may or may not have been
								 * applied */
} AggrOutcome;

typedef struct AggrBatchState
{
	AggrOutcome outcome;
	int			attempts;
	int			maybe_applied;	/* failed attempts that may have been applied */
	double		first_failure_ms;
	double		due_ms;			/* when the next attempt may start */
	char		last_error[160];
} AggrBatchState;

extern const char *AggrOutcomeName(AggrOutcome outcome);

/*
 * Classify an HTTP attempt: transport_error when no status was received,
 * body_sent when the whole request left this side.
 */
extern AggrAttempt AggrClassifyHttp(long status, bool transport_error, bool body_sent,
									bool outcome_unknown);

/* Classify a Redis error reply (the command was not executed). */
extern AggrAttempt AggrClassifyRedisError(const char *message);

/*
 * Delay before retry number retry (1 = first retry) of a batch that has been
 * failing for failing_ms: capped exponential backoff with jitter in
 * [d/2, d], raised to retry_after_ms when the server asked (< 0: it did not).
 * Returns -1 when that retry would start after the give-up bound.
 */
extern double AggrRetryDelay(const AggrRetryPolicy *policy, int retry,
							 double failing_ms, double retry_after_ms,
							 uint64_t *rng);

/*
 * Record an attempt that ended at now_ms.  Returns the delay before the next
 * attempt, or -1 when the batch is settled (state->outcome is then final).
 */
extern double AggrRetryRecord(AggrBatchState *state, const AggrRetryPolicy *policy,
							  AggrAttempt attempt, double now_ms,
							  double retry_after_ms, uint64_t *rng);

/* Settle a batch that will not be tried again (interrupted run). */
extern void AggrRetryAbandon(AggrBatchState *state, const char *why);

#endif							/* AGGR_RETRY_H */
