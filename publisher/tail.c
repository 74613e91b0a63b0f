/*
 * tail.c
 *		aggr-tail: prints the events of a topic (or of all) as they are
 *		stored, from aggr-sidecar's GET /events/stream, like tail -f.
 *
 *		It reads the Server-Sent Events stream ("id:", "data:", "event:",
 *		"retry:" and comment lines, an empty line ending each event), and
 *		when the stream ends or breaks it connects again with Last-Event-ID
 *		set to the last id it printed, so nothing is missed or printed
 *		twice: the sidecar's stream is gapless.  Exit status: 0 after
 *		--count events, 2 on a usage error or a refused token (401), 1 when
 *		--max-reconnects is used up.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "json.h"
#include "util.h"

#define RECONNECT_MIN_MS 1000	/* also the stream's retry: default */
#define RECONNECT_MAX_MS 10000
#define SILENCE_S 45			/* no byte for this long (heartbeats are 15
								 * s): reconnect */

typedef struct Tail
{
	/* settings */
	const char *url;
	const char *topic;
	const char *token;
	bool		json;
	long long	count;			/* exit after this many events; 0: never */
	long		max_reconnects; /* -1: forever */

	/* the stream being read */
	int64_t		last_id;		/* -1: none yet */
	long		retry_ms;
	long long	printed;
	AggrBuf		line;			/* the line being read */
	AggrBuf		data;			/* the event's data lines */
	AggrBuf		event;			/* its event: field */
	int64_t		event_id;		/* its id: field, -1 if none, -2 if empty */
	long long	messages;		/* messages read on this connection */
	long		status;
	CURL	   *easy;
	bool		done;
} Tail;

static void
Usage(FILE *out)
{
	fprintf(out,
			"aggr-tail - print aggr's events as they are stored (GET /events/stream)\n"
			"\n"
			"Usage: aggr-tail [OPTION]...\n"
			"\n"
			"  --url=URL            the sidecar (default http://127.0.0.1:8080)\n"
			"  --topic=TOPIC        one topic (default: every topic)\n"
			"  --after=SEQ          start after this event id (default: from now;\n"
			"                       0: every stored event first)\n"
			"  --token=TOKEN        bearer token (env AGGR_READ_TOKEN, which ps does\n"
			"                       not show)\n"
			"  --json               one JSON object per line, with its \"seq\"\n"
			"  --count=N            exit after N events\n"
			"  --max-reconnects=N   give up after N reconnects in a row (default: never)\n"
			"  --help               show this help and exit\n");
}

/* a JSON string without escapes as its text, anything else as it stands */
static void
PrintField(const char *json, size_t len, const char *key)
{
	const char *v;
	size_t		n;

	if (AggrJsonGetRaw(json, len, key, &v, &n) != AGGR_JSON_OK)
		return;
	if (n >= 2 && v[0] == '"' && memchr(v, '\\', n) == NULL)
		fwrite(v + 1, 1, n - 2, stdout);
	else
		fwrite(v, 1, n, stdout);
}

static void
PrintEvent(Tail *t)
{
	const char *d = t->data.data;
	size_t		n = t->data.len;

	if (t->json)
	{
		/* {"seq": N, ...the event's own fields} */
		if (n > 0 && d[0] == '{')
			printf("{\"seq\": %" PRId64 ", %.*s\n", t->event_id, (int) (n - 1), d + 1);
	}
	else
	{
		PrintField(d, n, "ingested_at");
		fputc(' ', stdout);
		PrintField(d, n, "topic");
		fputc(' ', stdout);
		PrintField(d, n, "event_id");
		fputs(" from ", stdout);
		PrintField(d, n, "source");
		fputc(' ', stdout);
		PrintField(d, n, "payload");
		fputc('\n', stdout);
	}
	fflush(stdout);
}

/* an empty line: the event is complete */
static void
Dispatch(Tail *t)
{
	if (t->event.len > 0 && strcmp(t->event.data, "error") == 0)
		fprintf(stderr, "aggr-tail: the stream ended: %s\n", t->data.data);
	else if (t->data.len > 0 && t->event_id >= 0)
	{
		PrintEvent(t);
		if (t->count > 0 && ++t->printed >= t->count)
			t->done = true;
	}

	/*
	 * An id without data (the stream's first message, a heartbeat, the final
	 * event) is where the stream stands for this topic: resume after it.
	 */
	if (t->event_id >= 0)
		t->last_id = t->event_id;
	else if (t->event_id == -2)
		t->last_id = -1;
	t->messages++;
	AggrBufReset(&t->data);
	AggrBufReset(&t->event);
	t->event_id = -1;
}

static void
Field(Tail *t, const char *line, size_t len)
{
	const char *colon = memchr(line, ':', len);
	size_t		name_len = colon ? (size_t) (colon - line) : len;
	const char *value = colon ? colon + 1 : line + len;
	size_t		value_len = len - (value - line);

	if (value_len > 0 && *value == ' ')
		value++, value_len--;
	if (name_len == 0)
		return;					/* a comment: a heartbeat */
	if (name_len == 4 && memcmp(line, "data", 4) == 0)
	{
		if (t->data.len > 0)
			AggrBufAppend(&t->data, "\n", 1);
		AggrBufAppend(&t->data, value, value_len);
	}
	else if (name_len == 2 && memcmp(line, "id", 2) == 0)
	{
		char	   *end;
		long long	id = strtoll(value, &end, 10);

		/* an empty id forgets the position (SSE); a malformed one is ignored */
		if (value_len == 0)
			t->event_id = -2;
		else if (end == value + value_len && id >= 0)
			t->event_id = id;
	}
	else if (name_len == 5 && memcmp(line, "event", 5) == 0)
	{
		AggrBufReset(&t->event);
		AggrBufAppend(&t->event, value, value_len);
	}
	else if (name_len == 5 && memcmp(line, "retry", 5) == 0)
	{
		char	   *end;
		long		ms = strtol(value, &end, 10);

		/* digits only, as SSE says; kept within reason */
		if (value_len > 0 && end == value + value_len && ms >= 0)
			t->retry_ms = ms < 100 ? 100 : ms > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : ms;
	}
}

static size_t
Received(char *ptr, size_t size, size_t nmemb, void *arg)
{
	Tail	   *t = arg;
	size_t		n = size * nmemb;

	if (t->status == 0)
		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
	if (t->status != 200)
	{
		/* the error body, as much as a message needs */
		if (t->data.len < 4096)
			AggrBufAppend(&t->data, ptr, n < 4096 - t->data.len ? n : 4096 - t->data.len);
		return n;
	}
	for (const char *p = ptr, *end = ptr + n; p < end && !t->done;)
	{
		const char *eol = memchr(p, '\n', end - p);

		AggrBufAppend(&t->line, p, (eol ? eol : end) - p);
		if (eol == NULL)
			break;				/* the line goes on in the next chunk */
		p = eol + 1;
		if (t->line.len > 0 && t->line.data[t->line.len - 1] == '\r')
			t->line.data[--t->line.len] = '\0';
		if (t->line.len == 0)
			Dispatch(t);
		else
			Field(t, t->line.data, t->line.len);
		AggrBufReset(&t->line);
	}
	return t->done ? 0 : n;		/* 0 ends the transfer */
}

/* one connection, until the stream ends or breaks; the HTTP status */
static long
Follow(Tail *t)
{
	AggrBuf		url;
	struct curl_slist *headers = NULL;
	char		header[256];
	char		errbuf[CURL_ERROR_SIZE] = "";
	CURLcode	rc;

	AggrBufInit(&url, 256);
	AggrBufPrintf(&url, "%s/events/stream", t->url);
	if (t->topic)
	{
		char	   *escaped = curl_easy_escape(t->easy, t->topic, 0);

		AggrBufPrintf(&url, "?topic=%s", escaped);
		curl_free(escaped);
	}
	if (t->last_id >= 0)
	{
		snprintf(header, sizeof(header), "Last-Event-ID: %" PRId64, t->last_id);
		headers = curl_slist_append(headers, header);
	}
	if (t->token)
	{
		AggrBuf		auth;

		AggrBufInit(&auth, 64);
		AggrBufPrintf(&auth, "Authorization: Bearer %s", t->token);
		headers = curl_slist_append(headers, auth.data);
		AggrBufFree(&auth);
	}
	headers = curl_slist_append(headers, "Accept: text/event-stream");

	curl_easy_reset(t->easy);
	curl_easy_setopt(t->easy, CURLOPT_URL, url.data);
	curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_TIME, (long) SILENCE_S);
	curl_easy_setopt(t->easy, CURLOPT_USERAGENT, "aggr-tail");
	curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, Received);
	curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, errbuf);
	t->status = 0;
	AggrBufReset(&t->line);
	AggrBufReset(&t->data);
	AggrBufReset(&t->event);
	t->event_id = -1;
	t->messages = 0;
	rc = curl_easy_perform(t->easy);
	if (t->status == 0)
		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
	if (!t->done && t->status != 200 && t->status != 0)
		fprintf(stderr, "aggr-tail: HTTP %ld: %s\n", t->status, t->data.data);
	else if (!t->done && rc != CURLE_OK)
		fprintf(stderr, "aggr-tail: %s\n", errbuf[0] ? errbuf : curl_easy_strerror(rc));
	curl_slist_free_all(headers);
	AggrBufFree(&url);
	return t->status;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"url", required_argument, NULL, 'u'},
		{"topic", required_argument, NULL, 't'},
		{"after", required_argument, NULL, 'a'},
		{"token", required_argument, NULL, 'k'},
		{"json", no_argument, NULL, 'j'},
		{"count", required_argument, NULL, 'n'},
		{"max-reconnects", required_argument, NULL, 'r'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	Tail		t = {.url = "http://127.0.0.1:8080",.last_id = -1,.max_reconnects = -1,
	.retry_ms = RECONNECT_MIN_MS};
	long		failures = 0;
	int			c;
	char	   *end;

	t.token = getenv("AGGR_READ_TOKEN");
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1)
	{
		switch (c)
		{
			case 'u':
				t.url = optarg;
				break;
			case 't':
				t.topic = optarg;
				break;
			case 'a':
				t.last_id = strtoll(optarg, &end, 10);
				if (*optarg == '\0' || *end != '\0' || t.last_id < 0)
				{
					fprintf(stderr, "aggr-tail: --after must be a non-negative integer\n");
					return 2;
				}
				break;
			case 'k':
				t.token = optarg;
				break;
			case 'j':
				t.json = true;
				break;
			case 'n':
				t.count = strtoll(optarg, &end, 10);
				if (*optarg == '\0' || *end != '\0' || t.count < 1)
				{
					fprintf(stderr, "aggr-tail: --count must be a positive integer\n");
					return 2;
				}
				break;
			case 'r':
				t.max_reconnects = strtol(optarg, &end, 10);
				if (*optarg == '\0' || *end != '\0' || t.max_reconnects < 0)
				{
					fprintf(stderr, "aggr-tail: --max-reconnects must be a non-negative integer\n");
					return 2;
				}
				break;
			case 'h':
				Usage(stdout);
				return 0;
			default:
				Usage(stderr);
				return 2;
		}
	}
	if (optind < argc)
	{
		Usage(stderr);
		return 2;
	}
	if (t.token && !AggrHeaderValueOk(t.token))
	{
		fprintf(stderr, "aggr-tail: the token must not contain control characters\n");
		return 2;
	}

	signal(SIGPIPE, SIG_IGN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	t.easy = curl_easy_init();
	AggrBufInit(&t.line, 256);
	AggrBufInit(&t.data, 1024);
	AggrBufInit(&t.event, 32);
	for (;;)
	{
		long		status = Follow(&t);
		long		wait;

		if (t.done)
			break;
		if (status == 401 || status == 400 || status == 404)
			return 2;			/* asking again would not help */
		/* a stream that said something was a success: count failures anew */
		failures = status == 200 && t.messages > 0 ? 0 : failures + 1;
		if (t.max_reconnects >= 0 && failures > t.max_reconnects)
		{
			fprintf(stderr, "aggr-tail: giving up after %ld reconnects\n", failures - 1);
			return 1;
		}
		wait = t.retry_ms << (failures < 4 ? failures : 4);
		AggrSleepMs(failures == 0 ? t.retry_ms : wait > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : wait);
	}
	curl_easy_cleanup(t.easy);
	curl_global_cleanup();
	AggrBufFree(&t.line);
	AggrBufFree(&t.data);
	AggrBufFree(&t.event);
	return 0;
}
