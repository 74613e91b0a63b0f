/*
 * stats.c
 *		The runtime half of aggr_stats() and aggr_health(): what lives outside
 *		the tables (consumers in shared memory, the broker's queue).  The
 *		counters themselves are summed in SQL (aggr--0.1.sql), because they
 *		change in the same transactions as the events.
 */
#include "postgres.h"

#include "aggr.h"
#include "broker.h"
#include "../bgworker/slots.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(aggr_runtime_status);

static void
AppendWorkers(StringInfo buf)
{
	TimestampTz now = GetCurrentTimestamp();
	AggrWorkerSlot slots[AGGR_MAX_WORKERS];
	bool		first = true;

	appendStringInfoString(buf, ", \"workers\": [");
	if (AggrSlotsRead(slots))
	{
		for (int i = 0; i < AGGR_MAX_WORKERS; i++)
		{
			AggrWorkerSlot *w = &slots[i];

			if (w->pid == 0 && w->started_at == 0)
				continue;
			appendStringInfo(buf, "%s{\"worker\": %d, \"pid\": %d, \"running\": %s, "
							 "\"broker_up\": %s, \"batches\": " INT64_FORMAT
							 ", \"events\": " INT64_FORMAT ", \"rejected\": " INT64_FORMAT
							 ", \"seconds_since_commit\": %s}",
							 first ? "" : ", ", i + 1, (int) w->pid,
							 w->pid != 0 ? "true" : "false",
							 w->broker_up ? "true" : "false",
							 w->batches, w->events, w->rejected,
							 w->last_commit == 0 ? "null" :
							 psprintf("%.3f", (now - w->last_commit) / 1000000.0));
			first = false;
		}
	}
	appendStringInfoChar(buf, ']');
}

/*
 * aggr.runtime_status() -> jsonb: worker_count (live), workers_configured,
 * preloaded, broker ("disabled", "ok", "down", or "needs_preload": set but
 * aggr was not preloaded), broker_error, queue_depth, and one entry per
 * consumer slot.
 */
Datum
aggr_runtime_status(PG_FUNCTION_ARGS)
{
	StringInfoData buf;
	bool		broker = AggrBrokerConfigured();

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"worker_count\": %d, \"workers_configured\": %d, \"preloaded\": %s",
					 AggrLiveWorkerCount(),
					 (broker && AggrSlotsAttached()) ? aggr_worker_count : 0,
					 AggrSlotsAttached() ? "true" : "false");
	if (AggrBrokerWantedWithoutPreload())
		appendStringInfoString(&buf, ", \"broker\": \"needs_preload\", \"queue_depth\": null");
	else if (!broker)
		appendStringInfoString(&buf, ", \"broker\": \"disabled\"");
	else
	{
		char	   *error = NULL;
		int64		depth = AggrBrokerQueueDepth(&error);

		if (depth >= 0)
			appendStringInfo(&buf, ", \"broker\": \"ok\", \"queue_depth\": " INT64_FORMAT, depth);
		else
		{
			appendStringInfoString(&buf, ", \"broker\": \"down\", \"queue_depth\": null, \"broker_error\": ");
			escape_json(&buf, error);
		}
	}
	AppendWorkers(&buf);
	appendStringInfoChar(&buf, '}');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
