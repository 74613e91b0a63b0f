/*
 * retry.c
 *		The retry policy of aggr-publisher and the outcome of each batch.
 *
 * A batch is retried after 429, 503, any other 5xx, a connection error, or a
 * transient Redis error, with capped exponential backoff and jitter; a
 * Retry-After from the server is a lower bound on the wait.  It is never
 * dropped silently: it ends acked, or failed/unknown with the reason kept,
 * once a retry would start more than give_up_ms after its first failure.
 * Other 4xx are definitive and not retried.
 *
 * The outcome follows what the server may have done, for the ledger that
 * the fault suite checks: acked if an attempt was answered 2xx; otherwise
 * unknown if any attempt may have been applied (5xx other than 503, an
 * answer saying "outcome": "unknown", or the connection lost after the whole
 * request was sent); otherwise failed.
 */
#include <stdio.h>
#include <string.h>

#include "gen.h"
#include "retry.h"

const char *
AggrOutcomeName(AggrOutcome outcome)
{
	switch (outcome)
	{
		case AGGR_OUTCOME_ACKED:
			return "acked";
		case AGGR_OUTCOME_FAILED:
			return "failed";
		case AGGR_OUTCOME_UNKNOWN:
			return "unknown";
		case AGGR_OUTCOME_PENDING:
			break;
	}
	return "pending";
}

/*
 * outcome_unknown: the answer said "outcome": "unknown" (aggr-sidecar lost
 * the database while the statement ran, so it may have committed).
 */
AggrAttempt
AggrClassifyHttp(long status, bool transport_error, bool body_sent, bool outcome_unknown)
{
	if (transport_error)
		return body_sent ? AGGR_ATTEMPT_MAYBE_APPLIED : AGGR_ATTEMPT_NOT_APPLIED;
	if (status >= 200 && status <= 299)
		return AGGR_ATTEMPT_ACKED;
	if (outcome_unknown)
		return AGGR_ATTEMPT_MAYBE_APPLIED;
	if (status == 429 || status == 503)
		return AGGR_ATTEMPT_NOT_APPLIED;
	if (status >= 500 && status <= 599)
		return AGGR_ATTEMPT_MAYBE_APPLIED;
	return AGGR_ATTEMPT_REJECTED;
}

AggrAttempt
AggrClassifyRedisError(const char *message)
{
	static const char *const transient[] = {
		"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "OOM",
		"READONLY", "NOREPLICAS"
	};

	for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++)
	{
		size_t		n = strlen(transient[i]);

		if (message && strncmp(message, transient[i], n) == 0 &&
			(message[n] == ' ' || message[n] == '\0'))
			return AGGR_ATTEMPT_NOT_APPLIED;
	}
	return AGGR_ATTEMPT_REJECTED;
}

double
AggrRetryDelay(const AggrRetryPolicy *policy, int retry, double failing_ms,
			   double retry_after_ms, uint64_t *rng)
{
	double		nominal = policy->base_ms;
	double		delay;

	for (int i = 1; i < retry && nominal < policy->cap_ms; i++)
		nominal *= 2;
	if (nominal > policy->cap_ms)
		nominal = policy->cap_ms;
	delay = nominal / 2 + AggrRandUnit(rng) * nominal / 2;
	if (retry_after_ms > delay)
		delay = retry_after_ms;
	if (failing_ms + delay > policy->give_up_ms)
		return -1;
	return delay;
}

double
AggrRetryRecord(AggrBatchState *state, const AggrRetryPolicy *policy,
				AggrAttempt attempt, double now_ms, double retry_after_ms,
				uint64_t *rng)
{
	double		delay;

	state->attempts++;
	switch (attempt)
	{
		case AGGR_ATTEMPT_ACKED:
			state->outcome = AGGR_OUTCOME_ACKED;
			state->last_error[0] = '\0';
			return -1;
		case AGGR_ATTEMPT_REJECTED:
			state->outcome = state->maybe_applied > 0 ? AGGR_OUTCOME_UNKNOWN : AGGR_OUTCOME_FAILED;
			return -1;
		case AGGR_ATTEMPT_MAYBE_APPLIED:
			state->maybe_applied++;
			break;
		case AGGR_ATTEMPT_NOT_APPLIED:
			break;
	}
	if (state->attempts == 1)
		state->first_failure_ms = now_ms;
	delay = AggrRetryDelay(policy, state->attempts, now_ms - state->first_failure_ms,
						   retry_after_ms, rng);
	if (delay < 0)
	{
		AggrRetryAbandon(state, "gave up retrying");
		return -1;
	}
	state->due_ms = now_ms + delay;
	return delay;
}

void
AggrRetryAbandon(AggrBatchState *state, const char *why)
{
	size_t		len = strlen(state->last_error);

	state->outcome = state->maybe_applied > 0 ? AGGR_OUTCOME_UNKNOWN : AGGR_OUTCOME_FAILED;
	if (len == 0)
		snprintf(state->last_error, sizeof(state->last_error), "%s", why);
	else if (len + 3 < sizeof(state->last_error))
		snprintf(state->last_error + len, sizeof(state->last_error) - len, " (%s)", why);
}
