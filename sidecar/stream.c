/*-------------------------------------------------------------------------
 *
 * stream.c
 *	  GET /events/stream: the events committed from now on (or after a
 *	  given seq) as Server-Sent Events, one "id: <seq>" and "data: <the
 *	  JSON of GET /events>" per event.
 *
 *	  One hub thread owns one libpq connection.  It LISTENs on aggr_events
 *	  (the ingest notifies it at every commit that stored events) and then
 *	  reads, through aggr_events(), which never pages past a later commit,
 *	  every event after its cursor into one ring that all subscribers share:
 *	  one query per wake-up, whatever the number of subscribers.  While
 *	  aggr_events_watermark() says events wait above the watermark for an
 *	  earlier transaction, which may end without a notification (a
 *	  rollback), it reads again every 100 ms.  The ring holds every event
 *	  with floor < seq <= cursor, oldest first, up to --stream-buffer bytes.
 *
 *	  A subscriber is a topic (or all) and a position: every event of its
 *	  topic up to the position was sent to it.  When its socket can take
 *	  bytes, MHD calls StreamRead:
 *	  - position >= floor: the ring's next events of its topic; when there
 *		are none, the connection is suspended until the hub has more;
 *	  - position < floor, resuming from an older id: the hub reads pages
 *		from aggr_events(topic, after = position) for it until it reaches
 *		the ring (catching up);
 *	  - position < floor after it had reached the ring: it read too slowly
 *		and the ring turned over: a final "event: error" says so and where
 *		to resume, and the stream ends.  A slow reader costs at most its
 *		share of the ring, never the hub's or another subscriber's time.
 *	  A comment line every 15 s keeps idle streams alive.  When the hub's
 *	  connection is lost, or on shutdown, every stream ends with a final
 *	  event; clients resume by Last-Event-ID, and nothing is skipped.
 *
 *	  Locking: hub.lock guards the ring and every Stream.  A suspended
 *	  connection is resumed outside the lock, after it was marked resumed
 *	  under it: a suspended connection cannot close, so MHD cannot free
 *	  its Stream in between.  A Stream the hub is reading a page for is
 *	  freed by the hub when MHD has let go of it meanwhile.
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "sidecar.h"

#define RING_PAGE_EVENTS 1000	/* events per hub read */
#define RING_MIN_SLOTS 4096		/* the ring's slots at least */
#define CATCH_UP_PAGE_EVENTS 200	/* events per catch-up read */
#define CATCH_UP_PAGE_BYTES (256 * 1024)	/* and about this many bytes */
#define STREAM_BUFFER_KEEP (256 * 1024) /* a larger stream buffer is let go */
#define PENDING_POLL_MS 100		/* while events wait above the watermark */
#define RECONNECT_MS 1000
#define RETRY_MS 1000			/* the SSE retry: clients wait this long */
#define STREAM_SNDBUF (64 * 1024)	/* a stream socket's kernel send buffer */
#define SLOW_US 1000000			/* behind and not served this long: too slow */

typedef struct RingEvent
{
	int64_t		seq;
	char	   *topic;
	uint64_t	topic_hash;		/* TopicHash(topic) */
	char	   *frame;			/* "id: ...\ndata: ...\n\n" */
	size_t		frame_len;
	size_t		held;			/* its bytes against --stream-buffer: frame,
								 * topic and slot */
} RingEvent;

typedef struct Stream
{
	struct Stream *next;
	struct Stream *prev;
	struct MHD_Connection *conn;
	char	   *topic;			/* NULL: every topic */
	uint64_t	topic_hash;
	int64_t		pos;
	int64_t		served_us;		/* last took bytes without a stall, asked for
								 * more (Refill), or was woken */
	unsigned	fetch_pass;		/* the hub pass that read its last page */
	bool		started;		/* the retry line was sent */
	bool		suspended;
	bool		catching_up;	/* reads pages from the database */
	bool		fetch_wanted;	/* ... and waits for the hub to read one */
	bool		fetching;		/* the hub is reading one */
	bool		freed;			/* MHD let go of it while fetching */
	bool		heartbeat;
	const char *end_reason;		/* set: send the final event, then end */
	bool		end_sent;
	AggrBuf		out;			/* frames not yet handed to MHD */
	size_t		out_off;
} Stream;

static struct
{
	pthread_mutex_t lock;
	RingEvent  *ring;			/* circular, oldest at head */
	size_t		cap;
	size_t		head;
	size_t		count;
	size_t		bytes;
	int64_t		floor;			/* the ring holds every event in (floor,
								 * cursor] */
	int64_t		cursor;
	bool		connected;
	bool		stopping;
	Stream	   *streams;
	unsigned	nstreams;
	int			wake[2];		/* a byte wakes the hub */
	pthread_t	thread;
	PGconn	   *conn;			/* the hub thread's alone */
	bool		prepared;		/* page_sql is prepared on conn */
	int64_t		next_heartbeat_us;	/* the hub thread's alone */
}			hub = {.lock = PTHREAD_MUTEX_INITIALIZER,.wake = {-1, -1}};

static void
WakeHub(void)
{
	char		c = 0;

	if (write(hub.wake[1], &c, 1) < 0)
	{
		/* the pipe is full: the hub is awake already */
	}
}

/* ---- the ring (hub.lock held) ---- */

static RingEvent *
RingAt(size_t i)
{
	return &hub.ring[(hub.head + i) % hub.cap];
}

static void
RingDropOldest(void)
{
	RingEvent  *e = RingAt(0);

	hub.floor = e->seq;
	hub.bytes -= e->held;
	free(e->topic);
	free(e->frame);
	hub.head = (hub.head + 1) % hub.cap;
	hub.count--;
}

/*
 * The ring holds what --stream-buffer allows, however small the events:
 * full by count, it doubles (oldest first again, at index 0); once nobody
 * listens and it is empty, it goes back to RING_MIN_SLOTS.
 */
static void
RingResize(size_t cap)
{
	RingEvent  *ring = AggrCalloc(cap, sizeof(RingEvent));

	for (size_t i = 0; i < hub.count; i++)
		ring[i] = *RingAt(i);
	free(hub.ring);
	hub.ring = ring;
	hub.cap = cap;
	hub.head = 0;
}

/*
 * FNV-1a: every subscriber looks at every event in the ring, so a topic is
 * compared as a number first (a strcmp per event and subscriber took a
 * fifth of the sidecar's CPU with 200 subscribers on 10 topics).
 */
static uint64_t
TopicHash(const char *topic)
{
	uint64_t	h = 14695981039346656037ULL;

	for (const unsigned char *p = (const unsigned char *) topic; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h;
}

static void
RingAppend(int64_t seq, const char *topic, const char *json, size_t json_len)
{
	AggrBuf		frame;
	RingEvent  *e;
	size_t		held;

	AggrBufInit(&frame, json_len + 32);
	AggrBufPrintf(&frame, "id: %" PRId64 "\ndata: ", seq);
	AggrBufAppend(&frame, json, json_len);
	AggrBufAppendStr(&frame, "\n\n");
	/* a slot counts twice: the ring doubles */
	held = frame.len + strlen(topic) + 1 + 2 * sizeof(RingEvent);
	while (hub.count > 0 && hub.bytes + held > aggr_config.stream_buffer)
		RingDropOldest();
	if (hub.count == hub.cap)
		RingResize(hub.cap * 2);
	e = RingAt(hub.count);
	e->seq = seq;
	e->topic = AggrStrdup(topic);
	e->topic_hash = TopicHash(topic);
	e->frame = frame.data;
	e->frame_len = frame.len;
	e->held = held;
	hub.count++;
	hub.bytes += held;
	hub.cursor = seq;
}

/* the index of the first event after seq */
static size_t
RingFirstAfter(int64_t seq)
{
	size_t		lo = 0;
	size_t		hi = hub.count;

	while (lo < hi)
	{
		size_t		mid = lo + (hi - lo) / 2;

		if (RingAt(mid)->seq <= seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool
TopicMatches(const Stream *s, const RingEvent *e)
{
	return s->topic == NULL ||
		(s->topic_hash == e->topic_hash && strcmp(s->topic, e->topic) == 0);
}

/* ---- one subscriber (hub.lock held) ---- */

/*
 * The final event.  Its id, like the first message's and each heartbeat's,
 * is where the stream stands: every event of its topic up to it was sent,
 * so a client that reconnects with it as Last-Event-ID misses nothing.
 */
static void
AppendEndEvent(AggrBuf *out, const char *why, int64_t id, int64_t resume_after)
{
	AggrBufAppendStr(out, "event: error\n");
	if (id >= 0)
		AggrBufPrintf(out, "id: %" PRId64 "\n", id);
	AggrBufAppendStr(out, "data: {\"error\":");
	AggrBufJsonString(out, why);
	if (resume_after >= 0)
		AggrBufPrintf(out, ",\"resume_after\":%" PRId64, resume_after);
	AggrBufAppendStr(out, "}\n\n");
}

static void
AppendFinalEvent(Stream *s)
{
	AppendEndEvent(&s->out, s->end_reason, s->pos, s->pos);
	s->end_sent = true;
}

/* the ring's next events of s's topic, about max bytes; false: none */
static bool
FillFromRing(Stream *s, size_t max)
{
	size_t		before = s->out.len;

	for (size_t i = RingFirstAfter(s->pos); i < hub.count; i++)
	{
		RingEvent  *e = RingAt(i);

		if (s->out.len - before >= max)
			return true;
		if (TopicMatches(s, e))
			AggrBufAppend(&s->out, e->frame, e->frame_len);
		s->pos = e->seq;
	}
	/* every event up to the cursor was looked at */
	if (s->pos < hub.cursor)
		s->pos = hub.cursor;
	return s->out.len > before;
}

/* queue what s should be sent next; false: nothing yet */
static bool
Refill(Stream *s, size_t max)
{
	int64_t		now = AggrNowUs();
	bool		idle = now - s->served_us > SLOW_US;

	s->served_us = now;
	if (!s->started)
	{
		AggrBufPrintf(&s->out, "retry: %d\nid: %" PRId64 "\n\n", RETRY_MS, s->pos);
		s->started = true;
		return true;
	}
	if (s->end_reason)
	{
		if (s->end_sent)
			return false;
		AppendFinalEvent(s);
		return true;
	}

	/*
	 * Behind the ring.  One that asked for nothing for a while (its socket
	 * took nothing, whether it was reading the ring or a catch-up page) is
	 * too slow; one that was only not yet run (just woken, just opened) is
	 * caught up from the table.  Decided before a heartbeat, which would make
	 * the stream look served.
	 */
	if (s->pos < hub.floor)
	{
		if (idle)
		{
			s->end_reason = "subscriber too slow: it fell more than --stream-buffer behind; resume after resume_after";
			AggrMetricsStreams(0, 1);
			AppendFinalEvent(s);
			return true;
		}
		s->catching_up = true;
	}
	if (s->heartbeat)
	{
		s->heartbeat = false;
		AggrBufPrintf(&s->out, ": heartbeat\nid: %" PRId64 "\n\n", s->pos);
		return true;
	}
	if (s->pos < hub.floor)
	{
		if (!s->fetching && !s->fetch_wanted)
		{
			s->fetch_wanted = true;
			WakeHub();
		}
		return false;
	}
	s->catching_up = false;
	return FillFromRing(s, max);
}

/* MHD asks for the stream's next bytes */
static ssize_t
StreamRead(void *cls, uint64_t offset, char *buf, size_t max)
{
	Stream	   *s = cls;
	size_t		n;

	(void) offset;
	pthread_mutex_lock(&hub.lock);
	if (s->out_off == s->out.len)
	{
		/* one large event or page must not stay the stream's for its life */
		if (s->out.cap > STREAM_BUFFER_KEEP)
		{
			AggrBufFree(&s->out);
			AggrBufInit(&s->out, 1024);
		}
		AggrBufReset(&s->out);
		s->out_off = 0;
		if (!Refill(s, max))
		{
			bool		ended = s->end_sent;

			if (!ended)
			{
				s->suspended = true;
				MHD_suspend_connection(s->conn);
			}
			pthread_mutex_unlock(&hub.lock);
			return ended ? MHD_CONTENT_READER_END_OF_STREAM : 0;
		}
	}
	n = s->out.len - s->out_off;
	if (n > max)
		n = max;
	memcpy(buf, s->out.data + s->out_off, n);
	s->out_off += n;

	/*
	 * Its socket took bytes: served now, however long a page takes to send;
	 * but after a stall of a second or more served_us stays, for Refill.
	 */
	if (n > 0)
	{
		int64_t		now = AggrNowUs();

		if (now - s->served_us <= SLOW_US)
			s->served_us = now;
	}
	pthread_mutex_unlock(&hub.lock);
	return (ssize_t) n;
}

static void
StreamDestroy(Stream *s)
{
	AggrBufFree(&s->out);
	free(s->topic);
	free(s);
}

/* MHD is done with the stream: the connection closed */
static void
StreamFree(void *cls)
{
	Stream	   *s = cls;

	pthread_mutex_lock(&hub.lock);
	if (s->prev)
		s->prev->next = s->next;
	else
		hub.streams = s->next;
	if (s->next)
		s->next->prev = s->prev;
	hub.nstreams--;
	AggrMetricsStreams(-1, 0);
	if (s->fetching)
		s->freed = true;
	else
		StreamDestroy(s);
	pthread_mutex_unlock(&hub.lock);
}

/*
 * The kernel's send buffer of a stream's socket, which Linux lets grow to
 * megabytes: kept small, it bounds what a subscriber that reads nothing
 * holds there, and one that reads too slowly is seen falling behind soon.
 */
static void
SmallSendBuffer(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	int			bytes = STREAM_SNDBUF;

	if (info)
		(void) setsockopt(info->connect_fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
}

static void
AddStreamHeaders(struct MHD_Response *resp)
{
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
}

/*
 * While the hub is not connected (a database restart): a stream that ends
 * at once with a final event, and an EventSource comes back after the
 * retry time by itself.  A 503 would make it give up for good (an
 * EventSource retries only a stream that was opened).  No id: the client
 * keeps its own Last-Event-ID.
 */
static struct MHD_Response *
NotConnectedYet(int64_t after)
{
	AggrBuf		body;
	struct MHD_Response *resp;

	AggrBufInit(&body, 256);
	AggrBufPrintf(&body, "retry: %d\n\n", RETRY_MS);
	AppendEndEvent(&body, "the event stream is not connected to the database yet; retrying",
				   -1, after);
	resp = MHD_create_response_from_buffer(body.len, body.data, MHD_RESPMEM_MUST_COPY);
	AggrBufFree(&body);
	if (resp)
		AddStreamHeaders(resp);
	return resp;
}

struct MHD_Response *
AggrStreamOpen(struct MHD_Connection *conn, const char *topic, int64_t after,
			   const char **refusal)
{
	struct MHD_Response *resp;
	Stream	   *s;

	pthread_mutex_lock(&hub.lock);
	if (hub.stopping)
	{
		pthread_mutex_unlock(&hub.lock);
		*refusal = "the server is shutting down";
		return NULL;
	}
	if (!hub.connected)
	{
		pthread_mutex_unlock(&hub.lock);
		if ((resp = NotConnectedYet(after)) == NULL)
			*refusal = "out of memory";
		return resp;
	}
	if (hub.nstreams >= aggr_config.max_streams)
	{
		pthread_mutex_unlock(&hub.lock);
		*refusal = "too many event streams (--max-streams)";
		return NULL;
	}
	s = AggrCalloc(1, sizeof(Stream));
	s->conn = conn;
	SmallSendBuffer(conn);
	s->topic = topic ? AggrStrdup(topic) : NULL;
	s->topic_hash = topic ? TopicHash(topic) : 0;
	s->pos = after >= 0 ? after : hub.cursor;
	s->catching_up = s->pos < hub.floor;
	s->served_us = AggrNowUs();
	AggrBufInit(&s->out, 1024);
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
											 StreamRead, s, StreamFree);
	if (resp == NULL)
	{
		pthread_mutex_unlock(&hub.lock);
		StreamDestroy(s);
		*refusal = "out of memory";
		return NULL;
	}
	s->next = hub.streams;
	if (hub.streams)
		hub.streams->prev = s;
	hub.streams = s;
	hub.nstreams++;
	AggrMetricsStreams(1, 0);
	pthread_mutex_unlock(&hub.lock);
	WakeHub();					/* the hub may be resting, reading nothing */
	AddStreamHeaders(resp);
	return resp;
}

/* ---- the hub ---- */

/*
 * Resume the suspended streams that pick(s) selects; pick runs under the
 * lock, the resumes after it (see the header).
 */
static void
ResumeStreams(bool (*pick) (Stream *s, void *arg), void *arg)
{
	struct MHD_Connection **conns;
	size_t		n = 0;

	pthread_mutex_lock(&hub.lock);
	conns = AggrMalloc(sizeof(*conns) * (hub.nstreams + 1));
	for (Stream *s = hub.streams; s; s = s->next)
		if (pick(s, arg) && s->suspended)
		{
			s->suspended = false;
			s->served_us = AggrNowUs();
			conns[n++] = s->conn;
		}
	pthread_mutex_unlock(&hub.lock);
	for (size_t i = 0; i < n; i++)
		MHD_resume_connection(conns[i]);
	free(conns);
}

static bool
PickToEnd(Stream *s, void *arg)
{
	if (s->end_reason == NULL)
		s->end_reason = arg;
	return true;
}

/* the events were reset: every stream ends, and resumes from the start */
static bool
PickToReset(Stream *s, void *arg)
{
	(void) arg;
	if (s->end_reason == NULL)
	{
		s->end_reason = "the events were reset (aggr was re-created); resume after 0";
		s->pos = 0;
	}
	return true;
}

static bool
PickForHeartbeat(Stream *s, void *arg)
{
	(void) arg;
	s->heartbeat = true;
	return true;
}

/* the ring's events after *arg (the cursor before a read) */
static bool
PickForNews(Stream *s, void *arg)
{
	int64_t		before = *(int64_t *) arg;

	if (s->catching_up || s->end_reason)
		return false;

	/*
	 * Idle while more came than the ring holds: woken (so not slow), Refill
	 * catches it up from the table.
	 */
	if (s->suspended && s->pos < hub.floor)
		return true;
	for (size_t i = RingFirstAfter(before); i < hub.count; i++)
		if (TopicMatches(s, RingAt(i)))
			return true;
	/* nothing for it: it has seen everything up to the cursor */
	if (s->suspended && s->pos >= before && s->pos < hub.cursor)
		s->pos = hub.cursor;
	return false;
}

static bool
PickCaughtUp(Stream *s, void *arg)
{
	(void) arg;
	return !s->fetch_wanted && !s->fetching && s->catching_up;
}

static void
HubDisconnect(const char *why)
{
	if (hub.conn)
		PQfinish(hub.conn);
	hub.conn = NULL;
	pthread_mutex_lock(&hub.lock);
	hub.connected = false;
	pthread_mutex_unlock(&hub.lock);
	ResumeStreams(PickToEnd, (void *) why);
}

/*
 * A page of aggr_events_page(topic, limit, after), cut at about bytes
 * (always one event): rows of upto, pending, whether the
 * page is cut (full by count or by bytes: complete only up to its last
 * event, else up to upto), seq, topic, JSON; seq is NULL in the one row of
 * an empty page.  upto is the watermark the page was cut at: a later one
 * may be lower (watermark.h), so the page is continued from this one.
 */
#define PAGE_SQL(event_json) \
"WITH page AS (SELECT p.upto, p.pending, e.seq, e.topic, " event_json " AS j " \
"FROM aggr_events_page($1, $2::integer, $3::bigint) p, LATERAL (SELECT (p.event).*) e), " \
"sized AS (SELECT seq, topic, j, sum(octet_length(j)) OVER (ORDER BY seq) " \
"- octet_length(j) AS before FROM page WHERE seq IS NOT NULL) " \
"SELECT w.upto, w.pending, (SELECT count(*) FROM sized) = $2::integer " \
"OR EXISTS (SELECT 1 FROM sized WHERE before >= $4::bigint), s.seq, s.topic, s.j " \
"FROM (SELECT upto, pending FROM page WHERE seq IS NULL) w " \
"LEFT JOIN sized s ON s.before < $4::bigint ORDER BY s.seq"

static const char *const page_sql[2] = {
	PAGE_SQL(AGGR_EVENT_JSON_SQL("p.event")),
	PAGE_SQL(AGGR_EVENT_JSON_PORTABLE_SQL), /* an older extension */
};

/*
 * Prepares the page statement on the hub's connection, in the portable
 * form where the extension has no aggr_event_json().
 */
static bool
PreparePage(void)
{
	for (int form = 0; form < 2; form++)
	{
		PGresult   *res = PQprepare(hub.conn, "aggr_stream_page", page_sql[form], 4, NULL);
		bool		older = AggrLacksEventJson(res);

		hub.prepared = PQresultStatus(res) == PGRES_COMMAND_OK;
		PQclear(res);
		if (hub.prepared || !older)
			break;
	}
	return hub.prepared;
}

/* every stream gets a heartbeat when it is time; the hub thread only */
static void
HeartbeatIfDue(void)
{
	int64_t		now = AggrNowUs();

	if (now < hub.next_heartbeat_us)
		return;
	ResumeStreams(PickForHeartbeat, NULL);
	hub.next_heartbeat_us = now + aggr_config.stream_heartbeat_s * 1000000LL;
}

/*
 * Runs the page statement, sending the heartbeats meanwhile: a page that
 * waits (for a lock that aggr_distribute() or an ALTER EXTENSION holds on
 * aggr.events, say) must not silence every stream, or idle proxies drop
 * them.  The last result, or NULL when the connection failed.
 */
static PGresult *
ExecPage(const char *const *values)
{
	PGresult   *res;
	PGresult   *last = NULL;

	if (!PQsendQueryPrepared(hub.conn, "aggr_stream_page", 4, values, NULL, NULL, 0))
		return NULL;
	while (PQisBusy(hub.conn))
	{
		struct pollfd fd = {.fd = PQsocket(hub.conn),.events = POLLIN};
		int64_t		wait_ms = (hub.next_heartbeat_us - AggrNowUs()) / 1000 + 1;

		if (poll(&fd, 1, wait_ms > 0 ? (int) wait_ms : 0) < 0 && errno != EINTR)
			return NULL;
		if (!PQconsumeInput(hub.conn))
			return NULL;
		HeartbeatIfDue();
	}
	while ((res = PQgetResult(hub.conn)) != NULL)
	{
		PQclear(last);
		last = res;
	}
	return last;
}

static PGresult *
ReadPage(const char *topic, int limit, size_t bytes, int64_t after)
{
	char		limit_txt[16];
	char		after_txt[24];
	char		bytes_txt[24];
	const char *values[4] = {topic, limit_txt, after_txt, bytes_txt};
	PGresult   *res;

	snprintf(limit_txt, sizeof(limit_txt), "%d", limit);
	snprintf(after_txt, sizeof(after_txt), "%" PRId64, after);
	snprintf(bytes_txt, sizeof(bytes_txt), "%zu", bytes);
	/* prepared once per connection: a wake-up is one execution, not a plan */
	if (!hub.prepared && !PreparePage())
		return NULL;
	res = ExecPage(values);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1)
	{
		PQclear(res);
		return NULL;
	}
	return res;
}

/* the page's events: rows whose seq is not NULL */
static int
PageEvents(const PGresult *res)
{
	return PQgetisnull(res, 0, 3) ? 0 : PQntuples(res);
}

/* where a page leaves its reader: its last event, or its watermark if not cut */
static int64_t
PageEnd(const PGresult *res, int64_t after)
{
	int			n = PageEvents(res);
	int64_t		end = n > 0 ? strtoll(PQgetvalue(res, n - 1, 3), NULL, 10) : after;
	int64_t		upto = strtoll(PQgetvalue(res, 0, 0), NULL, 10);

	return PQgetvalue(res, 0, 2)[0] != 't' && upto > end ? upto : end;
}

/*
 * The events' sequence went back below the cursor (the extension was
 * dropped and created again): start over from now, or new events would wait
 * until their seq passed the old cursor.  Only a page with nothing pending
 * tells: its watermark is then the sequence's last value, never below the
 * cursor while the sequence lives.
 * hub.lock held; true when it started over (the caller ends the streams).
 */
static bool
ForgetIfRestarted(const PGresult *res)
{
	int64_t		upto = strtoll(PQgetvalue(res, 0, 0), NULL, 10);

	if (PQgetvalue(res, 0, 1)[0] == 't' || upto >= hub.cursor)
		return false;
	AggrLog("warning", "event stream: the events' seq went back from %" PRId64 " to %" PRId64
			" (was aggr re-created?); following from there", hub.cursor, upto);
	while (hub.count > 0)
		RingDropOldest();
	hub.floor = hub.cursor = upto;
	return true;
}

static bool
HubConnect(void)
{
	PGresult   *res;
	bool		ok;

	/* keepalives: a dead peer ends the streams, it does not freeze them */
	hub.conn = AggrDbOpen("aggr sidecar stream", "event stream connection", true, &ok);
	hub.prepared = false;
	if (!ok)
		return false;
	res = PQexec(hub.conn, "LISTEN aggr_events");
	ok = PQresultStatus(res) == PGRES_COMMAND_OK;
	PQclear(res);
	/* an empty page after the largest seq: the watermark, where "now" is */
	if (!ok || (res = ReadPage(NULL, 1, 1, INT64_MAX)) == NULL)
		return false;
	pthread_mutex_lock(&hub.lock);
	/* the first connection starts from now; a new one goes on where it was */
	if (hub.cursor == 0 && hub.count == 0)
		hub.floor = hub.cursor = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	else
		(void) ForgetIfRestarted(res);	/* the streams ended with the
										 * connection */
	hub.connected = true;
	pthread_mutex_unlock(&hub.lock);
	PQclear(res);
	AggrLog("info", "event stream connected, from seq %" PRId64, hub.cursor);
	return true;
}

/*
 * Read every new event into the ring and wake whom it concerns; false when
 * the connection failed.  *pending: events wait above the watermark.
 */
static bool
HubReadNews(bool *pending)
{
	int64_t		before = hub.cursor;

	for (;;)
	{
		PGresult   *res;
		int			n;
		bool		cut;
		bool		came;

		/*
		 * Nobody listens: nothing to read.  A subscriber that comes starts
		 * from the cursor, or catches up from the table.
		 */
		pthread_mutex_lock(&hub.lock);
		if (hub.nstreams == 0)
		{
			while (hub.count > 0)
				RingDropOldest();
			if (hub.cap > RING_MIN_SLOTS)
				RingResize(RING_MIN_SLOTS);
			pthread_mutex_unlock(&hub.lock);
			if ((res = ReadPage(NULL, 1, 1, INT64_MAX)) == NULL)
				return false;
			pthread_mutex_lock(&hub.lock);
			came = hub.nstreams > 0;	/* one came meanwhile: read for it */
			if (!came)
				hub.floor = hub.cursor = PageEnd(res, hub.cursor);
			pthread_mutex_unlock(&hub.lock);
			*pending = PQgetvalue(res, 0, 1)[0] == 't';
			PQclear(res);
			if (!came)
				return true;
			continue;
		}
		pthread_mutex_unlock(&hub.lock);

		if ((res = ReadPage(NULL, RING_PAGE_EVENTS, aggr_config.max_page_bytes, hub.cursor)) == NULL)
			return false;
		n = PageEvents(res);
		cut = PQgetvalue(res, 0, 2)[0] == 't';
		*pending = PQgetvalue(res, 0, 1)[0] == 't';
		pthread_mutex_lock(&hub.lock);
		if (n == 0 && ForgetIfRestarted(res))
		{
			pthread_mutex_unlock(&hub.lock);
			PQclear(res);
			ResumeStreams(PickToReset, NULL);
			return true;
		}
		for (int i = 0; i < n; i++)
			RingAppend(strtoll(PQgetvalue(res, i, 3), NULL, 10), PQgetvalue(res, i, 4),
					   PQgetvalue(res, i, 5), PQgetlength(res, i, 5));
		hub.cursor = PageEnd(res, hub.cursor);
		pthread_mutex_unlock(&hub.lock);
		PQclear(res);
		/* after each page: a long backlog must not keep streams waiting */
		if (hub.cursor != before)
			ResumeStreams(PickForNews, &before);
		before = hub.cursor;
		if (!cut)
			break;
	}
	return true;
}

/*
 * One page for each stream that catches up, once per pass, so that the
 * news and the heartbeats go on meanwhile; false when the connection
 * failed.  A page that brought a stream no further (its watermark was below
 * the ring's floor, held there by an open transaction) is asked again after
 * the pending re-read's wait, not at once: *pending.
 */
static bool
HubCatchUp(bool *pending)
{
	static unsigned pass;

	pass++;
	for (;;)
	{
		Stream	   *s = NULL;
		char	   *topic;
		int64_t		after;
		PGresult   *res;
		bool		stuck = false;
		bool		refused;

		pthread_mutex_lock(&hub.lock);
		for (Stream *c = hub.streams; c && s == NULL; c = c->next)
			if (c->fetch_wanted && !c->end_reason && c->fetch_pass != pass)
				s = c;
		if (s)
		{
			s->fetch_wanted = false;
			s->fetch_pass = pass;
			s->fetching = true;
			topic = s->topic ? AggrStrdup(s->topic) : NULL;
			after = s->pos;
		}
		pthread_mutex_unlock(&hub.lock);
		if (s == NULL)
			break;

		res = ReadPage(topic, CATCH_UP_PAGE_EVENTS, CATCH_UP_PAGE_BYTES, after);
		free(topic);

		/*
		 * The query failed, not the connection (a statement_timeout, say),
		 * and the connection is idle again: only this stream ends; it must
		 * not end everyone's.
		 */
		refused = res == NULL && PQstatus(hub.conn) == CONNECTION_OK &&
			PQtransactionStatus(hub.conn) == PQTRANS_IDLE;
		if (refused)
			AggrLog("warning", "event stream: a catch-up read failed, its stream ends: %s",
					PQerrorMessage(hub.conn));
		pthread_mutex_lock(&hub.lock);
		s->fetching = false;
		if (s->freed)
			StreamDestroy(s);
		else if (refused && !s->end_reason)
			s->end_reason = "the database failed this stream's catch-up read (see the sidecar's log); resume after resume_after";
		else if (res && !s->end_reason)
		{
			for (int i = 0; i < PageEvents(res); i++)
			{
				AggrBufPrintf(&s->out, "id: %s\ndata: ", PQgetvalue(res, i, 3));
				AggrBufAppend(&s->out, PQgetvalue(res, i, 5), PQgetlength(res, i, 5));
				AggrBufAppendStr(&s->out, "\n\n");
			}
			s->pos = PageEnd(res, after);
			if (s->pos == after && s->pos < hub.floor)
			{
				s->fetch_wanted = stuck = true;
				*pending = true;
			}
		}
		pthread_mutex_unlock(&hub.lock);
		if (res == NULL && !refused)
			return false;
		PQclear(res);
		if (!stuck)
			ResumeStreams(PickCaughtUp, NULL);
	}
	return true;
}

/* the notifications libpq has read; true if there was one */
static bool
DrainNotifies(void)
{
	PGnotify   *note;
	bool		any = false;

	while ((note = PQnotifies(hub.conn)) != NULL)
	{
		PQfreemem(note);
		any = true;
	}
	return any;
}

/*
 * Wait for a notification, a wake-up byte or the timeout; false: connection
 * lost.  Notifications that came with the last query's answer are in libpq
 * already: then there is no wait.
 */
static bool
HubWait(int timeout_ms)
{
	struct pollfd fds[2] = {{.fd = hub.wake[0],.events = POLLIN}, {.fd = -1,.events = POLLIN}};
	bool		noted = hub.conn && DrainNotifies();
	char		drain[64];

	if (hub.conn)
		fds[1].fd = PQsocket(hub.conn);
	if (poll(fds, hub.conn ? 2 : 1, noted ? 0 : timeout_ms) > 0 && (fds[0].revents & POLLIN))
		while (read(hub.wake[0], drain, sizeof(drain)) == (ssize_t) sizeof(drain))
			;
	if (hub.conn == NULL)
		return true;
	if (!PQconsumeInput(hub.conn))
		return false;
	(void) DrainNotifies();
	return true;
}

/*
 * The connection failed or a query did: say why, once per outage; streams
 * end; wait a little before the next attempt.
 */
static void
HubLost(int *failures)
{
	if ((*failures)++ == 0)
		AggrLog("warning", "event stream: %s",
				hub.conn ? PQerrorMessage(hub.conn) : "out of memory");
	HubDisconnect("database connection lost; resume with Last-Event-ID");
	HubWait(RECONNECT_MS);
}

static void *
HubMain(void *arg)
{
	int			failures = 0;

	(void) arg;
	hub.next_heartbeat_us = AggrNowUs() + aggr_config.stream_heartbeat_s * 1000000LL;
	for (;;)
	{
		bool		pending = false;
		bool		stopping;
		int64_t		now;

		pthread_mutex_lock(&hub.lock);
		stopping = hub.stopping;
		pthread_mutex_unlock(&hub.lock);
		if (stopping)
			break;
		if (hub.conn == NULL && !HubConnect())
		{
			HubLost(&failures);
			continue;
		}
		if (!HubReadNews(&pending) || !HubCatchUp(&pending))
		{
			HubLost(&failures);
			continue;
		}
		if (failures > 0)
			AggrLog("info", "event stream restored");
		failures = 0;
		HeartbeatIfDue();
		now = AggrNowUs();
		if (!HubWait(pending ? PENDING_POLL_MS : (int) ((hub.next_heartbeat_us - now) / 1000) + 1))
			HubLost(&failures);
	}
	if (hub.conn)
		PQfinish(hub.conn);
	hub.conn = NULL;
	return NULL;
}

void
AggrStreamStart(void)
{
	hub.cap = RING_MIN_SLOTS;
	hub.ring = AggrCalloc(hub.cap, sizeof(RingEvent));
	if (pipe(hub.wake) != 0)
	{
		AggrLog("fatal", "event stream: pipe: %m");
		exit(1);
	}
	for (int i = 0; i < 2; i++)
		(void) fcntl(hub.wake[i], F_SETFL, fcntl(hub.wake[i], F_GETFL) | O_NONBLOCK);
	pthread_create(&hub.thread, NULL, HubMain, NULL);
}

/* every stream ends with a final event; the hub thread stops */
void
AggrStreamStop(void)
{
	pthread_mutex_lock(&hub.lock);
	hub.stopping = true;
	pthread_mutex_unlock(&hub.lock);
	ResumeStreams(PickToEnd, (void *) "the server is shutting down; resume with Last-Event-ID");
	WakeHub();
	/* a hub stuck on a database that does not answer must not hold the exit */
	{
		struct timespec deadline;

		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_sec += 5;
		if (pthread_timedjoin_np(hub.thread, NULL, &deadline) != 0)
			AggrLog("warning", "event stream: the database did not answer; stopping without it");
	}
}
