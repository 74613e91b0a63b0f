/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  The sidecar's own counters (HTTP requests by route and status, a
 *	  request latency histogram per route, events accepted) and their
 *	  Prometheus text rendering.  Counters are lock-free atomics written
 *	  by every HTTP thread; GET /metrics reads them without stopping anyone.
 *	  The aggr numbers (received, unique, duplicates, rejected, queue
 *	  depth, per-topic counts) are added by http.c from aggr_stats().
 *
 *-------------------------------------------------------------------------
 */
#include <stdatomic.h>

#include "sidecar.h"

#define MAX_STATUS 600

/* upper bounds of the latency buckets, in microseconds */
static const int64_t bucket_us[] = {
	1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
	1000000, 2500000, 5000000, 10000000
};

#define NBUCKETS ((int) (sizeof(bucket_us) / sizeof(bucket_us[0])))

static const char *const route_names[AGGR_NUM_ROUTES] = {
	[AGGR_ROUTE_PUBLISH] = "/publish",
	[AGGR_ROUTE_EVENTS] = "/events",
	[AGGR_ROUTE_STATS] = "/stats",
	[AGGR_ROUTE_HEALTHZ] = "/healthz",
	[AGGR_ROUTE_METRICS] = "/metrics",
	[AGGR_ROUTE_OPENAPI] = "/openapi.json",
	[AGGR_ROUTE_STREAM] = "/events/stream",
	[AGGR_ROUTE_OTHER] = "other",
};

static atomic_uint_fast64_t requests[AGGR_NUM_ROUTES][MAX_STATUS];
static atomic_uint_fast64_t latency[AGGR_NUM_ROUTES][NBUCKETS];
static atomic_uint_fast64_t latency_count[AGGR_NUM_ROUTES];
static atomic_uint_fast64_t latency_sum_us[AGGR_NUM_ROUTES];
static atomic_uint_fast64_t events_accepted;
static atomic_int_fast64_t streams_open;
static atomic_uint_fast64_t streams_dropped;

const char *
AggrRouteName(AggrRoute route)
{
	return route_names[route];
}

void
AggrMetricsRecord(AggrRoute route, int status, int64_t duration_us,
				  long accepted)
{
	if (status < 0 || status >= MAX_STATUS)
		status = 0;
	if (duration_us < 0)
		duration_us = 0;
	atomic_fetch_add_explicit(&requests[route][status], 1,
							  memory_order_relaxed);
	for (int i = 0; i < NBUCKETS; i++)
		if (duration_us <= bucket_us[i])
		{
			atomic_fetch_add_explicit(&latency[route][i], 1,
									  memory_order_relaxed);
			break;
		}
	atomic_fetch_add_explicit(&latency_count[route], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&latency_sum_us[route], duration_us,
							  memory_order_relaxed);
	if (accepted > 0)
		atomic_fetch_add_explicit(&events_accepted, accepted,
								  memory_order_relaxed);
}

/* stream.c: a subscriber came (1) or went (-1); one was dropped as too slow */
void
AggrMetricsStreams(int opened, int dropped_slow)
{
	atomic_fetch_add_explicit(&streams_open, opened, memory_order_relaxed);
	atomic_fetch_add_explicit(&streams_dropped, dropped_slow, memory_order_relaxed);
}

void
AggrMetricsRender(AggrBuf *buf)
{
	AggrBufAppendStr(buf,
					 "# HELP aggr_http_requests_total HTTP requests answered, by route and status.\n"
					 "# TYPE aggr_http_requests_total counter\n");
	for (int r = 0; r < AGGR_NUM_ROUTES; r++)
		for (int s = 0; s < MAX_STATUS; s++)
		{
			uint64_t	n = atomic_load_explicit(&requests[r][s],
												 memory_order_relaxed);

			if (n > 0)
				AggrBufPrintf(buf,
							  "aggr_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
							  route_names[r], s, (unsigned long long) n);
		}

	AggrBufAppendStr(buf,
					 "# HELP aggr_http_request_duration_seconds Time from request headers to the last byte of the answer.\n"
					 "# TYPE aggr_http_request_duration_seconds histogram\n");
	for (int r = 0; r < AGGR_NUM_ROUTES; r++)
	{
		uint64_t	cumulative = 0;
		uint64_t	count = atomic_load_explicit(&latency_count[r],
												 memory_order_relaxed);

		if (count == 0)
			continue;
		for (int i = 0; i < NBUCKETS; i++)
		{
			cumulative += atomic_load_explicit(&latency[r][i],
											   memory_order_relaxed);
			AggrBufPrintf(buf,
						  "aggr_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
						  route_names[r], bucket_us[i] / 1e6,
						  (unsigned long long) cumulative);
		}
		AggrBufPrintf(buf,
					  "aggr_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n"
					  "aggr_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n"
					  "aggr_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
					  route_names[r], (unsigned long long) count,
					  route_names[r],
					  atomic_load_explicit(&latency_sum_us[r],
										   memory_order_relaxed) / 1e6,
					  route_names[r], (unsigned long long) count);
	}

	AggrBufPrintf(buf,
				  "# HELP aggr_http_events_accepted_total Events accepted by POST /publish.\n"
				  "# TYPE aggr_http_events_accepted_total counter\n"
				  "aggr_http_events_accepted_total %llu\n"
				  "# HELP aggr_http_streams Open GET /events/stream subscribers.\n"
				  "# TYPE aggr_http_streams gauge\n"
				  "aggr_http_streams %lld\n"
				  "# HELP aggr_http_streams_dropped_total Subscribers disconnected for reading too slowly.\n"
				  "# TYPE aggr_http_streams_dropped_total counter\n"
				  "aggr_http_streams_dropped_total %llu\n",
				  (unsigned long long) atomic_load(&events_accepted),
				  (long long) atomic_load(&streams_open),
				  (unsigned long long) atomic_load(&streams_dropped));
}
