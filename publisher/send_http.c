/*
 * send_http.c
 *		Delivering a run over HTTP with libcurl, and the plain GETs that
 *		--wait-ready and --verify need.
 *
 * One curl multi handle drives up to --concurrency requests at once, one
 * reusable easy handle per slot; connections stay alive in the multi's
 * cache, and request bodies are the pre-built batch bodies, never copied.
 * An attempt counts as "maybe applied" when the connection failed after the
 * whole body was uploaded (the server may have committed it); a failure
 * before that is certainly not applied.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <zlib.h>

#include "json.h"
#include "send.h"

/* Longest answer kept; longer ones are cut and then fail to parse. */
#define ANSWER_MAX (1024 * 1024)
#define CONNECT_TIMEOUT_MS 5000L
#define POLL_MS 100

typedef struct Slot
{
	CURL	   *easy;
	int			batch;			/* -1 when free */
	double		started_ms;
	AggrBuf		answer;
	char		error[CURL_ERROR_SIZE];
} Slot;

bool
AggrHttpGlobalInit(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

void
AggrHttpGlobalCleanup(void)
{
	curl_global_cleanup();
}

static size_t
CollectAnswer(char *data, size_t size, size_t nmemb, void *userdata)
{
	AggrBuf    *buf = userdata;
	size_t		n = size * nmemb;

	if (buf->len < ANSWER_MAX)
		AggrBufAppend(buf, data, (buf->len + n > ANSWER_MAX) ? ANSWER_MAX - buf->len : n);
	return n;
}

/* base_url without trailing slashes, followed by path. */
static void
BuildUrl(AggrBuf *url, const char *base_url, const char *path)
{
	size_t		len = strlen(base_url);

	while (len > 0 && base_url[len - 1] == '/')
		len--;
	AggrBufReset(url);
	AggrBufAppend(url, base_url, len);
	AggrBufAppendStr(url, path);
}

static struct curl_slist *
BuildHeaders(const char *token, bool json_body, bool ndjson, bool gzip)
{
	struct curl_slist *headers = NULL;

	if (json_body)
	{
		headers = curl_slist_append(headers, ndjson ? "Content-Type: application/x-ndjson" :
									"Content-Type: application/json");
		if (gzip)
			headers = curl_slist_append(headers, "Content-Encoding: gzip");
		headers = curl_slist_append(headers, "Expect:");	/* no 100-continue round
															 * trip */
	}
	if (token)
	{
		AggrBuf		h;

		AggrBufInit(&h, 0);
		AggrBufPrintf(&h, "Authorization: Bearer %s", token);
		headers = curl_slist_append(headers, h.data);
		AggrBufFree(&h);
	}
	return headers;
}

/* Options every easy handle shares. */
static void
SetCommonOptions(CURL *easy, const char *url, struct curl_slist *headers,
				 double timeout_ms, AggrBuf *answer, char *errbuf)
{
	long		connect_ms = (long) timeout_ms < CONNECT_TIMEOUT_MS ? (long) timeout_ms : CONNECT_TIMEOUT_MS;

	curl_easy_setopt(easy, CURLOPT_URL, url);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "aggr-publisher");
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, CollectAnswer);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, answer);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
}

/* A short, printable excerpt of an answer for error messages. */
static void
Excerpt(const AggrBuf *answer, char *out, size_t outlen)
{
	size_t		n = 0;

	for (size_t i = 0; i < answer->len && n + 1 < outlen && n < 100; i++)
	{
		unsigned char c = (unsigned char) answer->data[i];

		out[n++] = (c >= 0x20 && c < 0x7f) ? (char) c : ' ';
	}
	out[n] = '\0';
}

static void
TransportError(CURLcode rc, const char *errbuf, char *out, size_t outlen)
{
	snprintf(out, outlen, "connection error: %s",
			 errbuf[0] ? errbuf : curl_easy_strerror(rc));
}

bool
AggrHttpGet(const char *base_url, const char *path, const char *token,
			double timeout_ms, long *status, AggrBuf *body, char *err, size_t errlen)
{
	CURL	   *easy = curl_easy_init();
	struct curl_slist *headers = BuildHeaders(token, false, false, false);
	char		errbuf[CURL_ERROR_SIZE] = "";
	AggrBuf		url;
	CURLcode	rc;

	if (easy == NULL)
	{
		snprintf(err, errlen, "could not create a curl handle");
		curl_slist_free_all(headers);
		return false;
	}
	AggrBufInit(&url, 0);
	BuildUrl(&url, base_url, path);
	AggrBufReset(body);
	SetCommonOptions(easy, url.data, headers, timeout_ms, body, errbuf);
	rc = curl_easy_perform(easy);
	*status = 0;
	if (rc == CURLE_OK)
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, status);
	else
		TransportError(rc, errbuf, err, errlen);
	curl_easy_cleanup(easy);
	curl_slist_free_all(headers);
	AggrBufFree(&url);
	return rc == CURLE_OK;
}

/*
 * What goes on the wire for each batch: its body, or with --gzip the body
 * compressed once before the run (so the run times the server, not zlib).
 */
static AggrBuf *wire = NULL;

static bool
CompressBodies(const AggrStream *stream, char *err, size_t errlen)
{
	wire = AggrCalloc((size_t) stream->n_batches, sizeof(AggrBuf));
	for (int b = 0; b < stream->n_batches; b++)
	{
		const AggrBatch *batch = &stream->batches[b];
		z_stream	z = {0};
		int			rc;

		/* windowBits 15 + 16: a gzip header and trailer */
		if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
			return snprintf(err, errlen, "deflateInit2 failed"), false;
		AggrBufInit(&wire[b], deflateBound(&z, batch->length) + 32);
		z.next_in = (Bytef *) batch->body;
		z.avail_in = (uInt) batch->length;
		z.next_out = (Bytef *) wire[b].data;
		z.avail_out = (uInt) wire[b].cap;
		rc = deflate(&z, Z_FINISH);
		wire[b].len = wire[b].cap - z.avail_out;
		deflateEnd(&z);
		if (rc != Z_STREAM_END)
			return snprintf(err, errlen, "could not compress batch %d", b), false;
	}
	return true;
}

static void
FreeWire(const AggrStream *stream)
{
	if (wire == NULL)
		return;
	for (int b = 0; b < stream->n_batches; b++)
		AggrBufFree(&wire[b]);
	free(wire);
	wire = NULL;
}

static size_t
WireLength(const AggrStream *stream, int b)
{
	return wire ? wire[b].len : stream->batches[b].length;
}

static void
StartRequest(AggrRun *run, CURLM *multi, Slot *slot, int b, double now_ms)
{
	const AggrBatch *batch = &run->stream->batches[b];

	slot->batch = b;
	slot->started_ms = now_ms;
	slot->error[0] = '\0';
	AggrBufReset(&slot->answer);
	curl_easy_setopt(slot->easy, CURLOPT_POSTFIELDS, wire ? wire[b].data : batch->body);
	curl_easy_setopt(slot->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) WireLength(run->stream, b));
	curl_multi_add_handle(multi, slot->easy);
	AggrRunStarted(run, b);
}

/* Read a field of a 2xx answer, -1 when it is missing or not an integer. */
static long
AnswerField(const AggrBuf *answer, const char *key)
{
	int64_t		v;

	if (AggrJsonGetInt(answer->data, answer->len, key, &v) != AGGR_JSON_OK || v < 0)
		return -1;
	return (long) v;
}

static void
FinishRequest(AggrRun *run, CURLM *multi, Slot *slot, CURLcode rc, double now_ms)
{
	long		status = 0;
	curl_off_t	uploaded = 0;
	curl_off_t	retry_after = 0;
	char		error[CURL_ERROR_SIZE + 64];
	char		excerpt[128];
	AggrAttempt attempt;
	AggrAnswer	answer = {-1, -1, -1};

	curl_easy_getinfo(slot->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(slot->easy, CURLINFO_SIZE_UPLOAD_T, &uploaded);
	curl_easy_getinfo(slot->easy, CURLINFO_RETRY_AFTER, &retry_after);
	curl_multi_remove_handle(multi, slot->easy);

	attempt = AggrClassifyHttp(status, rc != CURLE_OK,
							   uploaded >= (curl_off_t) WireLength(run->stream, slot->batch),
							   rc == CURLE_OK &&
							   AggrJsonFieldIs(slot->answer.data, slot->answer.len,
											   "outcome", "\"unknown\""));
	if (rc != CURLE_OK)
		TransportError(rc, slot->error, error, sizeof(error));
	else if (attempt != AGGR_ATTEMPT_ACKED)
	{
		Excerpt(&slot->answer, excerpt, sizeof(excerpt));
		snprintf(error, sizeof(error), "HTTP %ld: %s", status, excerpt);
	}
	else
	{
		answer.accepted = AnswerField(&slot->answer, "accepted");
		answer.unique = AnswerField(&slot->answer, "unique");
		answer.duplicates = AnswerField(&slot->answer, "duplicates");
	}
	AggrRunFinished(run, slot->batch, attempt, now_ms, now_ms - slot->started_ms,
					retry_after > 0 ? (double) retry_after * 1000.0 : -1,
					attempt == AGGR_ATTEMPT_ACKED ? NULL : error, &answer);
	slot->batch = -1;
}

bool
AggrSendHttp(AggrRun *run, const char *base_url, char *err, size_t errlen)
{
	CURLM	   *multi = curl_multi_init();
	struct curl_slist *headers = BuildHeaders(run->token, true, run->ndjson, run->gzip);
	Slot	   *slots = AggrCalloc((size_t) run->concurrency, sizeof(Slot));
	AggrBuf		url;
	bool		ok = true;

	if (run->gzip && !CompressBodies(run->stream, err, errlen))
		ok = false;

	AggrBufInit(&url, 0);
	BuildUrl(&url, base_url, "/publish");
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) run->concurrency);
	for (int i = 0; i < run->concurrency; i++)
	{
		slots[i].batch = -1;
		AggrBufInit(&slots[i].answer, 0);
		slots[i].easy = curl_easy_init();
		if (slots[i].easy == NULL)
		{
			snprintf(err, errlen, "could not create a curl handle");
			ok = false;
			break;
		}
		SetCommonOptions(slots[i].easy, url.data, headers, run->timeout_ms,
						 &slots[i].answer, slots[i].error);
		curl_easy_setopt(slots[i].easy, CURLOPT_PRIVATE, &slots[i]);
	}

	AggrRunBegin(run);
	while (ok && !AggrRunDone(run))
	{
		double		now = AggrNowMs();
		double		wait = -1;
		int			running;
		int			queued;
		int			finished = 0;
		CURLMsg    *msg;

		for (int i = 0; i < run->concurrency; i++)
		{
			int			b;

			if (slots[i].batch >= 0)
				continue;
			if ((b = AggrRunNext(run, now, &wait)) < 0)
				break;
			StartRequest(run, multi, &slots[i], b, now);
		}
		curl_multi_perform(multi, &running);
		while ((msg = curl_multi_info_read(multi, &queued)) != NULL)
		{
			Slot	   *slot;

			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &slot);
			FinishRequest(run, multi, slot, msg->data.result, AggrNowMs());
			finished++;
		}
		AggrRunProgress(run, AggrNowMs(), false);
		if (finished == 0)
			curl_multi_poll(multi, NULL, 0,
							(wait >= 0 && wait < POLL_MS) ? (int) wait + 1 : POLL_MS, NULL);
	}
	AggrRunProgress(run, AggrNowMs(), true);

	for (int i = 0; i < run->concurrency; i++)
	{
		if (slots[i].easy)
		{
			if (slots[i].batch >= 0)
				curl_multi_remove_handle(multi, slots[i].easy);
			curl_easy_cleanup(slots[i].easy);
		}
		AggrBufFree(&slots[i].answer);
	}
	free(slots);
	curl_multi_cleanup(multi);
	curl_slist_free_all(headers);
	AggrBufFree(&url);
	FreeWire(run->stream);
	return ok;
}
